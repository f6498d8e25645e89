"""Replicas dying under load on a real Ray Serve at 127.0.0.1: 16 clients for 25 s while one decode
and one ASR replica process are killed.

What a client relies on: every answer is a 200, a 429/503 with Retry-After, or a 504 at the deadline,
never a hang past the deadline and never a 500 without an incident id; Serve restores the replicas,
and later requests succeed.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Optional

import pytest
import requests

from corpusflow.contracts.serve_config import Autoscaling, Batching, Deployments, DeploymentSettings, ServeConfig, \
    StreamingSettings
from tests.media import make_audio
from tests.test_serve_api import KEY, free_port, replica_pid, served
from tests.test_serve_load import start_clients

pytestmark = pytest.mark.slow

CLIENTS, SECONDS, DEADLINE_S = 16, 25, 15
KILLED = ("decode", "asr")


def fixed(**kw) -> DeploymentSettings:
    return DeploymentSettings(num_cpus=0.2, autoscaling=Autoscaling(min_replicas=1, max_replicas=1), **kw)


@pytest.fixture(scope="module")
def app(model_cache):
    from ray import serve

    settings = ServeConfig(
        port=free_port(), models="tiny-random", model_cache=model_cache, request_timeout_s=DEADLINE_S, overload_status=503, retry_after_s=1,
        deployments=Deployments(api=fixed(max_ongoing_requests=16, max_queued_requests=16),
                                decode=fixed(max_ongoing_requests=2, max_queued_requests=8),
                                asr=fixed(max_ongoing_requests=8, max_queued_requests=8, batching=Batching(max_batch_size=4)),
                                pdf=fixed(), frames=fixed(), vlm=fixed()),
        streaming=StreamingSettings(enabled=False))
    with served(settings) as url:
        yield url, serve


def kill_replica(deployment: str) -> int:
    """SIGKILL one replica process of ``deployment``; its pid."""
    pid = replica_pid(deployment)
    os.kill(pid, signal.SIGKILL)
    return pid


def running(serve) -> dict[str, int]:
    deployments = serve.status().applications["corpusflow"].deployments
    return {d: deployments[d].replica_states.get("RUNNING", 0) for d in KILLED}


def test_killed_replicas_under_load_give_clean_answers_and_come_back(app, tmp_path):
    url, serve = app
    audio = make_audio(tmp_path / "speech.wav", seconds=2).read_bytes()

    def judge(r: requests.Response) -> Optional[str]:
        if r.status_code in (429, 503) and not r.headers.get("Retry-After"):
            return f"{r.status_code} without Retry-After: {r.text[:200]}"
        if r.status_code == 500 and "incident" not in r.json().get("detail", ""):
            return f"500 without an incident id: {r.text[:200]}"
        if r.status_code not in (200, 429, 503, 504, 500):
            return f"{r.status_code}: {r.text[:200]}"
        return None

    # past the deadline plus the proxy's slack, a request hangs: the client gives up and says so
    statuses, problems, threads = start_clients(url, audio, CLIENTS, time.time() + SECONDS, DEADLINE_S + 10, judge)
    time.sleep(SECONDS / 4)
    killed = {"decode": kill_replica("decode")}
    time.sleep(SECONDS / 4)
    killed["asr"] = kill_replica("asr")
    for t in threads:
        t.join(SECONDS + DEADLINE_S + 30)
    assert not any(t.is_alive() for t in threads), "a client hung past the deadline"
    print(f"\nchaos: {dict(sorted(statuses.items()))} from {CLIENTS} clients in {SECONDS} s; killed {killed}")
    assert not problems, problems[:5]
    assert statuses[200] > 0

    deadline = time.time() + 120
    while running(serve) != {d: 1 for d in KILLED}:
        assert time.time() < deadline, f"replicas were not restored: {running(serve)}"
        time.sleep(1)
    for _ in range(30):  # the restarted replicas load their models; then requests succeed again
        r = requests.post(f"{url}/v1/transcribe", files={"file": ("speech.wav", audio)}, headers={"X-API-Key": KEY},
                          timeout=DEADLINE_S + 10)
        if r.status_code == 200:
            break
        time.sleep(2)
    assert r.status_code == 200, r.text
