"""Side-by-side GPU throughput: a naive per-video loop, Ray's ray.data.llm vLLM processor, corpusflow's pipeline.

One script, one corpus, one GPU or several (``--gpus N``: one vLLM engine per GPU; run on the lent H200s; see
docs/benchmarks.md for the commands):

1. generates N long videos with speech (benchmarks/corpus.py: ``--corpus tiny``, 64×64 at 1 fps, or
   ``--corpus lecture``, 1080p/720p H.264 talks with slides and a moving speaker; no two videos share
   a frame or a second of audio) and measures decode CPU-seconds per video-hour, exact seeks against
   nearest-keyframe sampling (``--decode-modes``);
2. writes real-size checkpoints with random weights (Qwen2.5-VL-7B-Instruct's and Whisper
   large-v3's architectures) so every contender goes through its real loading code;
3. measures a bf16 matmul peak on this GPU (the MFU denominator);
4. runs the contenders, each doing identical work: every VLM answer is exactly --vlm-tokens tokens
   and every 30-s ASR chunk exactly --asr-tokens tokens (EOS ignored, no schema; random weights
   would otherwise stop at arbitrary points):
   - naive_transformers: for each video, decode → transcribe → Describe, one video at a time
     (the paper's loop), transformers engine, batch of one;
   - corpusflow_transformers / corpusflow_vllm: corpusflow's stages on Ray Data (identify and
     decode as CPU tasks, ASR actor and VLM actor sharing the GPU), with either VLM engine; the
     vllm one is flows/vllm_stage.py (Ray's processor wrapped with our prompt and validation);
   - ray_data_llm: Ray's vLLM processor as documented, with corpusflow_vllm's engine arguments
     (``--rdl-whole-gpu``: one engine alone on the GPU, KV cache profiled), fed the
     same prompts as corpusflow_vllm (frames decoded and transcripts from corpusflow's ASR);
     VLM work only, so compare its prompt tokens/s and frames/s, not its video-hours.
Engine start-up (weights load, compile, CUDA graphs) is reported apart and left out of GPU time:
it is paid once per actor per job. For the pipelines, ASR work done while the VLM engine was still
starting is added back to GPU time, so overlapping with start-up earns nothing.

``--copies K`` makes a corpus of many hours from few encodes (each video plus K-1 copies with the same
picture and other sound); ``--plan-gpus`` puts ``corpusflow plan``'s prediction for this machine, from the
corpusflow_vllm run's rates, beside the measurement (benchmarks/gpu_plan.py).
Results go to ``--out``/gpu_throughput.json after every contender; a rerun skips contenders already
in that file (a lease's commands are limited to 10 minutes). ``--cpu-smoke`` runs the same code on
CPU with the tiny-random models, minutes of video, and skips vLLM when it is not installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.corpus import make_corpus, speech_clip, with_copies  # noqa: E402 - after the checkout is on the path
from benchmarks.flops import decode_flops, floor, prefill_flops, vision_flops, whisper_flops  # noqa: E402

CONTENDERS = ("corpusflow_vllm", "ray_data_llm", "naive_transformers", "corpusflow_transformers")


# -- models ----------------------------------------------------------------------------------------

QWEN25_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                         max_position_embeddings=128000, torch_dtype="bfloat16", max_window_layers=28)
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584)


def make_qwen7b(dest: Path) -> str:
    """Qwen2.5-VL-7B-Instruct's architecture with random bf16 weights, our byte-level tokenizer, 448² frames."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from corpusflow.actors.models.tiny_qwen import _write_tokenizer, config_dict

    if (dest / ".complete").exists():
        return str(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(dest)
    cfg = config_dict(ids)
    cfg.update(QWEN25_VL_7B_TEXT)
    cfg["rope_scaling"]["mrope_section"] = [16, 24, 24]
    cfg["vision_config"].update(QWEN25_VL_7B_VISION)
    (dest / "config.json").write_text(json.dumps(cfg))
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "do_sample": False}))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(dest), dtype=torch.bfloat16)
    model.save_pretrained(dest)
    del model
    torch.cuda.empty_cache()
    (dest / ".complete").touch()
    return str(dest)


WHISPER_DECODER_LAYERS = {"large-v3": 32, "large-v3-turbo": 4}  # both: 1280 wide, 32 encoder layers, 20 heads, 128 mels


def make_whisper(dest: Path, name: str) -> str:
    """Whisper large-v3's or large-v3-turbo's architecture with random weights (transformers layout)."""
    import torch

    from corpusflow.actors.models.tiny_whisper import build_whisper_hf

    if not (dest / ".complete").exists():
        with torch.device("cuda"):
            build_whisper_hf(dest, d_model=1280, layers=32, heads=20, decoder_layers=WHISPER_DECODER_LAYERS[name])
        torch.cuda.empty_cache()
        (dest / ".complete").touch()
    return str(dest)


def write_profile(work: Path, smoke: bool, vlm: str, asr: str, engine: str, kv_cache_gib: float = 32.0,
                  vllm_options: dict | None = None, asr_engine: str = "transformers", asr_tokens: int = 96) -> str:
    """A models profile file: our engines with this benchmark's engine shape for the H200.

    vLLM gets 16 sequences at once; the transformers engine one (padding a batch of 50k-token
    multimodal prompts costs more than it gains). vLLM shares the GPU with live ASR actors, so its KV
    cache is sized explicitly (``kv_cache_gib``; 8 requests of 57k tokens need ~27 GiB) instead of
    profiled, and its ``gpu_memory_utilization`` is only the start-up check that that much is free.
    """
    import yaml

    seqs = 16 if engine == "vllm" else 1
    if smoke:
        opts = {"default": {"dtype": "float32", "max_model_len": 4096, "max_frames": 8, "max_num_seqs": seqs}}
    else:
        shape = {"dtype": "bfloat16", "max_model_len": 65536, "max_frames": 128, "max_num_seqs": seqs,
                 "gpu_memory_utilization": 0.45, "attn_implementation": "sdpa"}
        if engine == "vllm":
            shape.update(kv_cache_memory_bytes=int(kv_cache_gib * 2**30), **(vllm_options or {}))
        opts = {"H200": shape, "H100": shape, "default": shape}
    profile = {"name": f"bench-{engine}", "asr": asr, "align": None, "vlm": vlm, "asr_engine": asr_engine,
               "vlm_engine": engine, "engine_options": opts}
    if engine == "vllm":  # the product path gets the pipelines' fixed lengths through the profile
        profile["fixed_output"] = {"asr_tokens_per_chunk": asr_tokens}
    path = work / f"profile_{engine}_{asr_engine}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


# -- measuring -------------------------------------------------------------------------------------

def visible_gpus(n: int) -> list[int]:
    """NVML indices of the first ``n`` GPUs this process may use (NVML ignores CUDA_VISIBLE_DEVICES)."""
    listed = [int(g) for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip().isdigit()]
    return (listed or list(range(n)))[:n]


class GpuSampler:
    """GPU utilisation (NVML's busy share: time a kernel ran, mean over the run's GPUs) and the most memory in
    use on one of them (all processes), sampled every 0.2 s with the time of each sample."""

    def __init__(self, gpus: int = 1) -> None:
        self.gpus = gpus
        self.t: list[float] = []
        self.util: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in visible_gpus(self.gpus)]
        except Exception:  # noqa: BLE001 - no GPU (CPU smoke): nothing to sample
            return self

        def loop() -> None:
            while not self._stop.wait(0.2):
                self.util.append(float(np.mean([pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles])))
                self.mem.append(max(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / 2**30)
                self.t.append(time.time())
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def figures(self, t0: float | None = None, ready: float | None = None) -> dict[str, Any]:
        """Mean busy share over the run and after ``ready`` (start-up done), the memory peak and, from
        ``t0``, one row per second: [seconds since t0, busy %, GiB in use]."""
        u = self.util
        after = [x for t, x in zip(self.t, u) if ready is not None and t >= ready]
        out: dict[str, Any] = {"gpu_util_mean_pct": round(float(np.mean(u)), 1) if u else None,
                               "gpu_busy_after_startup_pct": round(float(np.mean(after)), 1) if after else None,
                               "gpu_mem_peak_gib": round(max(self.mem), 1) if self.mem else None}
        if t0 is not None and self.t:
            per_s: dict[int, list[tuple[float, float]]] = {}
            for t, x, m in zip(self.t, u, self.mem):
                per_s.setdefault(int(t - t0), []).append((x, m))
            out["gpu_per_s"] = [[s, round(float(np.mean([x for x, _ in v])), 1), round(max(m for _, m in v), 1)]
                                for s, v in sorted(per_s.items())]
        return out


def release_gpu(timeout_s: float = 90.0) -> None:
    """Free this process's cached GPU memory and wait until finished actors have left the GPU."""
    import gc

    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return
    torch.cuda.empty_cache()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        free, total = torch.cuda.mem_get_info()
        if free > 0.9 * total:
            return
        time.sleep(2)
    print(f"[bench] warning: only {free / 2**30:.0f} GiB of the GPU is free", flush=True)


def matmul_peak_tflops() -> float | None:
    """Median bf16 8192³ matmul rate on random data (CUDA events, 3 warm-ups, 20 timed)."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(23):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return round(2 * n ** 3 / float(np.median(times)) / 1e12, 1)


def ctranslate2_cuda() -> str:
    """Whether CTranslate2 (faster-whisper, whisperX) can run a model on this GPU, in words."""
    try:
        import tempfile

        import ctranslate2

        from corpusflow.actors.models.tiny_whisper import build_whisper_ct2

        if ctranslate2.get_cuda_device_count() < 1:
            return "ctranslate2 sees no CUDA device"
        with tempfile.TemporaryDirectory() as d:
            build_whisper_ct2(Path(d))
            model = ctranslate2.models.Whisper(d, device="cuda", compute_type="float16")
            feats = ctranslate2.StorageView.from_array(np.zeros((1, 128, 3000), np.float32))
            model.encode(feats)
        return f"ctranslate2 {ctranslate2.__version__} ran a Whisper encoder on CUDA"
    except Exception as e:  # noqa: BLE001 - the answer is the message
        return f"ctranslate2 cannot run on CUDA here: {type(e).__name__}: {e}"


class Work:
    """What one contender did: media seconds, prompt tokens, frames, ASR chunks, FLOPs, and its GPU time."""

    def __init__(self, model_dir: str, asr_dir: str | None = None, vlm_tokens: int = 0, asr_tokens: int = 0) -> None:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.text, self.vision = {**cfg, **cfg.get("text_config", {})}, cfg["vision_config"]
        self.whisper = json.loads((Path(asr_dir) / "config.json").read_text()) if asr_dir else None
        self.vlm_tokens, self.asr_tokens = vlm_tokens, asr_tokens
        self.video_s = self.audio_s = 0.0
        self.prompt_tokens = self.frames = self.vlm_requests = self.asr_chunks = 0
        self.frames_dropped = self.tokens_saved = 0  # near-duplicate frames decode left out, and their tokens
        self.flops = 0.0  # the VLM's prefill, vision encoder included (prefill MFU)
        self.vlm_decode_flops = 0.0
        self.errors: set[str] = set()

    def add_video(self, row: dict) -> tuple[int, int]:
        """Count a decoded row's media, its ASR chunks and the frames decode dropped; returns its frames' (height, width)."""
        meta = json.loads(str(row["meta_json"]))
        width, height = meta["frame_size"]
        self.video_s += float(row["duration_s"])
        self.audio_s += float(row["duration_s"]) if bool(row["has_audio"]) else 0.0
        if "speech_start_s" in row and row.get("language") is not None:  # transcribed: one Whisper window per chunk
            self.asr_chunks += len(np.asarray(row["speech_start_s"]))
        dropped = int(meta.get("duplicate_frames_dropped", 0))
        self.frames_dropped += dropped
        self.tokens_saved += dropped * ((height // 28) * (width // 28) + 2)
        return height, width

    def add_request(self, frames: int, frame_hw: tuple[int, int], text_tokens: int) -> None:
        patches = (frame_hw[0] // 14) * (frame_hw[1] // 14)
        vision_tokens = frames * (patches // 4 + 2)
        tokens = vision_tokens + text_tokens
        self.prompt_tokens += tokens
        self.frames += frames
        self.vlm_requests += 1
        self.flops += vision_flops(self.vision, frames, *frame_hw) + prefill_flops(self.text, tokens)
        self.vlm_decode_flops += decode_flops(self.text, tokens, self.vlm_tokens)

    def flop_account(self) -> dict[str, float]:
        """PFLOP of each part of the work: the floor's numerator."""
        asr = whisper_flops(self.whisper, self.asr_chunks, self.asr_tokens) if self.whisper and self.asr_chunks else {}
        parts = {"vlm_prefill": self.flops, "vlm_decode": self.vlm_decode_flops,
                 "asr_encoder": asr.get("encoder", 0.0), "asr_decoder": asr.get("decoder", 0.0)}
        return {k: round(v / 1e15, 3) for k, v in {**parts, "total": sum(parts.values())}.items()}


def figures(work: Work, gpu_s: float, startup_s: float, wall_s: float, asr_s: float, peak: float | None,
            sampler: dict, extra: dict | None = None) -> dict:
    hours = work.video_s / 3600
    out = {
        "videos_h": round(hours, 3), "wall_s": round(wall_s, 1), "startup_s": round(startup_s, 1),
        "gpu_s": round(gpu_s, 1),
        "video_h_per_gpu_h": round(hours / (gpu_s / 3600), 2) if gpu_s > 0 else None,
        "video_h_per_gpu_h_with_startup": round(hours / ((gpu_s + startup_s) / 3600), 2) if gpu_s > 0 else None,
        "vlm_requests": work.vlm_requests, "prompt_tokens": work.prompt_tokens, "frames": work.frames,
        "frames_dropped_as_duplicates": work.frames_dropped, "visual_tokens_saved": work.tokens_saved,
        "prompt_tokens_per_s": round(work.prompt_tokens / gpu_s, 1) if gpu_s > 0 else None,
        "frames_per_s": round(work.frames / gpu_s, 2) if gpu_s > 0 else None,
        "asr_realtime_factor": round(work.audio_s / asr_s, 1) if asr_s > 0 else None,
        "prefill_pflop": round(work.flops / 1e15, 2),
        "prefill_mfu_pct": round(100 * work.flops / gpu_s / (peak * 1e12), 1) if peak and gpu_s > 0 else None,
        "asr_chunks": work.asr_chunks, "pflop": work.flop_account(),
        # The compute floor: every FLOP of both models at the measured matmul peak, against the GPU-s used
        **floor(work.flop_account()["total"] * 1e15, peak, gpu_s),
        **sampler,
    }
    out.update(extra or {})
    return out


# -- decoding ------------------------------------------------------------------------------------

def pipeline_row(config, uri: str) -> dict:
    """One file through identify, decode and frames in this process, as the pipelines' CPU stages run them."""
    from corpusflow.actors.decode import DecodeMedia
    from corpusflow.actors.frames import SampleFrames
    from corpusflow.actors.identify import Identify

    batch = {"uri": np.asarray([uri], dtype=object), "bytes": np.asarray([os.path.getsize(uri)]),
             "error_stage": np.asarray([""], dtype=object), "error": np.asarray([""], dtype=object)}
    return {k: v[0] for k, v in SampleFrames(config)(DecodeMedia(config)(Identify(config)(batch))).items()}


def _decode_one(args: tuple[Any, str]) -> dict:
    """Identify + decode + frames of one file in this process; its CPU time counts every thread (PyAV decodes on several)."""
    config, uri = args
    cpu, wall = time.process_time(), time.time()
    row = pipeline_row(config, uri)
    meta = json.loads(str(row["meta_json"]))
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.time() - wall, "video_s": float(row["duration_s"]),
            "frames": len(row["frame_ts"]), "dropped": int(meta.get("duplicate_frames_dropped", 0)),
            "frame_ts": np.asarray(row["frame_ts"]).tolist()[:4], "error": str(row["error"])}


def decode_cost(config, corpus: list[str], modes: list[str]) -> dict:
    """Decode CPU-seconds per video-hour for each sampling mode (all files in parallel, one process each)."""
    out = {}
    for mode in modes:
        cfg = config.model_copy(update={"video": config.video.model_copy(update={"seek": mode})})
        with ProcessPoolExecutor(max_workers=min(len(corpus), os.cpu_count() or 1)) as pool:
            t0 = time.time()
            rows = list(pool.map(_decode_one, [(cfg, u) for u in corpus]))
            wall = time.time() - t0
        hours = sum(r["video_s"] for r in rows) / 3600
        cpu = sum(r["cpu_s"] for r in rows)
        out[mode] = {"cpu_s": round(cpu, 1), "cpu_s_per_video_h": round(cpu / hours, 1), "wall_s": round(wall, 1),
                     "video_h": round(hours, 3), "frames_kept": sum(r["frames"] for r in rows),
                     "frames_dropped_as_duplicates": sum(r["dropped"] for r in rows),
                     "first_frame_ts": rows[0]["frame_ts"], "errors": sorted({r["error"] for r in rows if r["error"]})}
        print(f"[bench] decode {mode}: {out[mode]['cpu_s_per_video_h']} CPU-s per video-hour, "
              f"{out[mode]['frames_kept']} frames kept, {out[mode]['frames_dropped_as_duplicates']} dropped", flush=True)
    return out


# -- prompts (token accounting) ------------------------------------------------------------------

def describe_text_tokens(row: dict, config) -> int:
    """Text tokens of Describe's single-context prompt for this row (the byte tokenizer: one per byte)."""
    from corpusflow.actors.prompts.video import DESCRIBE_TASK, SYSTEM, Transcript, VideoMeta, transcript_text, user_text

    meta = VideoMeta(uri=str(row["uri"]), duration_s=float(row["duration_s"]), language=str(row["language"]),
                     meta_json=str(row["meta_json"]), shot_ts=np.asarray(row["shot_ts"], dtype=np.float64))
    tr = Transcript(np.asarray(row["seg_start"]), np.asarray(row["seg_end"]), tuple(str(t) for t in row["seg_text"]))
    text = user_text(meta, transcript_text(tr, config.vlm.max_transcript_chars), DESCRIBE_TASK)
    labels = int(row["frames_used"]) * len("[t=1234.5s]")
    return len(SYSTEM.encode()) + len(text.encode()) + labels + 32


def request_text_tokens(messages: list[dict]) -> tuple[int, int]:
    """(text tokens, images) of chat messages built by flows/vllm_stage.build_request."""
    text = images = 0
    for m in messages:
        for part in m["content"]:
            if part.get("type") == "text":
                text += len(str(part["text"]).encode())
            else:
                images += 1
    return text + 32, images


# -- contenders ------------------------------------------------------------------------------------

def fixed_transformers_engine(config, tokens: int):
    """Our transformers VLM engine whose model always generates exactly ``tokens`` tokens, unconstrained."""
    from corpusflow.actors.engines.vlm_transformers import TransformersEngine

    engine = TransformersEngine(config.profile, config.model_cache)
    inner = engine._model.generate

    def generate(**kw: Any):
        kw.pop("logits_processor", None)
        kw.update(max_new_tokens=tokens, min_new_tokens=tokens)
        return inner(**kw)
    engine._model.generate = generate
    return engine


def bench_stages(config, vlm_tokens: int, asr_tokens: int):
    """Transcribe and Describe subclasses with fixed-length engines that stamp when they are ready and done."""
    from corpusflow.actors.asr import Transcribe
    from corpusflow.actors.vlm import Describe

    class FixedTranscribe(Transcribe):
        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            assert hasattr(self._engine, "fixed_output_tokens"), "the benchmark's ASR engines: transformers, vllm"
            self._engine.fixed_output_tokens = asr_tokens
            self.ready = time.time()
            import ray

            self.gpu = ",".join(str(g) for g in ray.get_gpu_ids()) or "none"  # where Ray's fractional share landed

        def __call__(self, batch):
            t0 = time.time()
            out = super().__call__(batch)
            out["bench_asr_ready"] = np.full(len(out["error"]), self.ready)
            out["bench_asr_span"] = np.asarray([[t0, time.time()]] * len(out["error"]), dtype=np.float64)
            out["bench_asr_gpu"] = np.full(len(out["error"]), self.gpu, dtype=object)
            return out

    class FixedDescribe(Describe):
        def __init__(self, cfg) -> None:
            super().__init__(cfg, engine=fixed_transformers_engine(cfg, vlm_tokens))
            self.ready = time.time()

        def __call__(self, batch):
            out = super().__call__(batch)
            out["bench_vlm_ready"] = np.full(len(out["error"]), self.ready)
            return out

    return FixedTranscribe, FixedDescribe


def run_naive(config, corpus: list[str], work: Work, peak: float | None, vlm_tokens: int, asr_tokens: int) -> dict:
    """The paper's loop: one video at a time, decode → speech → transcribe → describe, GPU held throughout."""
    from corpusflow.actors.decode import DecodeMedia
    from corpusflow.actors.frames import SampleFrames
    from corpusflow.actors.identify import Identify

    FixedTranscribe, FixedDescribe = bench_stages(config, vlm_tokens, asr_tokens)
    with GpuSampler() as gpu:
        t0 = time.time()
        identify, decode, asr, vlm = Identify(config), DecodeMedia(config), FixedTranscribe(config), FixedDescribe(config)
        frames = SampleFrames(config)
        t_ready = time.time()
        asr_s = 0.0
        for uri in corpus:
            batch = {"uri": np.asarray([uri], dtype=object), "bytes": np.asarray([os.path.getsize(uri)]),
                     "error_stage": np.asarray([""], dtype=object), "error": np.asarray([""], dtype=object)}
            batch = vlm(frames(asr(decode(identify(batch)))))
            row = {k: v[0] for k, v in batch.items()}
            _count_row(row, work, config)
            asr_s += float(row["asr_wall_s"])
        t_end = time.time()
    return figures(work, t_end - t_ready, t_ready - t0, t_end - t0, asr_s, peak, gpu.figures(t0, t_ready),
                   {"errors": sorted(work.errors)})


def _count_row(row: dict, work: Work, config) -> None:
    frames_hw = work.add_video(row)
    if row.get("vlm_engine"):
        work.add_request(int(row["frames_used"]), frames_hw, describe_text_tokens(row, config))
    _note_error(row, work)


def _note_error(row: dict, work: Work) -> None:
    """Row errors, deduplicated: with fixed-length decoding the VLM's text is not JSON, which is expected."""
    if row["error"]:
        work.errors.add(f"{row['error_stage']}: {row['error'][:160]}")


def _pipeline_source(corpus: list[str]):
    import pyarrow as pa
    import ray

    from corpusflow.flows.job import _start_columns

    table = pa.table({"uri": corpus, "bytes": pa.array([os.path.getsize(u) for u in corpus], pa.int64())})
    ds = ray.data.from_arrow(table).repartition(len(corpus))
    return ds.map_batches(_start_columns, batch_format="numpy", batch_size=None, num_cpus=0.1)


def run_pipeline(config, corpus: list[str], work: Work, peak: float | None, vlm_tokens: int, asr_tokens: int,
                 engine: str, gpu_share_asr: float, asr_actors: int, keep_rows: Path | None = None,
                 asr_rows: int = 1, n_gpus: int = 1, pairs: bool = True) -> dict:
    """corpusflow's stages on Ray Data: identify and decode as CPU tasks, ASR and VLM actors sharing the GPUs.

    On ``n_gpus`` GPUs the pipeline runs one VLM engine per GPU (``resources.vlm`` min = max actors) and,
    with ``pairs``, one ASR actor beside each (``resources.asr.share_gpu_with: vlm``: a placement-group
    bundle per GPU, flows/gpu_bundles.py); without, ``asr_actors`` ASR actors split the ASR share and
    Ray packs them where they fit. Where they landed is recorded. ``n_gpus`` 0: CPU, no GPU shares
    (the CPU smoke runs with Ray's logical GPUs instead, to exercise the placement).
    GPU time is ``n_gpus`` × the wall time after start-up, plus ASR done before it on each GPU.
    """
    from corpusflow.contracts.registry import Resources, spec
    from corpusflow.flows import gpu_bundles
    from corpusflow.flows.adapter import add_stage

    FixedTranscribe, FixedDescribe = bench_stages(config, vlm_tokens, asr_tokens)
    share = gpu_share_asr if n_gpus else 0.0
    pairs = pairs and n_gpus > 0
    one = {"num_cpus": 1, "batch_size": 1}
    asr = ({"num_gpus": share, "min_actors": n_gpus, "max_actors": n_gpus, "share_gpu_with": "vlm"} if pairs else
           {"num_gpus": share / asr_actors, "min_actors": asr_actors, "max_actors": asr_actors})
    vlm = {**one, "num_gpus": 1 - share if n_gpus else 0, "min_actors": max(n_gpus, 1), "max_actors": max(n_gpus, 1)}
    config = config.model_copy(update={"resources": Resources.model_validate({
        "identify": one, "decode": one, "frames": one, "asr": {**one, "batch_size": asr_rows, **asr},
        # The vLLM processor keeps the caller's vlm reservation (a share of the GPU bundle it asks for).
        "vlm": config.resources.vlm.model_dump() if engine == "vllm" else vlm})})
    if keep_rows is not None:  # the product path (benchmarks/product_run.py) runs `corpusflow run` with this config
        import yaml

        keep_rows.with_name("corpusflow_vllm_job.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    places = gpu_bundles.remote_args_fns(config)
    with GpuSampler(max(n_gpus, 1)) as gpu:
        t0 = time.time()
        ds = _pipeline_source(corpus)
        for name in ("identify", "decode"):
            ds = add_stage(ds, spec(name), config)
        ds = add_stage(ds, spec("asr"), config, cls=FixedTranscribe, place=places.get("asr"))
        ds = add_stage(ds, spec("frames"), config).map_batches(_Stamp("bench_frames_done"), batch_format="numpy",
                                                               batch_size=None, num_cpus=0.1)
        if engine == "vllm":
            from corpusflow.flows.vllm_stage import describe_with_vllm

            ds = describe_with_vllm(ds, config, fixed_output_tokens=True, place=places.get("vlm"))
        else:
            ds = add_stage(ds, spec("vlm"), config, cls=FixedDescribe, place=places.get("vlm"))
        ds = ds.map_batches(_Stamp("bench_vlm_done"), batch_format="numpy", batch_size=None, num_cpus=0.1)
        rows = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            now = time.time()
            for i in range(len(batch["error"])):
                rows.append({**{k: v[i] for k, v in batch.items()}, "bench_end": now})
        t_end = time.time()
    gpu_bundles.release()
    asr_ready = max(float(r.get("bench_asr_ready", t0)) for r in rows)
    if engine == "vllm":  # a request entered the engine only once it was ready (its answer's time less its engine time)
        starts = sorted(float(r["bench_vlm_done"]) - float(r["vlm_device_s"]) for r in rows)
        vlm_ready = starts[0]
    else:
        starts = sorted(float(r.get("bench_vlm_ready", t0)) for r in rows)
        vlm_ready = starts[-1]
    ready = max(asr_ready, vlm_ready)
    by_gpu: dict[str, list[tuple[float, float]]] = {}  # concurrent ASR calls on one GPU share its time
    for r in rows:
        if "bench_asr_span" in r:
            a, b = (float(x) for x in r["bench_asr_span"])
            by_gpu.setdefault(str(r["bench_asr_gpu"]), []).append((a, b))
    asr_before_ready = sum(union_s([(a, min(b, ready)) for a, b in spans]) for spans in by_gpu.values())
    asr_s = union_s([s for spans in by_gpu.values() for s in spans])
    # Each batch call's span once (a call's rows share it): actor-seconds of ASR, for the plan's per-actor rate.
    asr_actor_s = sum(b - a for spans in by_gpu.values() for a, b in set(spans))
    for r in rows:
        if engine == "vllm":
            _count_vllm_row(r, work, config)
        else:
            _count_row(r, work, config)
    if keep_rows is not None:
        _save_transcripts(rows, keep_rows)
    gpu_s = max(n_gpus, 1) * (t_end - ready) + asr_before_ready
    return figures(work, gpu_s, ready - t0, t_end - t0, asr_s, peak, gpu.figures(t0, ready),
                   {"asr_s_before_vlm_ready": round(asr_before_ready, 1), "errors": sorted(work.errors),
                    "gpus": n_gpus, "after_startup_s": round(t_end - ready, 1), "asr_actor_s": round(asr_actor_s, 1),
                    "asr_actors": n_gpus if pairs else asr_actors, "asr_pairs_per_gpu": pairs,
                    "asr_rows_by_gpu": {g: len(v) for g, v in sorted(by_gpu.items())},
                    # When each request entered an engine, from the first engine's readiness (the engines'
                    # readiness spread shows in the first rows: each takes its in-flight batches at once)
                    "vlm_row_starts_s": [round(x - ready, 1) for x in starts],
                    # Each row's way through, from the first engine's readiness, in the order rows entered the
                    # engine: [ASR call ended, frames stage ended, entered the engine, answered, reached this
                    # driver]. A late entry whose frames were long done waited inside Ray's processor; one whose
                    # frames came late waited upstream.
                    "row_timeline_s": _timeline(rows, ready, engine),
                    # Ray Data's own account per operator (tasks, wall and CPU time, blocked and backpressured
                    # time): where rows waited, which the derived starts above cannot tell
                    "ray_data_stats": ds.stats()})


class _Stamp:
    """A map_batches step that stamps each row with the time it passed (the benchmark's row timeline)."""

    def __init__(self, column: str) -> None:
        self.column = column

    def __call__(self, batch: dict) -> dict:
        n = len(next(iter(batch.values()))) if batch else 0
        return {**batch, self.column: np.full(n, time.time())}


def _timeline(rows: list[dict], ready: float, engine: str) -> list[list[float | None]]:
    def at(r: dict) -> list[float | None]:
        asr_end = float(r["bench_asr_span"][1]) if "bench_asr_span" in r else None
        entered = float(r["bench_vlm_done"]) - float(r.get("vlm_device_s") or 0.0) if engine == "vllm" else None
        return [None if t is None else round(t - ready, 2) for t in
                (asr_end, float(r["bench_frames_done"]), entered, float(r["bench_vlm_done"]), float(r["bench_end"]))]
    return sorted((at(r) for r in rows), key=lambda v: (v[2] if v[2] is not None else v[3]))


def union_s(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by any of the spans: concurrent ASR actors share one GPU's time, not add to it."""
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > max(a, end):
            total += b - max(a, end)
            end = b
    return total


def _count_vllm_row(row: dict, work: Work, config) -> None:
    """Token accounting for a row of flows/vllm_stage: rebuild its prompt text (cheap) and count bytes."""
    frames_hw = work.add_video(row)
    if row.get("vlm_engine"):
        text_tokens = _vllm_text_tokens(row, config, frames_hw)
        work.add_request(int(row["frames_used"]), frames_hw, text_tokens)
    _note_error(row, work)


def _vllm_text_tokens(row: dict, config, frames_hw: tuple[int, int]) -> int:
    from corpusflow.flows.vllm_stage import build_request

    n = int(row["frames_used"])
    fake = {**row, "frames": np.zeros((n, *frames_hw, 3), np.uint8),
            "frame_ts": np.arange(n, dtype=np.float64) * (1 / config.video.fps)}
    return request_text_tokens(build_request(fake, config)["messages"])[0]


def _save_transcripts(rows: list[dict], path: Path) -> None:
    """What ray_data_llm needs to build the same prompts: each video's ASR output."""
    keep = ("uri", "language", "seg_start", "seg_end", "seg_text")
    data = [{k: (np.asarray(r[k]).tolist() if k != "uri" and k != "language" else str(r[k])) for k in keep}
            for r in rows]
    path.write_text(json.dumps(data))


def _decoded_for_prompt(args: tuple[Any, str]) -> dict:
    """The row corpusflow's frames stage hands the VLM, less its audio (prompts don't use it), in a worker process."""
    config, uri = args
    return {k: v for k, v in pipeline_row(config, uri).items() if k != "pcm"}


def ray_data_llm_prompts(config, corpus: list[str], transcripts: Path, work: Work | None = None) -> list[dict]:
    """ray_data_llm's requests: corpusflow's frames (decode and frames stages re-run, deterministic) and
    corpusflow_vllm's transcripts, through the same ``build_request``; counted into ``work``."""
    from corpusflow.flows.vllm_stage import build_request

    by_uri = {t["uri"]: t for t in json.loads(transcripts.read_text())}
    # One process per file: in threads of this process the GIL-bound decode of 64 lecture files (16 h)
    # had not finished after 6 minutes, twice.
    with ProcessPoolExecutor(max_workers=min(len(corpus), os.cpu_count() or 1)) as pool:
        rows = list(pool.map(_decoded_for_prompt, [(config, u) for u in corpus]))
    prompts = []
    for uri, row in zip(corpus, rows):
        t = by_uri[uri]
        row.update(language=t["language"], seg_start=np.asarray(t["seg_start"], dtype=np.float64),
                   seg_end=np.asarray(t["seg_end"], dtype=np.float64), seg_text=list(t["seg_text"]))
        req = build_request(row, config)
        if work is not None:
            text_tokens, images = request_text_tokens(req["messages"])
            work.add_request(images, work.add_video(row), text_tokens)
        prompts.append({"uri": uri, "messages": req["messages"]})
    return prompts


def contender_requests(name: str, config, rows: list[dict], transcripts: Path, vlm_tokens: int = 256) -> list[dict]:
    """What each contender sends its VLM for the transcribed ``rows`` (after corpusflow's frames stage), built
    by that contender's own code path: ``{"uri", "images", "text"}`` per request (images as arrays or data URLs).

    The CPU test runs this for every contender, so a refactor of the stages cannot silently break one.
    """
    if name == "ray_data_llm":
        return [{"uri": p["uri"], **_chat_parts(p["messages"])}
                for p in ray_data_llm_prompts(config, [str(r["uri"]) for r in rows], transcripts)]
    if name == "corpusflow_vllm":
        from corpusflow.flows.vllm_stage import _Prompt

        prompt = _Prompt(config, fixed_output_tokens=True)
        return [{"uri": str(r["uri"]), **_chat_parts(prompt(r)["messages"])} for r in rows]
    if name in ("naive_transformers", "corpusflow_transformers"):  # both call Describe with the fixed engine
        from corpusflow.actors.vlm import Describe

        describe = Describe(config, engine=fixed_transformers_engine(config, vlm_tokens))
        out = []
        for r in rows:
            req = describe._plan(r).jobs[0].request
            out.append({"uri": str(r["uri"]), "images": list(req.frames), "text": req.system + "\n" + req.user})
        return out
    raise ValueError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")


def _chat_parts(messages: list[dict]) -> dict:
    parts = [p for m in messages for p in m["content"]]
    return {"images": [p["image_url"]["url"] for p in parts if p["type"] == "image_url"],
            "text": "\n".join(str(p["text"]) for p in parts if p["type"] == "text")}


def run_ray_data_llm(config, corpus: list[str], work: Work, peak: float | None, vlm_tokens: int,
                     transcripts: Path, n_gpus: int = 1, whole_gpu: bool = False) -> dict:
    """Ray's processor as its documentation shows it, on the prompts corpusflow_vllm built (VLM work only).

    Its engine gets corpusflow_vllm's engine arguments exactly (a fair peer), or with ``whole_gpu`` the
    documented shape: one engine alone on the GPU, its KV cache profiled at 0.85.
    """
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from corpusflow.actors.engines.vlm_vllm import engine_kwargs, model_path, sampling_params
    from corpusflow.actors.models.compile_cache import cache_env, local_compile_cache
    from corpusflow.flows.vllm_stage import _accelerator

    prompts = [{"messages": p["messages"]} for p in ray_data_llm_prompts(config, corpus, transcripts, work)]
    opts = config.profile.options_for("H200")
    if whole_gpu:  # nothing else runs beside it
        opts = opts.model_copy(update={"gpu_memory_utilization": 0.85, "kv_cache_memory_bytes": None})
    processor = build_processor(
        vLLMEngineProcessorConfig(model_source=model_path(config.profile, config.model_cache),
                                  engine_kwargs=engine_kwargs(opts), batch_size=16, concurrency=n_gpus, log_engine_metrics=False,
                                  # the compile artifacts corpusflow's engines use (warm once one of them ran)
                                  runtime_env={"env_vars": cache_env(local_compile_cache(
                                      config.profile.vlm, _accelerator(config), config.model_cache))},
                                  prepare_multimodal_stage={"enabled": True,  # images stay after their labels
                                                            "chat_template_content_format": "openai"}),
        preprocess=lambda row: {**row, "sampling_params": sampling_params(vlm_tokens, None, True)},
        postprocess=lambda row: {"n_in": row["num_input_tokens"], "n_out": row["num_generated_tokens"],
                                 "llm_s": row["time_taken_llm"], "end": time.time()})
    with GpuSampler(n_gpus) as gpu:
        t0 = time.time()
        out = processor(ray.data.from_items(prompts)).take_all()
        t_end = time.time()
    ready = min(r["end"] - r["llm_s"] for r in out)
    measured = sum(int(r["n_in"]) for r in out)
    return figures(work, n_gpus * (t_end - ready), ready - t0, t_end - t0, 0.0, peak, gpu.figures(t0, ready),
                   {"gpus": n_gpus, "after_startup_s": round(t_end - ready, 1), "vllm_prompt_tokens": measured,
                    "output_tokens": sum(int(r["n_out"]) for r in out)})


# -- main ------------------------------------------------------------------------------------------

def machine(packages: tuple[str, ...] = ("vllm", "ray", "transformers", "av")) -> dict:
    """Host, GPU and package versions (read from metadata: importing vLLM here would cost seconds and memory)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    info = {"host_cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            pass
    for pkg in packages:
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_throughput.json")
    p.add_argument("--work", default="/tmp/cfbench", help="folder for the corpus, checkpoints and Ray spill")
    p.add_argument("--speech-clip", help="any audio file with speech (looped into the videos); default: "
                   "espeak-ng reading English (tones without espeak-ng), made in --work")
    p.add_argument("--corpus", choices=("tiny", "lecture"), default="tiny", help="benchmarks/corpus.py's kinds")
    p.add_argument("--preset", default="veryfast", help="x264 preset of the lecture corpus")
    p.add_argument("--distinct-minutes", type=int, help="lecture corpus: minutes of picture encoded per talk, "
                   "cycled through its length (benchmarks/corpus.py make_lectures); default: every minute")
    p.add_argument("--seek", choices=("exact", "keyframe"), default="exact", help="video.seek of the pipelines")
    p.add_argument("--dedup-threshold", type=float, default=0.0, help="video.dedup_threshold of every contender")
    p.add_argument("--decode-modes", default="", help="measure decode CPU per video-hour for these seek modes "
                   "(comma-separated: exact,keyframe) before the contenders")
    p.add_argument("--vllm-options", default="{}", help="JSON of VlmEngineOptions fields added to the vLLM shape, "
                   "used alike by corpusflow_vllm and ray_data_llm (e.g. max_num_batched_tokens)")
    p.add_argument("--rdl-whole-gpu", action="store_true", help="ray_data_llm's engine as documented (alone on the "
                   "GPU, KV cache profiled at 0.85) instead of corpusflow_vllm's engine arguments")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--naive-videos", type=int, default=0, help="videos the naive loop runs (0: all); it is a rate")
    p.add_argument("--vlm-tokens", type=int, default=256)
    p.add_argument("--asr-tokens", type=int, default=96)
    p.add_argument("--vllm-kv-gib", type=float, default=32.0, help="corpusflow_vllm's KV cache (it shares the GPU)")
    p.add_argument("--asr-batch", type=int, default=128, help="ASR chunks per batch in corpusflow's pipeline")
    p.add_argument("--asr-gpu-share", type=float, default=0.2, help="GPU share of all ASR actors together")
    p.add_argument("--asr-actors", type=int, default=2, help="ASR actors in corpusflow's pipeline with "
                   "--asr-placement free (VAD runs on CPU)")
    p.add_argument("--asr-placement", choices=("pairs", "free"), default="pairs",
                   help="pairs: one ASR actor beside each VLM engine, one pair per GPU (resources.asr.share_gpu_with); "
                   "free: --asr-actors ASR actors wherever Ray packs their shares")
    p.add_argument("--asr-engine", choices=("transformers", "vllm"), default="transformers",
                   help="corpusflow_vllm's ASR engine (the other contenders keep transformers)")
    p.add_argument("--asr-model", choices=tuple(WHISPER_DECODER_LAYERS), default="large-v3", help="Whisper architecture")
    p.add_argument("--asr-rows", type=int, default=1, help="rows (files) per ASR call in the pipelines: their chunks "
                   "share the engine's batches")
    p.add_argument("--gpus", type=int, default=1, help="GPUs of this machine the run uses (CUDA_VISIBLE_DEVICES picks "
                   "which): one VLM engine per GPU; --asr-actors share --asr-gpu-share between them")
    p.add_argument("--copies", type=int, default=1, help="files per generated video: the video plus copies with the "
                   "same picture and re-encoded sound (benchmarks/corpus.py with_copies); turn prefix caching off")
    p.add_argument("--plan-gpus", default="", help="after corpusflow_vllm: corpusflow plan's prediction for these GPU "
                   "counts of this machine from the run's rates (comma-separated, e.g. 1,2; benchmarks/gpu_plan.py)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--cpu-smoke", action="store_true", help="tiny-random models, minutes of video, on CPU")
    a = p.parse_args(argv)

    from corpusflow.contracts.config import JobConfig

    smoke = a.cpu_smoke
    if smoke:
        a.videos, a.minutes = min(a.videos, 2), min(a.minutes, 1.5)
    work_dir, out_dir = Path(a.work), Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "gpu_throughput.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {"contenders": {}}

    def save() -> None:
        result_path.write_text(json.dumps(result, indent=1))

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t = time.time()
        value = fn()
        print(f"[bench] {name}: {time.time() - t:.1f} s", flush=True)
        result.setdefault("timings", {})[name] = round(time.time() - t, 1)
        return value

    result["machine"] = machine()
    if "ctranslate2_cuda" not in result:
        result["ctranslate2_cuda"] = None if smoke else step("ctranslate2", ctranslate2_cuda)
    peak = result.get("bf16_matmul_peak_tflops") or step("matmul peak", matmul_peak_tflops)
    result["bf16_matmul_peak_tflops"] = peak
    clip = a.speech_clip or speech_clip(work_dir / "speech.wav")
    corpus = step("corpus", lambda: make_corpus(work_dir / f"corpus_{a.corpus}", a.videos, a.minutes, clip,
                                                a.corpus, a.preset, a.distinct_minutes))
    corpus_dir = work_dir / (f"corpus_{a.corpus}_x{a.copies}" if a.copies > 1 else f"corpus_{a.corpus}")
    corpus = step("copies", lambda: with_copies(corpus, a.copies, corpus_dir, clip))
    if smoke:
        vlm_dir = asr_dir = "tiny-random"
    else:
        vlm_dir = step("qwen2.5-vl-7b weights", lambda: make_qwen7b(work_dir / "models" / "qwen2.5-vl-7b"))
        asr_dir = step(f"whisper-{a.asr_model} weights",
                       lambda: make_whisper(work_dir / "models" / f"whisper-{a.asr_model}", a.asr_model))
    release_gpu()  # the checkpoints were written from this process's GPU memory
    base = dict(corpus=str(work_dir / f"corpus_{a.corpus}"), out=str(work_dir / "tables"),
                model_cache=str(work_dir / "cache"),
                **{"vlm.retries": 0, "vlm.max_new_tokens": a.vlm_tokens, "asr.align_words": False,
                   "video.seek": a.seek, "video.dedup_threshold": a.dedup_threshold})
    naive_cfg = JobConfig.build(**base, models=write_profile(work_dir, smoke, vlm_dir, asr_dir, "transformers"))
    flow_cfg = JobConfig.build(**base, models=naive_cfg.models, **{"asr.batch_size": a.asr_batch})
    vllm_cfg = JobConfig.build(**base, models=write_profile(work_dir, smoke, vlm_dir, asr_dir, "vllm", a.vllm_kv_gib,
                                                                json.loads(a.vllm_options), a.asr_engine, a.asr_tokens),
                               **{"asr.batch_size": a.asr_batch, "resources.vlm.num_gpus": 1 - a.asr_gpu_share,
                                  "resources.vlm.min_actors": a.gpus, "resources.vlm.max_actors": a.gpus})
    from corpusflow.actors.engines.vlm_vllm import model_path

    from corpusflow.actors.models.store import resolve

    model_dir = model_path(flow_cfg.profile, flow_cfg.model_cache)  # builds tiny-random when smoking
    asr_path = resolve(vllm_cfg.profile.asr, "whisper-hf", vllm_cfg.model_cache)
    vllm_shape = vllm_cfg.profile.options_for("H200")
    result["setup"] = {"videos": a.videos, "minutes_each": a.minutes, "copies": a.copies, "files": len(corpus),
                       "distinct_minutes": a.distinct_minutes,
                       "gpus": a.gpus, "fps_sampled": flow_cfg.video.fps,
                       "frame_size": flow_cfg.video.frame_size, "vlm_output_tokens": a.vlm_tokens,
                       "asr_output_tokens_per_chunk": a.asr_tokens, "asr_batch_naive": naive_cfg.asr.batch_size,
                       "asr_batch_pipeline": a.asr_batch, "asr_gpu_share_pipeline": a.asr_gpu_share, "asr_actors_pipeline": a.asr_actors,
                       "asr_engine_corpusflow_vllm": a.asr_engine, "asr_model": a.asr_model, "asr_rows_per_call": a.asr_rows,
                       "vlm_engine_shape": {"vllm": vllm_cfg.profile.options_for("H200").model_dump(),
                                            "transformers": flow_cfg.profile.options_for("H200").model_dump()},
                       "prefix_caching": ("vLLM default (on); no two requests share frames"
                                          if vllm_shape.enable_prefix_caching is None else vllm_shape.enable_prefix_caching),
                       "corpus": a.corpus, "seek": a.seek, "dedup_threshold": a.dedup_threshold}
    save()
    modes = [m for m in a.decode_modes.split(",") if m]
    if modes and "decode" not in result:
        result["decode"] = step("decode cost", lambda: decode_cost(flow_cfg, corpus, modes))
        save()

    have_vllm = importlib.util.find_spec("vllm") is not None
    import ray

    # Logical CPUs are accounting: each actor holds one, so small machines need headroom for the tasks.
    # The CPU smoke declares logical GPUs too: the pipeline's per-GPU placement then runs as on the device.
    ray.init(num_cpus=max(os.cpu_count() or 1, 8), num_gpus=a.gpus, include_dashboard=False, log_to_driver=True,
             _temp_dir=str(work_dir / "ray"), runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}})
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray Data's executor writes every operator's queues, running tasks and backpressure to ray-data.log
    # (session logs under --work/ray) every 5 s; every second says where rows wait after start-up.
    from ray.data._internal.execution import streaming_executor

    streaming_executor.DEBUG_LOG_INTERVAL_SECONDS = 1
    transcripts = work_dir / "transcripts.json"
    names = [n for n in a.contenders.split(",") if n]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    for name in names:
        if name in result["contenders"]:
            print(f"[bench] {name}: already measured, skipped", flush=True)
            continue
        if "vllm" in name or name == "ray_data_llm":
            if not have_vllm:
                result["contenders"][name] = {"skipped": "vllm is not installed here"}
                continue
        # ray_data_llm is the VLM alone: its work has no ASR FLOPs
        work = Work(model_dir, None if name == "ray_data_llm" else asr_path, a.vlm_tokens, a.asr_tokens)
        if name == "naive_transformers":
            subset = corpus[:a.naive_videos] if a.naive_videos else corpus
            fig = step(name, lambda: run_naive(naive_cfg, subset, work, peak, a.vlm_tokens, a.asr_tokens))
        elif name == "ray_data_llm":
            if not transcripts.exists():
                result["contenders"][name] = {"skipped": "needs corpusflow_vllm's transcripts first"}
                continue
            fig = step(name, lambda: run_ray_data_llm(vllm_cfg, corpus, work, peak, a.vlm_tokens, transcripts, a.gpus,
                                                      a.rdl_whole_gpu))
        else:
            engine = "vllm" if name == "corpusflow_vllm" else "transformers"
            cfg = vllm_cfg if engine == "vllm" else flow_cfg
            fig = step(name, lambda: run_pipeline(cfg, corpus, work, peak, a.vlm_tokens, a.asr_tokens, engine,
                                                  a.asr_gpu_share, a.asr_actors,
                                                  keep_rows=transcripts if engine == "vllm" else None, asr_rows=a.asr_rows,
                                                  n_gpus=a.gpus, pairs=a.asr_placement == "pairs"))
        result["contenders"][name] = fig
        save()
        release_gpu()
    # The plan from the vLLM pipeline's rates (the transformers one's where vLLM is absent: the CPU smoke)
    flow = next((f for n, f in result["contenders"].items() if n.startswith("corpusflow") and "after_startup_s" in f), {})
    if a.plan_gpus and flow and "plan" not in result:
        from benchmarks.gpu_plan import predict
        from corpusflow.actors.models.device import accelerator

        result["plan"] = step("plan", lambda: predict(out_dir / "plan", flow, str(corpus_dir), accelerator(),
                                                      [int(n) for n in a.plan_gpus.split(",")], a.asr_gpu_share,
                                                      a.asr_actors, decode_cpu_s_per_h=_decode_rate(result, a.seek)))
        save()
    ray.shutdown()
    print_table(result)
    return 0


def _decode_rate(result: dict, seek: str) -> float | None:
    """Decode CPU-s per video-hour measured in this run for the pipeline's seek mode, if it was measured."""
    return result.get("decode", {}).get(seek, {}).get("cpu_s_per_video_h")


def print_table(result: dict) -> None:
    cols = ("video_h_per_gpu_h", "prompt_tokens_per_s", "frames_per_s", "asr_realtime_factor", "gpu_util_mean_pct",
            "gpu_mem_peak_gib", "prefill_mfu_pct", "gpu_s", "startup_s")
    print("contender".ljust(26) + "".join(c[:14].rjust(15) for c in cols))
    for name, fig in result["contenders"].items():
        if "skipped" in fig:
            print(name.ljust(26) + "  skipped: " + fig["skipped"])
            continue
        print(name.ljust(26) + "".join(str(fig.get(c)).rjust(15) for c in cols))
    print(f"bf16 matmul peak: {result.get('bf16_matmul_peak_tflops')} TFLOP/s; {result.get('ctranslate2_cuda')}")


if __name__ == "__main__":  # vLLM's engine process re-imports this module: nothing may run on import
    sys.exit(main())
