"""Batch sizes of the online VLM and ASR are visible where the bench (and Prometheus) read them.

A real local Ray Serve with tiny-random models: after concurrent /v1/analyze requests, Ray's
metrics endpoint holds ``corpusflow_batch_size`` / ``corpusflow_batch_seconds`` per stage, and the
calls add up to exactly the requests sent (decode one at a time, ASR and VLM gathered).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from benchmarks.serve_bench import (KEY, METRICS_INTERVAL_ENV, batch_stats, bench_settings, ray_metrics_urls,
                                    read_batch_totals)
from tests.media import make_video

REQUESTS = 3


@pytest.fixture(scope="module")
def app(model_cache):
    import ray
    from ray import serve

    from corpusflow.serve_apps.run_local import start, wait_ready

    before = os.environ.get(METRICS_INTERVAL_ENV)
    os.environ[METRICS_INTERVAL_ENV] = "1000"  # read by the Ray started here: observations show within seconds
    try:
        url = start(bench_settings("tiny-random", model_cache, max_batch=4), api_key=KEY, num_cpus=4)
        wait_ready(url, 180)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
        if before is None:
            os.environ.pop(METRICS_INTERVAL_ENV, None)
        else:
            os.environ[METRICS_INTERVAL_ENV] = before


def test_concurrent_analyze_requests_are_counted_in_the_batch_histograms(app, tmp_path):
    video = make_video(tmp_path / "clip.mp4", seconds=2, fps=5).read_bytes()

    def analyze(_: int) -> int:
        return requests.post(f"{app}/v1/analyze", files={"file": ("clip.mp4", video)}, headers={"X-API-Key": KEY},
                             timeout=120).status_code

    with ThreadPoolExecutor(REQUESTS) as pool:
        assert list(pool.map(analyze, range(REQUESTS))) == [200] * REQUESTS

    def gathered(stats: dict, stage: str) -> int:
        """Requests that went through the stage's gathered calls."""
        s = stats.get(stage)
        return round(s["batches"] * s["mean_size"]) if s else 0

    deadline = time.time() + 20  # replicas export every second; allow a loaded machine some slack
    while True:
        stats = batch_stats({}, read_batch_totals(ray_metrics_urls()))
        if all(gathered(stats, st) == REQUESTS for st in ("decode", "asr", "frames", "vlm")) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert set(stats) == {"decode", "asr", "frames", "vlm"}
    for stage, s in stats.items():
        assert gathered(stats, stage) == REQUESTS, (stage, s)  # every request in exactly one call
        assert 1 <= s["max_size"] <= (1 if stage in ("decode", "frames") else 4) and s["mean_s"] > 0, (stage, s)
