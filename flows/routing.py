"""Route rows of a mixed batch to the stage that handles their kind.

The job is one stream (videos, audio and PDFs interleaved) so nothing has to be materialised to split
it; each stage sees only its kinds' live rows, and writes its declared empty values for the rest.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from contracts.config import StageConfig
from contracts.stage import Batch, empty_value, finish

_INSTANCES: dict[tuple[type, str], Any] = {}


class KindRouted:
    """Wrap a stage class so it runs on rows whose ``kind`` is in ``kinds`` and that have not failed."""

    def __init__(self, stage_cls: type, config: StageConfig, kinds: tuple[str, ...]):
        self.stage = stage_cls(config)
        self.contract = stage_cls.contract
        self.kinds = kinds

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["error"])
        live = np.array([k in self.kinds and not e for k, e in zip(batch["kind"], batch["error"])], dtype=bool)
        if n and live.all():
            return self.stage(batch)
        done = self.stage({k: v[live] for k, v in batch.items()}) if live.any() else None
        written = {**self.contract.writes, **self.contract.metric_columns}
        cols: dict[str, list[Any]] = {}
        for col, kind in written.items():
            cells = [empty_value(kind) if not col.endswith("_accel") else "" for _ in range(n)]
            if done is not None:
                for j, i in enumerate(np.flatnonzero(live)):
                    cells[i] = done[col][j]
            cols[col] = cells
        stages, errors = list(batch["error_stage"]), list(batch["error"])
        if done is not None:
            for j, i in enumerate(np.flatnonzero(live)):
                stages[i], errors[i] = done["error_stage"][j], done["error"][j]
        return finish(self.contract, batch, cols, stages, errors)


def as_task(stage_cls: type, config: StageConfig, kinds: tuple[str, ...] | None) -> Callable[[Batch], Batch]:
    """A plain function for Ray tasks; the stage is built once per worker process and reused.

    ``kinds=None`` runs the stage on every row (identify, which decides the kind).
    """

    def run(batch: Batch) -> Batch:
        key = (stage_cls, config.model_dump_json())
        if key not in _INSTANCES:
            _INSTANCES[key] = stage_cls(config) if kinds is None else KindRouted(stage_cls, config, kinds)
        return _INSTANCES[key](batch)

    run.__name__ = stage_cls.__name__
    return run
