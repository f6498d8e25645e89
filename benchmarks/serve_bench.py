"""Online API throughput and latency against client concurrency, one-at-a-time baseline in the same run.

Starts the app on 127.0.0.1 (one replica per deployment, so the gain at higher concurrency comes
from online batching and stage pipelining, not from more replicas), then for each endpoint and each
concurrency level runs closed-loop clients for a fixed time and records requests/s and p50/p99
latency of the successful requests, plus the ratio to concurrency 1.

    python -m benchmarks.serve_bench --models tiny-random --seconds 20 --out benchmarks/results/serve_cpu_tiny.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import requests

from contracts.config import VideoConfig
from contracts.serve_config import (Autoscaling, Batching, Deployments, DeploymentSettings, ServeConfig,
                                     StreamingSettings)

KEY = "bench-" + "k" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_settings(models: str, model_cache: str, max_batch: int) -> ServeConfig:
    one = Autoscaling(min_replicas=1, max_replicas=1)
    stage = dict(num_cpus=0.25, max_ongoing_requests=32, max_queued_requests=64, autoscaling=one)
    batching = Batching(max_batch_size=max_batch, batch_wait_timeout_s=0.05)
    return ServeConfig(
        port=_free_port(), models=models, model_cache=model_cache, request_timeout_s=300,
        video=VideoConfig(fps=1, max_frames=8),
        deployments=Deployments(api=DeploymentSettings(num_cpus=0.25, max_ongoing_requests=64, max_queued_requests=64,
                                                       autoscaling=one),
                                decode=DeploymentSettings(**stage), pdf=DeploymentSettings(**stage),
                                asr=DeploymentSettings(**stage, batching=batching),
                                vlm=DeploymentSettings(**stage, batching=batching)),
        streaming=StreamingSettings(enabled=False))  # /v1/stream has its own benchmark


def run_level(url: str, endpoint: str, name: str, data: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """Closed loop: each client sends its next request when the previous one is answered."""
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def client() -> None:
        with requests.Session() as s:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = s.post(f"{url}/v1/{endpoint}", files={"file": (name, data)}, headers={"X-API-Key": KEY},
                           timeout=600)
                dt = time.perf_counter() - t0
                with lock:
                    codes[r.status_code] += 1
                    if r.status_code == 200:
                        latencies.append(dt)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {"endpoint": endpoint, "concurrency": clients, "wall_s": round(wall, 2), "ok": int(codes[200]),
            "statuses": {str(k): v for k, v in sorted(codes.items())},
            "throughput_rps": round(len(lat) / wall, 3),
            "p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_s": round(float(np.percentile(lat, 99)), 3) if len(lat) else None}


def make_inputs(folder: Path) -> dict[str, tuple[str, bytes]]:
    from tests.media import make_audio, make_video

    return {"transcribe": ("speech.wav", make_audio(folder / "speech.wav", seconds=8).read_bytes()),
            "analyze": ("clip.mp4", make_video(folder / "clip.mp4", seconds=8, fps=10).read_bytes())}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"Online API, {result['models']} models on {result['device']}; one replica per deployment, "
             f"`@serve.batch` max {result['max_batch_size']}; {result['seconds_per_level']} s per level, "
             "closed-loop clients; ratio = throughput / one-at-a-time throughput; 1-min load average "
             f"{result['load_average_before']:.1f} before, {result['load_average_after']:.1f} after.", "",
             "| endpoint | input | clients | req/s | ratio | p50 s | p99 s | statuses |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for endpoint, rows in result["levels"].items():
        base = rows[0]["throughput_rps"] or float("nan")
        for r in rows:
            lines.append(f"| {endpoint} | {result['inputs'][endpoint]} | {r['concurrency']} | {r['throughput_rps']:.2f} "
                         f"| {r['throughput_rps'] / base:.2f}x | {r['p50_s']} | {r['p99_s']} | {r['statuses']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-random")
    p.add_argument("--model-cache", default="~/.cache/corpusflow/models")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--endpoints", default="transcribe,analyze")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--num-cpus", type=float, default=4, help="logical CPUs of the local Ray")
    p.add_argument("--out", default="benchmarks/results/serve_cpu_tiny.json")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from actors.device import accelerator
    from serve_apps.run_local import start

    levels = [int(c) for c in args.concurrency.split(",")]
    settings = bench_settings(args.models, args.model_cache, args.max_batch)
    url = start(settings, api_key=KEY, num_cpus=args.num_cpus)
    try:
        while requests.get(f"{url}/readyz", timeout=10).status_code != 200:
            time.sleep(1)
        with tempfile.TemporaryDirectory() as tmp:
            inputs = make_inputs(Path(tmp))
            result: dict[str, Any] = {
                "models": args.models, "device": f"{accelerator()} ({platform.processor() or platform.machine()}, "
                                                 f"{ray.cluster_resources().get('CPU', 0):g} logical CPUs)",
                "max_batch_size": args.max_batch, "seconds_per_level": args.seconds,
                "inputs": {}, "levels": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average_before": os.getloadavg()[0]}  # other tenants' load skews CPU numbers
            for endpoint in args.endpoints.split(","):
                name, data = inputs[endpoint]
                result["inputs"][endpoint] = f"{name} ({len(data) // 1024} KB, 8 s)"
                run_level(url, endpoint, name, data, 2, 3)  # warm-up: first calls pay lazy initialisation
                result["levels"][endpoint] = []
                for c in levels:
                    row = run_level(url, endpoint, name, data, c, args.seconds)
                    print(json.dumps(row), flush=True)
                    result["levels"][endpoint].append(row)
        result["load_average_after"] = os.getloadavg()[0]
    finally:
        serve.shutdown()
        ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
