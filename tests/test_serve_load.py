"""Overload and autoscaling on a real Ray Serve at 127.0.0.1: 64 clients for 30 s, then quiet.

What a client relies on: under overload every answer is a correct 200 or a 429/503 with Retry-After
(never a 5xx, never a hang), and replicas are added under load and removed after it.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Callable, Optional, Union

import pytest
import requests

from corpusflow.contracts.serve_config import (Autoscaling, Batching, Deployments, DeploymentSettings, ServeConfig,
                                     StreamingSettings)
from tests.media import make_audio
from tests.test_serve_api import KEY, free_port, served

pytestmark = pytest.mark.slow

CLIENTS, SECONDS = 64, 30
SCALING = ("decode", "asr")


def elastic(**kw) -> DeploymentSettings:
    """1 → 3 replicas within seconds of load, back to 1 a few seconds after it."""
    return DeploymentSettings(
        num_cpus=0.2, max_ongoing_requests=2, max_queued_requests=8,
        autoscaling=Autoscaling(min_replicas=1, max_replicas=3, target_ongoing_requests=1, upscale_delay_s=1,
                                downscale_delay_s=4, metrics_interval_s=0.5, look_back_period_s=2), **kw)


@pytest.fixture(scope="module")
def app(model_cache):
    from ray import serve

    fixed = DeploymentSettings(num_cpus=0.2, autoscaling=Autoscaling(min_replicas=1, max_replicas=1))
    settings = ServeConfig(
        # The deadline covers what admission lets in (16 running + 16 queued requests of ~1 s of ASR
        # each) on two shared cores (Little's law); beyond that clients get 503, never a 504.
        port=free_port(), models="tiny-random", model_cache=model_cache, request_timeout_s=60, overload_status=503, retry_after_s=2,
        deployments=Deployments(api=DeploymentSettings(num_cpus=0.2, max_ongoing_requests=16, max_queued_requests=16),
                                decode=elastic(), asr=elastic(batching=Batching(max_batch_size=4)),
                                pdf=fixed, frames=fixed, vlm=fixed),
        streaming=StreamingSettings(enabled=False))
    with served(settings) as url:
        yield url, serve


def replicas(serve) -> dict[str, int]:
    """Replicas each scaling deployment has, started or starting (a new one takes seconds to load its models)."""
    deployments = serve.status().applications["corpusflow"].deployments
    return {d: sum(deployments[d].replica_states.get(s, 0) for s in ("RUNNING", "STARTING")) for d in SCALING}


def start_clients(url: str, audio: bytes, clients: int, stop: Union[float, threading.Event], timeout: float,
                  judge: Callable[[requests.Response], Optional[str]],
                  answers: Optional[list[tuple[float, float, int]]] = None,
                  ) -> tuple[Counter[int], list[str], list[threading.Thread]]:
    """``clients`` threads posting ``audio`` to /v1/transcribe until ``stop`` (a time.time() or an
    event), obeying Retry-After.

    Returns the status counts and the problems (``judge``'s sentences, transport errors) as they
    accumulate, and the running threads; ``answers`` gets each answer's (sent, answered, status),
    in time.monotonic() seconds.
    """
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def stopped() -> bool:
        return stop.is_set() if isinstance(stop, threading.Event) else time.time() >= stop

    def client() -> None:
        with requests.Session() as s:
            while not stopped():
                t0 = time.monotonic()
                try:
                    r = s.post(f"{url}/v1/transcribe", files={"file": ("speech.wav", audio)},
                               headers={"X-API-Key": KEY}, timeout=timeout)
                except requests.RequestException as e:
                    with lock:
                        problems.append(f"transport after {time.monotonic() - t0:.1f} s: {e}")
                    continue
                with lock:
                    statuses[r.status_code] += 1
                    if answers is not None:
                        answers.append((t0, time.monotonic(), r.status_code))
                    if problem := judge(r):
                        problems.append(problem)
                if r.status_code in (429, 503):
                    time.sleep(float(r.headers.get("Retry-After") or 1))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    return statuses, problems, threads


def test_overload_is_refused_cleanly_and_replicas_follow_the_load(app, tmp_path):
    url, serve = app
    audio = make_audio(tmp_path / "speech.wav", seconds=2).read_bytes()
    peak = {d: 1 for d in SCALING}
    stop = time.time() + SECONDS

    def judge(r: requests.Response) -> Optional[str]:
        if r.status_code == 200:
            body = r.json()
            return None if body["asset"]["kind"] == "audio" and isinstance(body["segments"], list) else f"bad body: {body}"
        if r.status_code in (429, 503):
            return None if r.headers.get("Retry-After") else f"{r.status_code} without Retry-After"
        return f"{r.status_code}: {r.text[:200]}"

    statuses, problems, threads = start_clients(url, audio, CLIENTS, stop, 90, judge)
    while time.time() < stop:
        for d, n in replicas(serve).items():
            peak[d] = max(peak[d], n)
        time.sleep(1)
    for t in threads:
        t.join(90)
    print(f"\nload test: {dict(statuses)} in {SECONDS} s from {CLIENTS} clients; peak replicas {peak}")
    assert not problems, problems[:5]
    assert statuses[200] > 0 and set(statuses) <= {200, 429, 503}
    assert max(peak.values()) > 1, f"no deployment scaled up under load: {peak}"

    deadline = time.time() + 90
    while replicas(serve) != {d: 1 for d in SCALING}:
        assert time.time() < deadline, f"replicas did not scale back down: {replicas(serve)}"
        time.sleep(1)
    r = requests.post(f"{url}/v1/transcribe", files={"file": ("speech.wav", audio)}, headers={"X-API-Key": KEY},
                      timeout=60)
    assert r.status_code == 200
