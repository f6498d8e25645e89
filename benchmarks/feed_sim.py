"""Does the feeding side keep 1, 2, 4 or 8 engines full? The corpus job's own Ray Data graph on the CPU.

The graph is ``flows/job.py build_dataset`` for the vLLM backend, unchanged: listing blocks, identify,
decode, ASR actors paired with the engines in one placement-group bundle per GPU, frames, our prompt
step, Ray's ``ray.data.llm`` processor (multimodal preparation, chat template, tokenisation, the engine
stage with twice ``max_num_seqs`` rows in flight, detokenisation) and our answer step, with the
batch sizes, pools and resources the 4-GPU lease ran (benchmarks/gpu_throughput.py ``run_pipeline``).
Only the expensive work is replaced, through ``build_dataset(stand_ins=...)``, by stand-ins that hold
each row for the time the lease measured (``measured``) and write columns of the real shapes:

- identify, decode and frames hold a logical CPU for their per-file CPU seconds (they sleep: the
  seconds are Ray's accounting, not this machine's cores). ``--cpu-scale k`` declares the host's
  CPUs left to these tasks (those the actors hold stay as they are) divided by k and divides their
  holds by k, so a 2-core machine runs k times fewer sleeping worker processes for the same CPU
  capacity (files per second);
- the ASR actors hold their call for the measured seconds per 30-s chunk;
- the engines are benchmarks/engine_feed.py's slot model: ``max_num_seqs`` slots after a start-up,
  each request holding a slot for the measured per-request time (lognormal spread);
- our prompt step (frames to JPEG, transcript, schema) and answer step run for real; the steps of
  Ray's processor keep their pools and batches, with light UDFs inside: the multimodal preparation
  decodes the prompt's JPEG frames with PIL (vLLM's parser is not installed here), the chat template
  joins the messages' text, tokens are the prompt's bytes (the benchmark's tokenizer is byte-level).
  The real ones load the model's processor in every actor (~600 MB and minutes of CPU each on this
  shared 2-core machine: 24 of them at 8 engines would not fit).

Every time is multiplied by ``--time-scale`` when run and divided by it when reported. Each engine
logs its readiness and each request's slot entry and exit; the report gives per engine the slot
occupancy after start-up, the time to its first request, gaps > 2 s between requests, and the wall
against the ideal (every slot of every engine busy from readiness to the end), with Ray Data's
per-operator stats beside them.

    python -m benchmarks.feed_sim --engines 1,2,4,8 --repeats 2 --out benchmarks/results/feed_sim_p5.json
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_feed import engine_stand_in  # noqa: E402 - after the checkout is on the path

RESULTS = Path(__file__).resolve().parent / "results"
LEASE = "gpu_h200x4_lecture32h_{}gpu.json"
FILE_S = 900.0  # the lecture corpus: 15-minute talks, speech throughout
CHUNK_S = 30.0  # Whisper's window: one ASR chunk
SAMPLE_RATE = 16_000
GAP_S = 2.0  # a pause between an engine's requests, with a slot free, longer than this is a stall


@dataclass
class Measured:
    """Seconds of the lease (unscaled) that the stand-ins hold, and where each comes from."""

    identify_s: float
    decode_s: float
    frames_s: float
    asr_chunk_s: float
    vlm_request_s: float
    startup_s: float
    asr_startup_s: float
    frames_per_file: int
    sources: dict[str, str] = field(default_factory=dict)


def measured(results: Path = RESULTS) -> Measured:
    """The per-file, per-chunk and per-request times from the 4 × H200 lease and the decode measurement."""
    one = json.loads((results / LEASE.format(1)).read_text())
    four = json.loads((results / LEASE.format(4)).read_text())["contenders"]["corpusflow_vllm"]
    run = one["contenders"]["corpusflow_vllm"]
    files, hours = one["setup"]["files"], FILE_S / 3600
    decode = json.loads((results / "decode_cpu_lecture.json").read_text())["seek"]["keyframe"]["cpu_s_per_video_h"]
    # Requests entered the one engine at a steady pace once it ran full: slots × seconds per request.
    starts = np.asarray(run["vlm_row_starts_s"])
    slots = one["setup"]["vlm_engine_shape"]["vllm"]["max_num_seqs"]
    steady = slice(slots, len(starts) - slots // 2)
    pace = float(np.polyfit(np.arange(len(starts))[steady], starts[steady], 1)[0])
    return Measured(
        identify_s=one["plan"]["1"]["busy_s"]["identify"] / files,
        decode_s=decode["decode"] * hours, frames_s=decode["frames"] * hours,
        asr_chunk_s=run["asr_actor_s"] / (files * math.ceil(FILE_S / CHUNK_S)),
        vlm_request_s=slots * pace, startup_s=four["startup_s"], asr_startup_s=four["startup_s"] - 24.0,
        frames_per_file=round(run["frames"] / run["vlm_requests"]),
        sources={"identify_s": "corpusflow plan's identify busy s / files (the shipped profile: not measured)",
                 "decode_s, frames_s": "decode_cpu_lecture.json, keyframe: CPU-s per video-hour x 0.25 h",
                 "asr_chunk_s": f"{LEASE.format(1)}: asr_actor_s / (128 files x 30 chunks)",
                 "vlm_request_s": f"{LEASE.format(1)}: {slots} slots x the steady pace of vlm_row_starts_s "
                                  f"({pace:.3f} s per request)",
                 "startup_s": f"{LEASE.format(4)}: startup_s (warm compile cache)",
                 "asr_startup_s": "an assumption: the ASR engine ready 24 s before the VLM engines (at 4 GPUs the "
                                  "lease transcribed 72.7 of 96.8 actor-s before they were ready)",
                 "frames_per_file": f"{LEASE.format(1)}: frames shown / requests"})


# -- stand-ins (built once per worker process; sleep, then write columns of the real shapes) ------

def _seed(asset_id: str) -> int:
    return int(hashlib.sha1(asset_id.encode()).hexdigest()[:8], 16)


def stand_ins(m: Measured, time_scale: float, cpu_scale: float, bytes_scale: float, sigma: float,
              log_dir: str) -> dict[str, type]:
    """Stage name (or Ray processor stage name) → the class run in its place."""
    from corpusflow.actors.asr import Transcribe
    from corpusflow.actors.decode import DecodeMedia
    from corpusflow.actors.frames import SampleFrames
    from corpusflow.actors.identify import Identify
    from corpusflow.contracts.stage import RowOutcome, Stage

    cpu_hold = time_scale / cpu_scale

    class SimIdentify(Identify):
        def __init__(self, config: Any) -> None:
            Stage.__init__(self, config)

        def process_row(self, row: dict) -> dict:
            time.sleep(m.identify_s * cpu_hold)
            return {"asset_id": hashlib.sha256(str(row["uri"]).encode()).hexdigest(), "kind": "video", "format": "mp4"}

    class SimDecode(DecodeMedia):
        def __init__(self, config: Any) -> None:
            Stage.__init__(self, config)

        def process_row(self, row: dict) -> dict:
            time.sleep(m.decode_s * cpu_hold)
            starts = np.arange(0.0, FILE_S, CHUNK_S)
            return {"duration_s": FILE_S, "meta_json": json.dumps({"format": "mov,mp4", "video": "h264 1920x1080 25 fps",
                                                                   "audio": "aac 44100 Hz"}),
                    "iframe_ts": np.arange(0.0, FILE_S, 10.0),
                    "speech_pcm": np.zeros(int(FILE_S * SAMPLE_RATE * bytes_scale), np.int16),
                    "speech_start_s": starts, "speech_end_s": starts + CHUNK_S, "has_audio": True}

    class SimTranscribe(Transcribe):
        def __init__(self, config: Any) -> None:
            Stage.__init__(self, config)
            time.sleep(m.asr_startup_s * time_scale)

        def process(self, rows: list[dict]) -> list[RowOutcome]:
            chunks = [len(r["speech_start_s"]) for r in rows]
            time.sleep(m.asr_chunk_s * sum(chunks) * time_scale)
            out = []
            for r, n in zip(rows, chunks):
                seg = np.arange(0.0, FILE_S, 5.0)  # a segment every 5 s, 12 words each: a lecture's pace
                words = [" ".join(f"word{(i * 12 + j) % 997}" for j in range(12)) for i in range(len(seg))]
                out.append(RowOutcome({"language": "en", "seg_start": seg, "seg_end": seg + 5.0, "seg_text": words,
                                       "word_start": np.zeros(0), "word_end": np.zeros(0), "word_text": []},
                                      wall_s=m.asr_chunk_s * n))
            return out

    class SimFrames(SampleFrames):
        def __init__(self, config: Any) -> None:
            Stage.__init__(self, config)
            # 16:9 at frame_size wide, both sides scaled by √bytes_scale: the JPEG work of our prompt step and of
            # the multimodal preparation shrinks with it (real CPU work, which this shared machine inflates)
            size = max(16, int(config.video.frame_size * bytes_scale ** 0.5)) // 8 * 8
            self.shape = (m.frames_per_file, size * 9 // 16 // 8 * 8, size, 3)

        def process_row(self, row: dict) -> dict:
            time.sleep(m.frames_s * cpu_hold)
            rng = np.random.default_rng(_seed(str(row["uri"])))
            small = rng.integers(0, 256, (self.shape[0], self.shape[1] // 8, self.shape[2] // 8, 3), dtype=np.uint8)
            frames = small.repeat(8, axis=1).repeat(8, axis=2)  # slide-like blocks: JPEG work of a real picture
            ts = np.linspace(0.0, FILE_S, self.shape[0], endpoint=False)
            return {"frames": frames, "frame_ts": ts, "shot_ts": ts, "meta_json": row["meta_json"]}

    def hold(row: dict) -> float:
        rng = np.random.default_rng(_seed(str(row.get("asset_id", ""))))
        return float(rng.lognormal(np.log(m.vlm_request_s), sigma)) * time_scale

    from ray.llm._internal.batch.stages.base import StatefulStageUDF

    class Light(StatefulStageUDF):
        """A processor step's UDF that ignores the model arguments Ray builds its own with."""

        def __init__(self, data_column: str, expected_input_keys: list[str], **_: Any):
            super().__init__(data_column, expected_input_keys)

    class PrepareImages(Light):
        """Ray's multimodal preparation without vLLM: the JPEG frames decoded, text parts kept in place."""

        async def udf(self, rows: list[dict]):
            import base64
            import io

            from PIL import Image

            for row in rows:
                images, conversation = [], []
                for msg in row["messages"]:
                    parts = []
                    for part in msg["content"]:
                        if part.get("type") == "image_url":
                            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                            parts.append({"type": "image"})
                        else:
                            parts.append({"type": "text", "text": part["text"]})
                    conversation.append({"role": msg["role"], "content": parts})
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "messages": conversation,
                       "multimodal_data": {"image": images} if images else None, "multimodal_uuids": None}

    class ChatTemplate(Light):
        """The chat template without loading the model's processor: the messages' text in order, an image
        placeholder per frame (the real one renders the same text through Jinja)."""

        async def udf(self, rows: list[dict]):
            for row in rows:
                text = "".join(f"<|im_start|>{msg['role']}\n" + "".join(
                    part.get("text") or "<|vision_start|><|image_pad|><|vision_end|>" for part in msg["content"])
                    + "<|im_end|>\n" for msg in row["messages"])
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "prompt": text + "<|im_start|>assistant\n"}

    class Tokenize(Light):
        """Byte-level tokens, as the benchmark's tokenizer makes (one token per byte)."""

        async def udf(self, rows: list[dict]):
            for row in rows:
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN],
                       "tokenized_prompt": list(row["prompt"].encode())}

    class Detokenize(Light):
        async def udf(self, rows: list[dict]):
            for row in rows:
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN],
                       "generated_text": bytes(t % 128 for t in row["generated_tokens"]).decode()}

    return {"identify": SimIdentify, "decode": SimDecode, "asr": SimTranscribe, "frames": SimFrames,
            "PrepareMultimodalStage": PrepareImages, "ChatTemplateStage": ChatTemplate, "TokenizeStage": Tokenize,
            "DetokenizeStage": Detokenize,
            "vLLMEngineStage": engine_stand_in(log_dir, m.startup_s * time_scale, hold, output_tokens=256)}


# -- one run ---------------------------------------------------------------------------------------

def job_config(work: Path, engines: int, asr_rows: int):
    """The lease's job config for ``engines`` GPUs (benchmarks/gpu_throughput.py's, tiny tokenizer)."""
    from benchmarks.gpu_throughput import write_profile
    from corpusflow.contracts.config import JobConfig
    from corpusflow.contracts.registry import Resources

    options = {"max_num_batched_tokens": 16384, "renderer_num_workers": 8, "mm_processor_cache_gb": 0,
               "enable_prefix_caching": False}
    profile = write_profile(work, False, "tiny-random", "tiny-random", "vllm", 20.0, options, "vllm")
    config = JobConfig.build(corpus=str(work / "corpus"), out=str(work / "tables"), model_cache=str(work / "cache"),
                             models=profile, **{"vlm.retries": 0, "vlm.max_new_tokens": 256, "asr.align_words": False,
                                                "video.seek": "keyframe", "video.dedup_threshold": 0.02,
                                                "asr.batch_size": 128, "resources.vlm.num_gpus": 0.8,
                                                "resources.vlm.min_actors": engines,
                                                "resources.vlm.max_actors": engines})
    one = {"num_cpus": 1, "batch_size": 1}
    return config.model_copy(update={"resources": Resources.model_validate({
        "identify": one, "decode": one, "frames": one,
        "asr": {**one, "batch_size": asr_rows, "num_gpus": 0.2, "min_actors": engines, "max_actors": engines,
                "share_gpu_with": "vlm"},
        "vlm": config.resources.vlm.model_dump()})})


def start_ray(a: argparse.Namespace, work: Path, gpus: int) -> int:
    """One local Ray for every run of an invocation, declared like the GPU host: its ``gpus`` and its CPUs
    (those the actors hold, plus the rest divided by ``--cpu-scale``). Returns the logical CPUs."""
    import ray

    one = job_config(work, 1, a.asr_rows).resources
    # Actors keep their CPUs: per GPU an engine and an ASR actor, and one actor of each of Ray's four
    # processor CPU steps (their pools are sized like the engines'; one CPU each by Ray's default).
    actor_cpus = gpus * (one.vlm.num_cpus + one.asr.num_cpus + 4)
    cpus = int(actor_cpus + math.ceil((a.host_cpus - actor_cpus) / a.cpu_scale))
    ray.init(num_cpus=cpus, num_gpus=gpus, object_store_memory=int(a.object_store_gib * 2**30),
             include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray"),
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return cpus


def run_once(engines: int, files: int, m: Measured, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The job's graph with ``engines`` engine/ASR pairs (one placement-group bundle each) over ``files`` talks."""
    from corpusflow.contracts.storage import FileEntry
    from corpusflow.flows import gpu_bundles
    from corpusflow.flows.job import build_dataset

    log_dir = tempfile.mkdtemp(prefix="engines-", dir=work)
    config = job_config(work, engines, a.asr_rows)
    entries = [FileEntry(f"s3://sim/lecture/{i:04d}.mp4", 19_700_000, datetime(2026, 11, 27, tzinfo=timezone.utc))
               for i in range(files)]
    try:
        t0 = time.time()
        ds = build_dataset(config, entries, set(), "feed-sim", commit_rows=False,
                           stand_ins=stand_ins(m, a.time_scale, a.cpu_scale, a.bytes_scale, a.sigma, log_dir))
        arrivals: list[tuple[str, float, float]] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            now = time.time()
            arrivals += [(str(x), now, float(d)) for x, d in zip(batch["asset_id"], batch["vlm_device_s"])]
        t_end = time.time()
        stats = ds.stats()
    finally:
        gpu_bundles.release()
    out = summarise(log_dir, arrivals, t0, t_end, engines, a.time_scale)
    out.update(engines=engines, files=files, ray_data_stats=stats, operators=operator_waits(stats, a.time_scale))
    shutil.rmtree(log_dir, ignore_errors=True)
    return out


def _starved(a: float, b: float, reqs: list[tuple[float, float, float]], slots: int) -> float:
    """Seconds of the pause between entries at ``a`` and ``b`` during which a slot was free: a pause while
    every slot is busy is the engine working, not waiting to be fed."""
    busy = sum(1 for t_in, t_out, _ in reqs if t_in <= a < t_out)
    if busy < slots:
        return b - a
    freed = [t_out for _, t_out, _ in reqs if a < t_out < b]
    return b - min(freed) if freed else 0.0


def summarise(log_dir: str, arrivals: list[tuple[str, float, float]], t0: float, t_end: float, engines: int,
              scale: float) -> dict[str, Any]:
    """Per engine: readiness, first request, slot occupancy, gaps; the whole wall against the ideal (unscaled s)."""
    logs = []
    for path in sorted(glob.glob(os.path.join(log_dir, "engine-*.jsonl"))):
        records = [json.loads(line) for line in Path(path).read_text().splitlines()]
        head = next(r for r in records if "ready" in r)
        logs.append((head["ready"], head["slots"], sorted((r["in"], r["out"], r["hold"]) for r in records if "in" in r)))
    logs.sort()
    first_ready = logs[0][0]
    end = max(req[1] for _, _, reqs in logs for req in reqs)
    per_engine, slot_s, slots_all = [], 0.0, 0
    for ready, slots, reqs in logs:
        ins = [r[0] for r in reqs]
        busy = sum(r[1] - r[0] for r in reqs)
        span = max(r[1] for r in reqs) - ready
        gaps = [(round((a - ready) / scale, 1), round(g / scale, 1)) for a, b in zip([ready, *ins], ins)
                if (g := _starved(a, b, reqs, slots)) > GAP_S * scale]
        per_engine.append({"ready_s": round((ready - first_ready) / scale, 1), "requests": len(reqs),
                           "first_request_s": round((ins[0] - ready) / scale, 1),
                           "occupancy_pct": round(100 * busy / (slots * span), 1),
                           "gaps_over_2s": [{"at_s": at, "gap_s": g} for at, g in gaps]})
        slot_s += sum(r[2] for r in reqs)
        slots_all += slots
    ideal = slot_s / slots_all  # every slot of every engine busy from the first readiness
    wall = end - first_ready
    true_in = {}
    for _, _, reqs in logs:
        for r in reqs:
            true_in.setdefault(round(r[0], 6), r)
    # The lease's derived entries: a row's arrival at the driver less its engine time.
    derived = sorted((t - d - first_ready) / scale for _, t, d in arrivals if d == d)
    entries = sorted((r[0] - first_ready) / scale for _, _, reqs in logs for r in reqs)
    return {"startup_s": round((first_ready - t0) / scale, 1), "wall_after_startup_s": round(wall / scale, 1),
            "driver_wall_after_startup_s": round((t_end - first_ready) / scale, 1),
            "ideal_wall_s": round(ideal / scale, 1), "wall_vs_ideal": round(wall / ideal, 3),
            "occupancy_pct": round(100 * slot_s / (slots_all * wall), 1), "per_engine": per_engine,
            "request_entries_s": [round(x, 1) for x in entries],
            "derived_entries_s": [round(x, 1) for x in derived]}


def operator_waits(stats: str, scale: float) -> list[dict[str, Any]]:
    """Ray Data's per-operator lines that say where rows waited (wall and backpressure), unscaled where in s."""
    ops, current = [], None
    for line in stats.splitlines():
        s = line.strip()
        if s.startswith("Operator ") and ":" in s:
            current = {"operator": s.split(":", 1)[0].split(" ", 2)[-1], "lines": []}
            ops.append(current)
        elif current is not None and any(w in s.lower() for w in ("backpressure", "wall time", "blocked",
                                                                    "executed", "tasks")):
            current["lines"].append(s)
    return ops


def plot(result: dict, out: str) -> None:
    """Slot occupancy after start-up per engine count: each engine a dot, each run's mean a bar; wall vs ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["engines"] for r in result["runs"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, n in enumerate(counts):
        runs = [r for r in result["runs"] if r["engines"] == n]
        means = [r["occupancy_pct"] for r in runs]
        left.bar(i, sum(means) / len(means), color="tab:blue", alpha=0.5)
        dots = [e["occupancy_pct"] for r in runs for e in r["per_engine"]]
        left.plot([i + (k / max(len(dots) - 1, 1) - 0.5) * 0.5 for k in range(len(dots))], dots, "k.", ms=4)
        right.plot([i] * len(runs), [r["wall_vs_ideal"] for r in runs], "o", color="tab:red")
    labels = [str(n) for n in counts]
    left.set(xticks=range(len(counts)), xticklabels=labels, xlabel="engines (GPUs of one node)", ylim=(0, 105),
             ylabel="slot occupancy after start-up, %", title="bar: all slots of a run; dots: each engine")
    right.set(xticks=range(len(counts)), xticklabels=labels, xlabel="engines (GPUs of one node)",
              ylabel="wall after start-up / ideal", title="1.0: every slot busy from readiness to the end")
    right.set_ylim(bottom=1.0)
    fig.suptitle(f"CPU simulation of the job's Ray Data graph, {result['runs'][0]['files']} x 15-min talks")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="1,2,4,8", help="engine counts (GPUs of one node) to run")
    p.add_argument("--files", type=int, default=128, help="15-minute talks (128: the lease's 32-h corpus)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--host-cpus", type=int, default=192, help="the GPU host's CPUs (a p5: 192 vCPUs)")
    p.add_argument("--cpu-scale", type=float, default=4.0, help="CPU tasks' logical CPUs and holds divided by this")
    p.add_argument("--time-scale", type=float, default=1.0, help="every held second multiplied by this when run")
    p.add_argument("--bytes-scale", type=float, default=1 / 16, help="speech samples and frame pixels carried, as a "
                   "share of the real ones")
    p.add_argument("--object-store-gib", type=float, default=3.0)
    p.add_argument("--asr-rows", type=int, default=4, help="files per ASR call, as the lease ran")
    p.add_argument("--sigma", type=float, default=0.25, help="lognormal spread of the per-request engine time")
    p.add_argument("--work", default="/tmp/feed_sim")
    p.add_argument("--out", help="write every run and the machine's load as JSON here")
    p.add_argument("--plot", help="write the occupancy plot of --out's runs here (PNG)")
    a = p.parse_args(argv)
    if a.plot and a.out and Path(a.out).exists() and a.repeats == 0:  # plot only
        plot(json.loads(Path(a.out).read_text()), a.plot)
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    m = measured()
    print(json.dumps(asdict(m), indent=1), flush=True)
    runs = []
    counts = [int(x) for x in a.engines.split(",")]
    import ray

    cpus = start_ray(a, work, max(counts))
    for rep in range(a.repeats):
        for n in counts:
            load = [round(x, 2) for x in os.getloadavg()]
            r = run_once(n, a.files, m, a, work)
            r.update(repeat=rep, logical_cpus=cpus, logical_gpus=max(counts), load_before=load,
                     load_after=[round(x, 2) for x in os.getloadavg()],
                     date_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"))
            runs.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("ray_data_stats", "request_entries_s",
                                                                     "derived_entries_s", "operators")}), flush=True)
            if a.out:
                Path(a.out).write_text(json.dumps({"measured": asdict(m), "args": vars(a), "runs": runs}, indent=1))
    ray.shutdown()
    if a.plot and runs:
        plot({"runs": runs}, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
