"""How a stage deployment lets calls in: a stage stays exclusive when its callers give up (cancelled
requests — a client that left, a passed deadline — never let the next call run beside one that is
still working); a batched stage gathers the requests that wait for a busy engine into one call,
unless its engine batches continuously (vLLM's async engine), which gets each request as it comes.

Real Ray Serve on 127.0.0.1; the stages are probes that count overlapping calls (tests/stage_probe.py).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.test_serve_api import free_port


@pytest.fixture(scope="module")
def probe():
    import ray
    from ray import serve

    from corpusflow.serve_apps.stages import BatchedStageServer, StageServer

    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True)  # a replica per probe, one CPU each
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        apps = {"exclusive": StageServer.options(name="probe", max_ongoing_requests=16).bind("tests.stage_probe.Overlap", {}),
                "gathered": BatchedStageServer.options(name="gathered", max_ongoing_requests=16).bind(
                    "tests.stage_probe.Overlap", {}, 4, 0.05),
                "continuous": BatchedStageServer.options(name="continuous", max_ongoing_requests=16).bind(
                    "tests.stage_probe.ContinuousOverlap", {}, 4, 0.05)}
        yield {name: serve.run(app, name=name, route_prefix=None) for name, app in apps.items()}
    finally:
        serve.shutdown()
        ray.shutdown()


BATCH = {"uri": np.asarray(["probe://x"]), "error_stage": np.asarray([""]), "error": np.asarray([""])}


def _at_once(handle, n: int) -> list[dict]:
    """``n`` requests sent together; each one's answer."""
    calls = [handle.run.remote(BATCH) for _ in range(n)]
    return [c.result(timeout_s=60) for c in calls]


def test_cancelled_calls_never_overlap_the_next_ones(probe):
    probe, batch = probe["exclusive"], BATCH
    for _ in range(6):
        calls = [probe.run.remote(batch) for _ in range(3)]
        time.sleep(0.1)  # the first call is running, the others wait for it
        for c in calls:
            c.cancel()
    answers = [probe.run.remote(batch) for _ in range(3)]
    most = [int(a.result(timeout_s=60)["max_concurrency"][0]) for a in answers]
    assert most == [1, 1, 1]


def test_requests_waiting_for_a_busy_engine_share_its_next_call(probe):
    answers = _at_once(probe["gathered"], 6)
    assert {int(a["max_concurrency"][0]) for a in answers} == {1}  # one call at a time
    assert max(int(a["rows_in_call"][0]) for a in answers) > 1


def test_an_engine_that_batches_continuously_gets_each_request_as_it_comes(probe):
    answers = _at_once(probe["continuous"], 6)
    assert {int(a["rows_in_call"][0]) for a in answers} == {1}  # never held back to form a batch
    assert max(int(a["max_concurrency"][0]) for a in answers) == 4  # as many at once as the batch size allows
