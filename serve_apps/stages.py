"""Serve deployments made of the batch job's stage classes: one request is a one-row column batch.

``StageServer`` runs a stage on one request at a time (replicas give the parallelism; the stage runs
on one worker thread, so a cancelled request cannot let the next one in beside it, see
serve_apps/exclusive.py); uploads travel
as bytes and are written to a temporary file on the replica's own node, so a replica never depends
on a path that exists only where the ingress runs. ``BatchedStageServer`` gathers concurrent
requests that wait while the stage is busy (serve_apps/gather.py) and hands the stage one
multi-row batch, as Ray Data would, unless the stage's engine batches continuously: then each request
goes in as it comes. Both record each call's size and seconds
(serve_apps/batch_metrics.py), so every stage's busy share shows.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import PurePosixPath
from typing import Any, Optional

import numpy as np
from ray import serve

from corpusflow.actors import stage_class
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import Batch, StageFailure, tensor_column
from corpusflow.serve_apps import batch_metrics
from corpusflow.serve_apps.exclusive import Exclusive
from corpusflow.serve_apps.gather import Gatherer


def load_stage(path: str, config: StageConfig) -> Any:
    """An instance of the stage class named ``module.Class`` (e.g. ``corpusflow.actors.asr.Transcribe``)."""
    return stage_class(path)(config)


def _rows_first(arr: np.ndarray) -> np.ndarray:
    """One cell per row: a stacked N-d column becomes an object column, so batches concatenate."""
    return tensor_column(list(arr)) if arr.ndim > 1 else arr


def concat(batches: list[Batch]) -> Batch:
    """One batch holding the rows of ``batches`` in order (all share one set of columns)."""
    return {k: np.concatenate([_rows_first(b[k]) for b in batches]) for k in batches[0]}


def split(batch: Batch) -> list[Batch]:
    """The rows of ``batch`` as one-row batches."""
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(len(batch["error"]))]


class _Local:
    """The stage's input file on this node: the uploaded bytes in a private temp dir, else the URI."""

    def __init__(self, batch: Batch, payload: Optional[bytes]):
        self.batch, self.payload, self.tmp = batch, payload, None

    def __enter__(self) -> Batch:
        if self.payload is None:
            return self.batch
        self.tmp = tempfile.mkdtemp(prefix="corpusflow-upload-")
        path = os.path.join(self.tmp, "upload" + PurePosixPath(str(self.batch["uri"][0])).suffix)
        with open(path, "wb") as fh:
            fh.write(self.payload)
        return {**self.batch, "uri": np.asarray([path])}

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _public_uri(out: Batch, batch: Batch) -> Batch:
    """Put the client-visible URI back where the stage saw the temp path."""
    return {**out, "uri": batch["uri"]}


def _ask_inputs(batch: Batch) -> tuple[Any, ...]:
    """``Describe.ask``'s inputs from a one-row batch after decode, ASR and frames."""
    from corpusflow.actors.vlm import video_inputs

    frames, ts, meta, transcript = video_inputs({k: v[0] for k, v in batch.items()})
    return frames, ts, transcript, meta


@serve.deployment
class StageServer:
    """A stage behind a handle, one request at a time per replica (decode, frames, PDF)."""

    def __init__(self, stage: str, config: dict[str, Any]):
        self.stage = load_stage(stage, StageConfig.model_validate(config))
        self.exclusive = Exclusive(f"stage-{self.stage.contract.name}")

    async def run(self, batch: Batch, payload: Optional[bytes] = None) -> Batch:
        # The temp file lives inside the worker thread's call: a cancelled request cannot delete it
        # under a stage that is still reading it. The event loop stays free for health checks.
        out = await self.exclusive.run(self._run, batch, payload)
        return _public_uri(out, batch)

    def _run(self, batch: Batch, payload: Optional[bytes]) -> Batch:
        t0 = time.perf_counter()
        try:
            with _Local(batch, payload) as local:
                return self.stage(local)
        finally:
            batch_metrics.record(self.stage.contract.name, 1, time.perf_counter() - t0)

    async def ready(self) -> bool:
        return True


@serve.deployment
class BatchedStageServer:
    """A stage whose concurrent requests share the engine (ASR, VLM); also serves ``ask``.

    An engine that batches continuously (``Stage.admits_concurrent_calls``: vLLM's async engine) gets
    each request the moment it arrives, up to ``max_batch_size`` at once: a request never waits for
    the batch in front of it to end. Any other engine gets the requests that waited while it was
    busy, gathered into one call (serve_apps/gather.py).
    """

    def __init__(self, stage: str, config: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float):
        self.stage = load_stage(stage, StageConfig.model_validate(config))
        admits = self.stage.admits_concurrent_calls
        self.calls = Exclusive(f"stage-{self.stage.contract.name}", workers=max_batch_size if admits else 1)
        self._gatherer = None if admits else Gatherer(self._call, max_batch_size, batch_wait_timeout_s)

    async def run(self, batch: Batch) -> Batch:
        if self._gatherer is None:
            return await self.calls.run(self._timed, [batch])
        return await self._gatherer.submit(batch)

    async def _call(self, batches: list[Batch]) -> list[Batch]:
        return split(await self.calls.run(self._timed, batches))

    def _timed(self, batches: list[Batch]) -> Batch:
        t0 = time.perf_counter()
        try:
            return self.stage(concat(batches))
        finally:
            batch_metrics.record(self.stage.contract.name, len(batches), time.perf_counter() - t0)

    async def ask(self, batch: Batch, question: str) -> dict[str, Any]:
        """The VLM's grounded answer about the one video in ``batch``, or ``{"error": sentence}``."""
        try:
            answer = await self.calls.run(self.stage.ask, *_ask_inputs(batch), question)
        except StageFailure as e:
            return {"error": str(e)}
        return answer.model_dump()

    async def ask_corpus(self, question: str, passages: list[str]) -> dict[str, Any]:
        """The VLM's answer from retrieved passages, citing their numbers, or ``{"error": sentence}``."""
        try:
            answer = await self.calls.run(self.stage.ask_passages, question, passages)
        except StageFailure as e:
            return {"error": str(e)}
        return answer.model_dump()

    async def ready(self) -> bool:
        return True
