"""Online API throughput and latency against client concurrency, one-at-a-time baseline in the same run.

Starts the app on 127.0.0.1 through ``corpusflow.serve_apps.run_local.start`` (one replica per model
deployment, so the gain at higher concurrency comes from online batching and stage pipelining, not
from more replicas), then for each endpoint and each concurrency level warms up at that level, runs
closed-loop clients for a fixed time (``--repeats`` times) and records requests/s and p50/p99
latency of the successful requests, plus the ratio to concurrency 1, and how the stages' calls went
meanwhile (decode's one request at a time, ASR's and VLM's gathered batches: mean and largest size,
mean seconds per call and busy share, from deltas of the ``corpusflow_batch_*`` series read from Ray's
metrics endpoint, serve_apps/batch_metrics.py).
Results are rewritten after every level, so a run cut short keeps what it measured.

CPU mode (default): tiny-random models, the real stages (schema-constrained answers), one 8-s
speech WAV and one 8-s MP4 shared by all clients::

    python -m benchmarks.serve_bench --models tiny-random --seconds 20 --out benchmarks/results/serve_cpu_tiny.json

GPU mode (``--gpu``): real-size architectures with random weights (Qwen2.5-VL-7B bf16, Whisper
large-v3 fp16, written as checkpoints to ``--work`` first, by gpu_throughput.py's builders), ASR on
the transformers engine, the VLM on ``--vlm-engine`` (transformers, or vLLM with a sized KV cache
and ``max_num_seqs`` = the Serve batch), ASR and VLM sharing one GPU (``--asr-gpu``/``--vlm-gpu``
shares). Every request does the same work: the VLM answers exactly ``--vlm-tokens`` tokens and Whisper decodes
exactly ``--asr-tokens`` per 30-s chunk (benchmarks/serve_fixed.py; random weights would stop
anywhere), so answers are not JSON and /v1/analyze rows carry that error (200 all the same). Each
client sends its own video (``--video-seconds`` of speech from ``--speech-clip``, 64×64 at 1 fps
upscaled to ``--frame-size`` by decode, a distinct seed per client). ``--cpu-smoke`` runs this
same path on CPU with tiny-random models::

    python -m benchmarks.serve_bench --gpu --speech-clip speech.flac --num-cpus 16 --endpoints analyze,transcribe \\
        --seconds 20 --budget-s 400 --out $OUT/serve_h200.json --markdown $OUT/serve_h200.md
    python -m benchmarks.serve_bench --gpu --vlm-engine vllm --speech-clip speech.flac --num-cpus 16 \\
        --endpoints analyze,transcribe --seconds 15 --budget-s 340 --out $OUT/serve_h200_vllm.json

vLLM's ``generate`` runs one gathered batch to completion (the replica calls it under its lock), so
the Serve batch, not vLLM's scheduler, decides which requests share the GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence
from unittest import mock

import numpy as np
import requests

from corpusflow.contracts.config import AsrConfig, VideoConfig, VlmConfig
from corpusflow.contracts.serve_config import (Autoscaling, Batching, Deployments, DeploymentSettings, ServeConfig,
                                     StreamingSettings)

KEY = "bench-" + "k" * 24
REPO = Path(__file__).resolve().parents[1]
FIXED_STAGES = {"asr": "benchmarks.serve_fixed.FixedTranscribe", "vlm": "benchmarks.serve_fixed.FixedDescribe"}

Input = tuple[str, bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_settings(models: str, model_cache: str, max_batch: int, *, gpu: bool = False, asr_gpu: float = 0.0,
                   vlm_gpu: float = 0.0, video: VideoConfig = VideoConfig(fps=1, max_frames=8)) -> ServeConfig:
    """The app's config: one replica per deployment (decode and frames: two in GPU mode, so CPU work never caps the GPU).

    GPU mode's fixed-length answers never parse, so it asks once (no retries: one engine call per request).
    """
    one = Autoscaling(min_replicas=1, max_replicas=1)
    cpus = 1.0 if gpu else 0.25
    stage = dict(num_cpus=cpus, max_ongoing_requests=32, max_queued_requests=64, autoscaling=one)
    batching = Batching(max_batch_size=max_batch, batch_wait_timeout_s=0.05)
    decode = {**stage, "autoscaling": Autoscaling(min_replicas=2, max_replicas=2)} if gpu else stage
    vlm = VlmConfig(retries=0) if gpu else VlmConfig()
    return ServeConfig(
        port=_free_port(), models=models, model_cache=model_cache, request_timeout_s=300, video=video, vlm=vlm,
        asr=AsrConfig(align_words=False, batch_size=32) if gpu else AsrConfig(),
        deployments=Deployments(api=DeploymentSettings(num_cpus=cpus, max_ongoing_requests=64, max_queued_requests=64,
                                                       autoscaling=one),
                                decode=DeploymentSettings(**decode), frames=DeploymentSettings(**decode),
                                pdf=DeploymentSettings(**{**stage, "num_cpus": 0.25}),
                                asr=DeploymentSettings(**stage, num_gpus=asr_gpu, batching=batching),
                                vlm=DeploymentSettings(**stage, num_gpus=vlm_gpu, batching=batching)),
        streaming=StreamingSettings(enabled=False))  # /v1/stream has its own benchmark


def serve_profile(work: Path, vlm: str, asr: str, max_batch: int, max_frames: int, smoke: bool,
                  vlm_engine: str = "transformers", vllm_kv_gib: float = 16.0, asr_engine: str = "transformers") -> str:
    """A models profile file for GPU mode: Whisper on ``asr_engine``, the VLM on ``vlm_engine``.

    ``max_num_seqs`` equals the Serve batch, so a gathered batch is one engine call (one padded
    ``generate`` on transformers, one schedule on vLLM); bf16 with SDPA on the GPU, float32 tiny
    models when smoking on CPU. vLLM shares the GPU with the ASR replica, so its KV cache is sized
    (``vllm_kv_gib``; a batch of 8 ~4k-token requests needs ~2 GiB) instead of profiled, and its
    ``gpu_memory_utilization`` is only the share that must be free when it starts.
    """
    import yaml

    if smoke:
        shape = {"dtype": "float32", "max_model_len": 4096, "max_frames": max_frames, "max_num_seqs": max_batch}
    elif vlm_engine == "vllm":
        shape = {"dtype": "bfloat16", "max_model_len": 16384, "max_frames": max_frames, "max_num_seqs": max_batch,
                 "gpu_memory_utilization": 0.35, "kv_cache_memory_bytes": int(vllm_kv_gib * 2**30)}
    else:
        shape = {"dtype": "bfloat16", "max_model_len": 16384, "max_frames": max_frames, "max_num_seqs": max_batch,
                 "attn_implementation": "sdpa"}
    profile = {"name": "serve-bench", "asr": asr, "align": None, "vlm": vlm, "asr_engine": asr_engine,
               "vlm_engine": vlm_engine, "engine_options": {"default": shape}}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "profile_serve.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def gpu_plan(args: argparse.Namespace, vlm: str, asr: str) -> ServeConfig:
    """GPU mode's ServeConfig from the arguments and the checkpoint folders (no model is loaded)."""
    smoke = args.cpu_smoke
    profile = serve_profile(Path(args.work), vlm, asr, args.max_batch, args.max_frames, smoke, args.vlm_engine,
                            args.vllm_kv_gib, args.asr_engine)
    video = VideoConfig(fps=args.fps, max_frames=args.max_frames, frame_size=args.frame_size)
    return bench_settings(profile, str(Path(args.work) / "cache"), args.max_batch, gpu=True,
                          asr_gpu=0.0 if smoke else args.asr_gpu, vlm_gpu=0.0 if smoke else args.vlm_gpu,
                          video=video)


# -- measuring -------------------------------------------------------------------------------------

def run_level(url: str, endpoint: str, inputs: Sequence[Input], clients: int, seconds: float) -> dict[str, Any]:
    """Closed loop: client k sends ``inputs[k % len(inputs)]`` again as soon as its previous answer is in."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    row_errors: Counter[str] = Counter()
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def client(k: int) -> None:
        name, data = inputs[k % len(inputs)]
        with requests.Session() as s:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = s.post(f"{url}/v1/{endpoint}", files={"file": (name, data)}, headers={"X-API-Key": KEY},
                               timeout=600)
                    code = str(r.status_code)
                    row_error = _row_error(r) if code == "200" else ""
                except requests.RequestException as e:  # counted, not fatal: the level still ends on time
                    code, row_error = f"transport:{type(e).__name__}", ""
                dt = time.perf_counter() - t0
                with lock:
                    codes[code] += 1
                    if code == "200":
                        latencies.append(dt)
                    if row_error:
                        row_errors[row_error] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "latencies": latencies, "codes": codes, "row_errors": row_errors}


def _row_error(response: requests.Response) -> str:
    """A 200 answer's row-level failure (``stage: sentence``), '' when the row is clean.

    Counted apart from the statuses: a stage failure (e.g. out of GPU memory) still answers 200.
    """
    asset = response.json().get("asset") or {}
    return f"{asset.get('error_stage')}: {str(asset.get('error'))[:100]}" if asset.get("error") else ""


# One stage's batch totals: batches, summed sizes and busy seconds, cumulative count per size bucket.
BatchTotals = dict[str, Any]
# The bench's Ray exports replica metrics every second (Ray's default: 10 s), so a level's deltas settle fast.
METRICS_INTERVAL_ENV = "RAY_metrics_report_interval_ms"


def ray_metrics_urls() -> list[str]:
    """Prometheus endpoints of the live Ray nodes: where replicas' ``ray.util.metrics`` series are served."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes() if n["Alive"]]


def read_batch_totals(urls: Sequence[str]) -> dict[str, BatchTotals]:
    """Per stage, the batch metrics (serve_apps/batch_metrics.py) summed over every replica and node."""
    from prometheus_client.parser import text_string_to_metric_families

    from corpusflow.serve_apps.batch_metrics import BATCH_SIZE, BUSY_SECONDS

    size, busy = f"ray_{BATCH_SIZE}", f"ray_{BUSY_SECONDS}"
    totals: dict[str, BatchTotals] = {}
    for url in urls:
        for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
            if family.name not in (size, busy):
                continue
            for s in family.samples:
                t = totals.setdefault(s.labels["stage"], {"batches": 0.0, "size_sum": 0.0, "seconds_sum": 0.0,
                                                          "size_le": Counter()})
                if s.name == f"{size}_count":
                    t["batches"] += s.value
                elif s.name == f"{size}_sum":
                    t["size_sum"] += s.value
                elif s.name == f"{size}_bucket":
                    t["size_le"][float(s.labels["le"])] += s.value
                elif s.name == f"{busy}_total":
                    t["seconds_sum"] += s.value
    return totals


def batch_stats(before: dict[str, BatchTotals], after: dict[str, BatchTotals]) -> dict[str, dict[str, Any]]:
    """Per stage, the batches that ran between two readings: count, mean and largest size, mean seconds.

    The largest size is read from the smallest size bucket holding every new batch (exact up to 16).
    """
    stats = {}
    for stage, a in after.items():
        b = before.get(stage, {"batches": 0.0, "size_sum": 0.0, "seconds_sum": 0.0, "size_le": Counter()})
        n = a["batches"] - b["batches"]
        if n <= 0:
            continue
        largest = min(le for le, c in a["size_le"].items() if c - b["size_le"][le] >= n)
        stats[stage] = {"batches": int(n), "mean_size": round((a["size_sum"] - b["size_sum"]) / n, 2),
                        "max_size": math.floor(largest) if largest != float("inf") else None,
                        "mean_s": round((a["seconds_sum"] - b["seconds_sum"]) / n, 3)}
    return stats


class BatchProbe:
    """Readings of the stages' batch histograms on Ray's metrics endpoints, each after the export settled."""

    def __init__(self, urls: Sequence[str], settle_s: float):
        self.urls, self.settle_s = list(urls), settle_s

    def read(self) -> dict[str, BatchTotals]:
        time.sleep(self.settle_s)  # the last batches' observations reach the endpoint one export later
        return read_batch_totals(self.urls)


def measure(url: str, endpoint: str, inputs: Sequence[Input], clients: int, seconds: float, warmup_s: float,
            repeats: int, probe: Optional[BatchProbe] = None) -> dict[str, Any]:
    """One level: a discarded warm-up at this concurrency, then ``repeats`` timed runs.

    Throughput is the median of the runs; p50/p99 pool the successful requests of all runs; with
    ``probe``, ``batches`` holds the batch sizes and seconds of the stages during the timed runs.
    """
    if warmup_s > 0:
        run_level(url, endpoint, inputs, clients, warmup_s)  # fills the batches and queues before timing
    before = probe.read() if probe else {}
    runs = [run_level(url, endpoint, inputs, clients, seconds) for _ in range(repeats)]
    batches = batch_stats(before, probe.read()) if probe else {}
    lat = np.asarray([x for r in runs for x in r["latencies"]])
    codes: Counter[str] = sum((r["codes"] for r in runs), Counter())
    row_errors: Counter[str] = sum((r["row_errors"] for r in runs), Counter())
    rps = [len(r["latencies"]) / r["wall_s"] for r in runs]
    wall = sum(r["wall_s"] for r in runs)
    for b in batches.values():  # the share of the timed wall clock the stage spent working
        b["busy_share"] = round(b["batches"] * b["mean_s"] / wall, 2)
    return {"endpoint": endpoint, "concurrency": clients, "repeats": repeats,
            "wall_s": round(wall, 2), "ok": int(codes["200"]),
            "statuses": dict(sorted(codes.items())), "row_errors": dict(row_errors.most_common()),
            "throughput_rps": round(float(np.median(rps)), 3), "runs_rps": [round(x, 3) for x in rps],
            "p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_s": round(float(np.percentile(lat, 99)), 3) if len(lat) else None, "batches": batches}


# -- inputs ----------------------------------------------------------------------------------------

def cpu_inputs(folder: Path) -> tuple[dict[str, list[Input]], dict[str, str]]:
    """One 8-s speech WAV and one 8-s MP4, shared by every client (what the CPU table has always measured)."""
    from tests.media import make_audio, make_video

    wav = make_audio(folder / "speech.wav", seconds=8).read_bytes()
    mp4 = make_video(folder / "clip.mp4", seconds=8, fps=10).read_bytes()
    return ({"transcribe": [("speech.wav", wav)], "analyze": [("clip.mp4", mp4)]},
            {"transcribe": f"speech.wav ({len(wav) // 1024} KB, 8 s)", "analyze": f"clip.mp4 ({len(mp4) // 1024} KB, 8 s)"})


def gpu_inputs(work: Path, clients: int, seconds: float, clip: str) -> tuple[dict[str, list[Input]], dict[str, str]]:
    """One distinct video with speech per client (gpu_throughput's generator, a seed each), for every endpoint."""
    from benchmarks.corpus import make_corpus

    paths = make_corpus(work / f"serve_media_{seconds:g}s", clients, seconds / 60, clip)
    videos = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    kb = sum(len(d) for _, d in videos) // len(videos) // 1024
    words = f"{len(videos)} distinct MKV videos, {seconds:g} s each (~{kb} KB: H.264 64×64 1 fps, FLAC speech)"
    return {"transcribe": videos, "analyze": videos}, {"transcribe": words, "analyze": words}


def gpu_models(args: argparse.Namespace) -> tuple[str, str]:
    """(VLM, ASR) model sources: checkpoints with random weights written once to ``--work``, or tiny-random."""
    if args.cpu_smoke:
        return "tiny-random", "tiny-random"
    from benchmarks.gpu_throughput import make_qwen7b, make_whisper, release_gpu

    t = time.time()
    vlm = make_qwen7b(Path(args.work) / "models" / "qwen2.5-vl-7b")
    asr = make_whisper(Path(args.work) / "models" / f"whisper-{args.asr_model}", args.asr_model)
    release_gpu()  # the checkpoints were written from this process's GPU memory
    print(f"[bench] checkpoints ready in {time.time() - t:.0f} s", flush=True)
    return vlm, asr


# -- output ----------------------------------------------------------------------------------------

def to_markdown(result: dict[str, Any]) -> str:
    mode = result["setup"]
    lines = [f"Online API, {result['models']} models on {result['device']}; one replica per model deployment, "
             f"online batches of up to {result['max_batch_size']}; {result['seconds_per_level']} s per level × "
             f"{mode['repeats']} after a {mode['warmup_s']} s warm-up at the same concurrency, closed-loop clients; "
             f"ratio = throughput / one-at-a-time throughput; 1-min load average "
             f"{result['load_average_before']:.1f} before, {result.get('load_average_after', float('nan')):.1f} after.",
             "Decode/ASR/VLM calls: mean size / largest size / mean seconds of one call (decode takes one "
             "request at a time, ASR and VLM gather them) / share of the timed wall clock the stage was busy.",
             "", "| endpoint | input | clients | req/s | ratio | p50 s | p99 s | statuses | GPU mem peak GiB "
                 "| decode calls | ASR calls | VLM calls |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for endpoint, rows in result["levels"].items():
        base = rows[0]["throughput_rps"] if rows and rows[0]["concurrency"] == 1 else None
        for r in rows:
            ratio = f"{r['throughput_rps'] / base:.2f}x" if base else "–"
            lines.append(f"| {endpoint} | {result['inputs'][endpoint]} | {r['concurrency']} | {r['throughput_rps']:.2f} "
                         f"| {ratio} | {r['p50_s']} | {r['p99_s']} | {r['statuses']} | {r.get('gpu_mem_peak_gib') or '–'} "
                         f"| {_batch_cell(r, 'decode')} | {_batch_cell(r, 'asr')} | {_batch_cell(r, 'vlm')} |")
    errors = {e: Counter() for e in result["levels"]}
    for endpoint, rows in result["levels"].items():
        for r in rows:
            errors[endpoint].update(r["row_errors"])
    for endpoint, seen in errors.items():
        if seen:
            lines.append(f"\nRow errors in 200 answers, {endpoint}: " + "; ".join(f"{n} × {e}" for e, n in seen.most_common()))
    if result.get("skipped"):
        lines.append("\nSkipped (time budget): " + ", ".join(result["skipped"]))
    return "\n".join(lines) + "\n"


def _batch_cell(row: dict[str, Any], stage: str) -> str:
    b = row.get("batches", {}).get(stage)
    return f"{b['mean_size']:g} / {b['max_size']} / {b['mean_s']:.2f} s / {b['busy_share']:.0%}" if b else "–"


def save(result: dict[str, Any], out: str, markdown: Optional[str]) -> str:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(table)
    return table


# -- main ------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-random", help="CPU mode's models profile")
    p.add_argument("--model-cache", default="~/.cache/corpusflow/models")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--endpoints", default="transcribe,analyze")
    p.add_argument("--seconds", type=float, default=20, help="timed seconds per level and repeat")
    p.add_argument("--warmup-s", type=float, default=3, help="discarded closed-loop seconds before each level")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per level (throughput: their median)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--num-cpus", type=float, default=4, help="logical CPUs of the local Ray")
    p.add_argument("--budget-s", type=float, default=0, help="skip levels that would end past this many seconds "
                                                             "after start (0: no limit)")
    p.add_argument("--out", default="benchmarks/results/serve_cpu_tiny.json")
    p.add_argument("--markdown", help="also write the table here")
    g = p.add_argument_group("GPU mode")
    g.add_argument("--gpu", action="store_true", help="real-size dummy-weight models on one GPU, fixed output lengths")
    g.add_argument("--cpu-smoke", action="store_true", help="with --gpu: the same path on CPU, tiny-random models")
    g.add_argument("--work", default="/tmp/cfbench", help="folder for checkpoints, media and the profile")
    g.add_argument("--speech-clip", help="any audio file with speech (looped into the videos); needed with --gpu")
    g.add_argument("--video-seconds", type=float, default=60)
    g.add_argument("--fps", type=float, default=0.25, help="frames sampled per second of video")
    g.add_argument("--max-frames", type=int, default=16, help="frames per VLM request")
    g.add_argument("--frame-size", type=int, default=448)
    g.add_argument("--vlm-engine", choices=("transformers", "vllm"), default="transformers",
                   help="the VLM replica's engine (vllm: CUDA graphs, paged KV cache; needs vllm installed)")
    g.add_argument("--asr-engine", choices=("transformers", "vllm"), default="transformers",
                   help="Whisper's engine (vllm: its own engine beside the VLM's on the GPU)")
    g.add_argument("--asr-model", choices=("large-v3", "large-v3-turbo"), default="large-v3",
                   help="Whisper architecture (random weights)")
    g.add_argument("--vllm-kv-gib", type=float, default=16.0, help="vLLM's KV cache (it shares the GPU with ASR)")
    g.add_argument("--vlm-tokens", type=int, default=128, help="tokens every VLM answer has")
    g.add_argument("--asr-tokens", type=int, default=32, help="tokens every 30-s ASR chunk has")
    g.add_argument("--vlm-gpu", type=float, default=0.6, help="GPU share of the VLM replica")
    g.add_argument("--asr-gpu", type=float, default=0.3, help="GPU share of the ASR replica")
    g.add_argument("--ready-timeout-s", type=float, default=300, help="give up if the app is not ready by then")
    args = p.parse_args(argv)
    if args.gpu and not args.speech_clip:
        p.error("--gpu needs --speech-clip")
    if args.cpu_smoke and not args.gpu:
        p.error("--cpu-smoke goes with --gpu")
    if args.cpu_smoke and "vllm" in (args.vlm_engine, args.asr_engine):
        p.error("the vllm engines need a GPU; --cpu-smoke runs the transformers engines")
    unknown = set(args.endpoints.split(",")) - {"transcribe", "analyze"}
    if unknown:
        p.error(f"unknown endpoints {sorted(unknown)}")
    return args


# What the replicas import in GPU mode; checked before minutes go into checkpoints (module names).
GPU_MODE_MODULES = ("fastapi", "prometheus_client", "av", "pymupdf", "faster_whisper", "onnxruntime", "xgrammar",
                    "transformers", "yaml")


def missing_modules(*engines: str) -> list[str]:
    import importlib.util

    wanted = (*GPU_MODE_MODULES, "vllm") if "vllm" in engines else GPU_MODE_MODULES
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    import ray
    from ray import serve

    from corpusflow.actors.models.device import accelerator
    from benchmarks.gpu_throughput import GpuSampler, machine
    from benchmarks.serve_fixed import ASR_TOKENS_ENV, VLM_TOKENS_ENV
    from corpusflow.serve_apps import app
    from corpusflow.serve_apps.run_local import start, wait_ready

    levels = [int(c) for c in args.concurrency.split(",")]
    endpoints = args.endpoints.split(",")
    stages: dict[str, str] = {}
    tmp = tempfile.TemporaryDirectory()
    if args.gpu:
        missing = missing_modules(args.vlm_engine, args.asr_engine)
        if missing:  # the PDF replica alone needs pymupdf, and one failed replica fails the whole app
            raise SystemExit(f"GPU mode needs these modules, missing here: {', '.join(missing)}")
        inputs, words = gpu_inputs(Path(args.work), max(levels), args.video_seconds, args.speech_clip)
        settings = gpu_plan(args, *gpu_models(args))
        stages = FIXED_STAGES
        # Replicas inherit the driver's environment: the fixed ASR length, and this checkout on the path.
        os.environ.update({ASR_TOKENS_ENV: str(args.asr_tokens), VLM_TOKENS_ENV: str(args.vlm_tokens)})
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # generate() warns on every fixed-length call
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        models = ("tiny-random" if args.cpu_smoke else
                  f"Qwen2.5-VL-7B on {args.vlm_engine} + Whisper {args.asr_model} on {args.asr_engine} (random weights)")
    else:
        inputs, words = cpu_inputs(Path(tmp.name))
        settings = bench_settings(args.models, args.model_cache, args.max_batch)
        models = args.models
    result: dict[str, Any] = {
        "models": models, "max_batch_size": args.max_batch, "seconds_per_level": args.seconds,
        "inputs": {e: words[e] for e in endpoints}, "levels": {}, "skipped": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": {"mode": ("gpu-cpu-smoke" if args.cpu_smoke else "gpu") if args.gpu else "cpu",
                  "warmup_s": args.warmup_s, "repeats": args.repeats, "concurrency": levels,
                  "video": settings.video.model_dump(), "stages": {**app.STAGES, **stages},
                  "deployments": {n: getattr(settings.deployments, n).serve_options() for n in ("api", "decode", "asr", "frames", "vlm")}}}
    if args.gpu:
        result["setup"].update(vlm_engine=args.vlm_engine, asr_engine=args.asr_engine, vlm_output_tokens=args.vlm_tokens,
                               asr_output_tokens_per_chunk=args.asr_tokens,
                               engine_options=settings.stage_config().profile.options_for("default").model_dump())
    os.environ.setdefault(METRICS_INTERVAL_ENV, "1000")  # read by the Ray started below and its workers
    try:
        with mock.patch.dict(app.STAGES, stages):  # GPU mode: the fixed-length subclasses of the same stages
            url = start(settings, api_key=KEY, num_cpus=args.num_cpus)
        wait_ready(url, args.ready_timeout_s)
        result["setup"]["app_ready_s"] = round(time.time() - t_start, 1)  # checkpoints, media and replicas
        print(f"[bench] app ready {result['setup']['app_ready_s']:.0f} s after start", flush=True)
        result["device"] = (f"{accelerator()} ({ray.cluster_resources().get('CPU', 0):g} logical CPUs, "
                            f"{ray.cluster_resources().get('GPU', 0):g} GPUs in Ray)")
        result["machine"] = machine(("transformers", "vllm", "ray", "fastapi", "av", "nvidia-ml-py"))
        result["load_average_before"] = os.getloadavg()[0]  # other tenants' load skews CPU numbers
        probe = BatchProbe(ray_metrics_urls(), settle_s=2 * max(int(os.environ[METRICS_INTERVAL_ENV]), 1000) / 1000)
        for endpoint in endpoints:
            rows = result["levels"].setdefault(endpoint, [])
            for c in levels:
                # a level runs its warm-up, repeats and two metric readings, plus the requests in flight at the end
                level_s = args.warmup_s + args.repeats * args.seconds + 2 * probe.settle_s
                if args.budget_s and time.time() - t_start + level_s > args.budget_s:
                    result["skipped"].append(f"{endpoint} at {c} clients")
                    continue
                with GpuSampler() as gpu:  # NVML on all processes: the replicas hold the memory
                    row = measure(url, endpoint, inputs[endpoint], c, args.seconds, args.warmup_s, args.repeats, probe)
                row["gpu_mem_peak_gib"] = gpu.figures()["gpu_mem_peak_gib"]
                print(json.dumps(row), flush=True)
                rows.append(row)
                save(result, args.out, args.markdown)
        result["load_average_after"] = os.getloadavg()[0]
    finally:
        result["total_s"] = round(time.time() - t_start, 1)
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    print(save(result, args.out, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
