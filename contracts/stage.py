"""The stage contract: which columns a stage reads, which it writes (with their types), which it drops.

Stages are plain classes: ``__init__(config)`` loads what is heavy once, ``__call__(batch)`` maps a
column batch (``dict[str, np.ndarray]``, what Ray Data's ``map_batches`` hands over with
``batch_format="numpy"``) to a column batch. Ray Data and Ray Serve call the same class. A row that
fails inside a stage keeps flowing with ``error_stage``/``error`` set; later stages pass it through.

Column kinds are Arrow-native once Ray converts them: scalars, ``tensor[...]`` columns (one ndarray
per row, Ray's variable-shaped tensor extension) and ``list[str]`` (Arrow list<string>). Nothing is
pickled.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

Batch = dict[str, np.ndarray]

ERROR_COLUMNS = ("error_stage", "error")

_SCALAR_KINDS = {"str": "U", "int64": "i", "int32": "i", "float64": "f", "bool": "b"}
_TENSOR_DTYPES = {"tensor[uint8]": np.uint8, "tensor[float32]": np.float32, "tensor[float64]": np.float64,
                  "tensor[int32]": np.int32}
COLUMN_KINDS = (*_SCALAR_KINDS, *_TENSOR_DTYPES, "list[str]")


class ContractError(TypeError):
    """A batch that breaks a stage contract: a bug in a stage or in the wiring, never in user data."""


@dataclass(frozen=True)
class StageContract:
    """What a stage needs and promises. ``writes`` maps column name → kind (see COLUMN_KINDS)."""

    name: str
    reads: tuple[str, ...]
    writes: Mapping[str, str]
    drops: tuple[str, ...] = ()
    metrics: bool = True  # adds <name>_wall_s / _device_s / _accel columns

    def __post_init__(self) -> None:
        bad = {c: k for c, k in self.writes.items() if k not in COLUMN_KINDS}
        if bad:
            raise ContractError(f"{self.name}: unknown column kinds {bad}")

    @property
    def metric_columns(self) -> dict[str, str]:
        if not self.metrics:
            return {}
        return {f"{self.name}_wall_s": "float64", f"{self.name}_device_s": "float64", f"{self.name}_accel": "str"}

    def check_input(self, batch: Mapping[str, Any]) -> int:
        missing = [c for c in (*self.reads, *ERROR_COLUMNS) if c not in batch]
        if missing:
            raise ContractError(f"stage {self.name!r} needs columns {missing}; got {sorted(batch)}")
        return len(batch[ERROR_COLUMNS[0]])

    def check_output(self, batch: Mapping[str, Any], rows: int) -> None:
        for col, kind in {**self.writes, **self.metric_columns}.items():
            if col not in batch:
                raise ContractError(f"stage {self.name!r} did not write column {col!r}")
            arr = batch[col]
            if len(arr) != rows:
                raise ContractError(f"stage {self.name!r}: column {col!r} has {len(arr)} rows, expected {rows}")
            _check_kind(self.name, col, kind, arr)
        leaked = [c for c in self.drops if c in batch]
        if leaked:
            raise ContractError(f"stage {self.name!r} should have dropped {leaked}")


def _check_kind(stage: str, col: str, kind: str, arr: np.ndarray) -> None:
    if kind == "str" and arr.dtype == object:
        if not all(isinstance(v, str) for v in arr):
            raise ContractError(f"{stage}.{col}: expected strings")
        return
    if kind in _SCALAR_KINDS:
        if arr.dtype.kind != _SCALAR_KINDS[kind]:
            raise ContractError(f"{stage}.{col}: expected {kind}, got numpy dtype {arr.dtype}")
        return
    for cell in arr:  # object array of per-row values, or one ndarray when Ray stacked equal shapes
        if kind == "list[str]":
            if not all(isinstance(s, str) for s in cell):
                raise ContractError(f"{stage}.{col}: expected a list of strings per row")
        elif not isinstance(cell, np.ndarray) or cell.dtype != _TENSOR_DTYPES[kind]:
            got = getattr(cell, "dtype", type(cell).__name__)
            raise ContractError(f"{stage}.{col}: expected {kind} per row, got {got}")


def tensor_column(cells: list[np.ndarray]) -> np.ndarray:
    """An object array holding one ndarray per row (Ray turns it into an Arrow tensor column)."""
    out = np.empty(len(cells), dtype=object)
    for i, c in enumerate(cells):
        out[i] = c
    return out


def list_column(cells: list[list[str]]) -> np.ndarray:
    """An object array holding one list of strings per row (Arrow list<string>)."""
    out = np.empty(len(cells), dtype=object)
    for i, c in enumerate(cells):
        out[i] = list(c)
    return out


def empty_value(kind: str) -> Any:
    """The value a stage writes for a row it did not process (failed earlier, or not its kind)."""
    if kind.startswith("tensor["):
        return np.zeros(0, dtype=_TENSOR_DTYPES[kind])
    return {"str": "", "int64": 0, "int32": 0, "float64": float("nan"), "bool": False, "list[str]": []}[kind]


def run_rows(contract: StageContract, batch: Batch, fn: Callable[[dict[str, Any]], dict[str, Any]],
             accelerator: str = "cpu", empty: Mapping[str, Any] | None = None) -> Batch:
    """Apply ``fn`` to each row that has not failed; catch a row's exception into its error columns.

    ``fn`` gets the row as a dict and returns the written columns; ``empty`` gives the value written
    for rows that failed here or earlier. Exceptions whose message is meant for people should be
    :class:`StageFailure`; others are reported with their type.
    """
    n = contract.check_input(batch)
    out_cols: dict[str, list[Any]] = {c: [] for c in (*contract.writes, *contract.metric_columns)}
    errors = list(batch["error"])
    stages = list(batch["error_stage"])
    empty = {**{c: empty_value(k) for c, k in contract.writes.items()}, **(empty or {})}
    for i in range(n):
        t0 = time.perf_counter()
        values = None
        if not errors[i]:
            row = {c: batch[c][i] for c in contract.reads}
            try:
                values = fn(row)
            except StageFailure as e:
                stages[i], errors[i] = contract.name, str(e)
                values = {**empty, **e.values}
            except Exception as e:  # noqa: BLE001 - one bad file must not kill the batch
                stages[i], errors[i] = contract.name, failure_message(e)
        values = values if values is not None else empty
        # A row that failed upstream was not processed here: NaN keeps it out of the metrics table.
        wall = time.perf_counter() - t0 if not batch["error"][i] else float("nan")
        for c in contract.writes:
            out_cols[c].append(values[c])
        if contract.metrics:
            out_cols[f"{contract.name}_wall_s"].append(wall)
            out_cols[f"{contract.name}_device_s"].append(wall)
            out_cols[f"{contract.name}_accel"].append(accelerator)
    return finish(contract, batch, out_cols, stages, errors)


def failure_message(e: Exception) -> str:
    """What a failed row's ``error`` says: a StageFailure's own sentence, else the exception and its type."""
    return str(e) if isinstance(e, StageFailure) else f"{type(e).__name__}: {e}"


def finish(contract: StageContract, batch: Batch, out_cols: Mapping[str, list[Any]],
           stages: list[str], errors: list[str]) -> Batch:
    """Assemble the output batch: pass-through columns, written columns, errors; drop what it drops."""
    n = len(errors)
    out: Batch = {k: _as_lists(v) for k, v in batch.items() if k not in contract.drops}
    for c, values in out_cols.items():
        kind = {**contract.writes, **contract.metric_columns}[c]
        if kind.startswith("tensor["):
            out[c] = tensor_column(values)
        elif kind == "list[str]":
            out[c] = list_column(values)
        else:
            out[c] = np.asarray(values, dtype={"str": str, "int64": np.int64, "int32": np.int32,
                                               "float64": np.float64, "bool": bool}[kind])
            if kind == "str" and n == 0:
                out[c] = np.asarray([], dtype="U1")
    out["error_stage"] = np.asarray(stages, dtype=str) if n else np.asarray([], dtype="U1")
    out["error"] = np.asarray(errors, dtype=str) if n else np.asarray([], dtype="U1")
    contract.check_output(out, n)
    return out


def _as_lists(column: np.ndarray) -> np.ndarray:
    """Turn list<string> cells that Ray handed over as object ndarrays back into Python lists.

    Passed through as ndarrays, Ray would mistake them for tensors of Python objects and pickle the
    column; as lists of str they convert to Arrow list<string> again.
    """
    if column.dtype != object or not len(column):
        return column
    first = column[0]
    if isinstance(first, np.ndarray) and first.dtype.kind in "OUS":
        return list_column([[str(x) for x in cell] for cell in column])
    return column


class StageFailure(Exception):
    """A row-level failure with a message a person understands (e.g. 'PDF is password-protected').

    ``values`` are columns the stage could still fill for the failed row (identify keeps the file's
    hash, which the assets table needs even for a file it cannot read as media).
    """

    def __init__(self, message: str, values: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.values = dict(values or {})
