"""A stage deployment stays exclusive when its callers give up: cancelled requests (a client that
left, a passed deadline) never let the next call run beside one that is still working.

Real Ray Serve on 127.0.0.1; the stage is a probe that counts overlapping calls (tests/stage_probe.py).
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

    from corpusflow.serve_apps.stages import StageServer

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        app = StageServer.options(name="probe", max_ongoing_requests=16).bind("tests.stage_probe.Overlap", {})
        yield serve.run(app, name="probe", route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_cancelled_calls_never_overlap_the_next_ones(probe):
    batch = {"uri": np.asarray(["probe://x"]), "error_stage": np.asarray([""]), "error": np.asarray([""])}
    for _ in range(6):
        calls = [probe.run.remote(batch) for _ in range(3)]
        time.sleep(0.1)  # the first call is running, the others wait for it
        for c in calls:
            c.cancel()
    answers = [probe.run.remote(batch) for _ in range(3)]
    most = [int(a.result(timeout_s=60)["max_concurrency"][0]) for a in answers]
    assert most == [1, 1, 1]
