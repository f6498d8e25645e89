"""How full Ray Data keeps a continuously batching engine, by rows in flight (a CPU simulation, no model).

Ray's vLLM engine stage (Ray 2.60, ``ray/llm/_internal/batch/stages/base.py``) hands a batch's rows to
the engine at once and returns the batch only when all of them have ended; Ray Data runs
``max_concurrent_batches`` batches per engine actor. This script keeps exactly that shape, with the
engine replaced by ``--slots`` sequence slots and each row holding a slot for a random time (lognormal,
like answers whose prompts and lengths differ), and reports the slots' occupancy while work remained.
It answers one question: how many rows must be offered per engine so that a slot freed by one row
is taken at once (flows/vllm_stage.py ``processor_config`` offers twice ``max_num_seqs``).
``engine_stand_in`` puts the same engine into Ray's own engine stage, for the whole job's graph
(benchmarks/feed_sim.py).

    python -m benchmarks.engine_feed --rows 256 --slots 16 --batch-size 2 --concurrent 8,16
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any, Callable

import numpy as np


class Engine:
    """``slots`` sequences at once; a row waits for a free slot, holds it for its own service time."""

    def __init__(self, slots: int):
        self.slots, self.busy, self.since, self.slot_s = slots, 0, None, 0.0

    def _account(self) -> None:
        now = time.perf_counter()
        if self.since is not None:
            self.slot_s += self.busy * (now - self.since)
        self.since = now

    async def run(self, gate: asyncio.Semaphore, service_s: float) -> tuple[float, float]:
        """Hold a slot for ``service_s``; returns when the row took its slot and when it left (``time.time()``)."""
        async with gate:
            self._account()
            self.busy += 1
            t_in = time.time()
            await asyncio.sleep(service_s)
            self._account()
            self.busy -= 1
            return t_in, time.time()


def engine_stand_in(log_dir: str, startup_s: float, hold_s: Callable[[dict], float], output_tokens: int) -> type:
    """A UDF class to run in the place of Ray's ``vLLMEngineStage`` (``describe_with_vllm(udfs=...)``): the
    stage's own batching, pool and resources stay Ray's; the engine is an :class:`Engine` of
    ``max_num_seqs`` slots that starts after ``startup_s`` and holds each request for ``hold_s(row)``.

    Each actor writes its readiness and every request's slot entry and exit (``time.time()``) to a
    JSON-lines file of its own in ``log_dir``: the engines' request logs (benchmarks/feed_sim.py).
    """
    from ray.llm._internal.batch.stages.base import StatefulStageUDF

    class EngineStandIn(StatefulStageUDF):
        def __init__(self, data_column: str, expected_input_keys: list[str], engine_kwargs: dict, **_: Any):
            super().__init__(data_column, expected_input_keys)
            self.engine = Engine(int(engine_kwargs.get("max_num_seqs") or 16))
            self.gate: asyncio.Semaphore | None = None
            time.sleep(startup_s)  # the engine's start-up: weights, compile, CUDA graphs
            self.log = open(os.path.join(log_dir, f"engine-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"), "a")
            self._write({"ready": time.time(), "slots": self.engine.slots})

        def _write(self, record: dict) -> None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

        async def _one(self, row: dict) -> dict:
            assert self.gate is not None
            hold = hold_s(row)
            t_in, t_out = await self.engine.run(self.gate, hold)
            self._write({"asset_id": str(row.get("asset_id", "")), "in": t_in, "out": t_out, "hold": hold})
            tokens = [0] * output_tokens
            return {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "generated_tokens": tokens,
                    "generated_text": "", "num_generated_tokens": len(tokens),
                    "num_input_tokens": len(row.get("tokenized_prompt") or ()), "time_taken_llm": t_out - t_in,
                    "request_id": str(row[self.IDX_IN_BATCH_COLUMN]), "params": str(row.get("sampling_params"))}

        async def udf(self, rows: list[dict]):
            if self.gate is None:  # made on the actor's event loop
                self.gate = asyncio.Semaphore(self.engine.slots)
            for done in asyncio.as_completed([self._one(r) for r in rows]):
                yield await done

    return EngineStandIn


class EngineStage:
    """The shape of Ray's engine stage: a batch's rows go in together, the batch returns when all end."""

    def __init__(self, slots: int):
        self.engine, self.gate, self.first, self.last = Engine(slots), None, None, None

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is None:  # created on the actor's event loop
            self.gate = asyncio.Semaphore(self.engine.slots)
        self.first = self.first or time.perf_counter()
        await asyncio.gather(*(self.engine.run(self.gate, float(s)) for s in batch["service_s"]))
        self.last = time.perf_counter()
        return {"slot_s": np.full(len(batch["service_s"]), self.engine.slot_s),
                "span_s": np.full(len(batch["service_s"]), self.last - self.first)}


def measure(rows: int, slots: int, batch_size: int, concurrent: int, mean_s: float, seed: int) -> dict[str, Any]:
    import ray

    rng = np.random.default_rng(seed)
    service = rng.lognormal(np.log(mean_s), 0.4, rows)
    ds = ray.data.from_items([{"service_s": s} for s in service], override_num_blocks=rows // batch_size)
    out = ds.map_batches(EngineStage, fn_constructor_args=(slots,), batch_size=batch_size,
                         compute=ray.data.ActorPoolStrategy(size=1, max_tasks_in_flight_per_actor=2 * concurrent),
                         max_concurrency=concurrent, num_cpus=0.1).take_all()
    slot_s = max(r["slot_s"] for r in out)
    span = max(r["span_s"] for r in out)
    ideal = float(service.sum()) / slots  # every slot busy from the first row to the last
    return {"rows_in_flight": batch_size * concurrent, "batch_size": batch_size, "concurrent_batches": concurrent,
            "slot_occupancy_pct": round(100 * slot_s / (slots * span), 1),
            "wall_s": round(span, 2), "ideal_wall_s": round(ideal, 2), "wall_vs_ideal": round(span / ideal, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--slots", type=int, default=16, help="the engine's max_num_seqs")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--concurrent", default="8,16", help="max_concurrent_batches values to compare")
    p.add_argument("--mean-s", type=float, default=0.2, help="median seconds a row holds a slot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results here as JSON")
    a = p.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = [measure(a.rows, a.slots, a.batch_size, int(c), a.mean_s, a.seed) for c in a.concurrent.split(",")]
    for r in results:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"rows": a.rows, "slots": a.slots, "mean_s": a.mean_s, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
