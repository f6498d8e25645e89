"""Job cost reaches Prometheus: metrics/ rows recorded in a Ray worker show up on Ray's metrics export."""
from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest

from corpusflow.contracts.schemas import conform

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(job: str):
    return conform("metrics", {
        "job_id": [job] * 3, "asset_id": ["v", "a", "p"], "kind": ["video", "audio", "pdf"],
        "stage": ["asr", "asr", "pdf"], "wall_s": [2.0, 1.0, 0.5], "device_s": [1.5, 1.0, 0.5],
        "accelerator": ["A10G", "A10G", "cpu"], "media_s": [60.0, 30.0, None], "pages": [None, None, 12],
        "usd_per_hour": [1.006, 1.006, 0.048], "cost_usd": [0.25, 0.125, 0.5]})


def _sample(body: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (one series per Ray worker)."""
    total, found = 0.0, False
    for line in body.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} ([0-9.eE+-]+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total, found = total + float(m.group(2)), True
    return total if found else float("nan")


def test_recorded_cost_reaches_the_prometheus_export() -> None:
    port = _free_port()
    ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port, log_to_driver=False)
    try:
        @ray.remote
        def commit(rows):  # the job's commit step runs in a Ray worker
            from corpusflow.flows.live_metrics import record

            record(rows, "job-7")
            record(rows, "job-7")  # counters accumulate over batches

        ray.get(commit.remote(_rows("job-7")))
        body, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if "ray_corpusflow_pages_total" in body:
                break
            time.sleep(1)
    finally:
        ray.shutdown()
    cost = _sample(body, "ray_corpusflow_cost_usd_total", job_id="job-7", stage="asr", accelerator="A10G", kind="video")
    assert cost == pytest.approx(0.5)
    device = _sample(body, "ray_corpusflow_device_seconds_total", job_id="job-7", stage="pdf", accelerator="cpu")
    assert device == pytest.approx(1.0)
    media = _sample(body, "ray_corpusflow_media_seconds_total", job_id="job-7", accelerator="A10G", kind="audio")
    assert media == pytest.approx(60)
    assert _sample(body, "ray_corpusflow_pages_total", job_id="job-7", stage="pdf") == pytest.approx(24)
    assert _sample(body, "ray_corpusflow_stage_runs_total", job_id="job-7", stage="asr") == pytest.approx(4)
