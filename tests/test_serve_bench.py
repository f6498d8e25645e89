"""The GPU mode of benchmarks/serve_bench.py builds its app config correctly (no Ray, no model load).

The GPU run gets one try on a lent machine, so what it would deploy is checked here on CPU.
"""
from __future__ import annotations

import importlib
import sys
from collections import Counter

import pytest

from benchmarks.serve_bench import FIXED_STAGES, batch_stats, gpu_plan, parse_args, to_markdown
from corpusflow.contracts.serve_config import ServeConfig


def _gpu_args(tmp_path, *extra: str):
    return parse_args(["--gpu", "--speech-clip", "speech.flac", "--work", str(tmp_path), *extra])


def test_gpu_mode_shares_one_gpu_between_batched_asr_and_vlm(tmp_path):
    settings = gpu_plan(_gpu_args(tmp_path, "--vlm-gpu", "0.55", "--asr-gpu", "0.35"), "/ckpt/qwen", "/ckpt/whisper")
    actors = {n: getattr(settings.deployments, n).serve_options()["ray_actor_options"] for n in ("asr", "vlm", "decode")}
    assert (actors["vlm"]["num_gpus"], actors["asr"]["num_gpus"], actors["decode"]["num_gpus"]) == (0.55, 0.35, 0)
    for name in ("asr", "vlm"):
        d = getattr(settings.deployments, name)
        assert d.batching.max_batch_size == 8 and d.autoscaling.max_replicas == 1
        assert d.max_ongoing_requests >= d.batching.max_batch_size  # a replica can hold a whole batch
    profile = settings.stage_config().profile
    assert (profile.vlm, profile.asr, profile.asr_engine, profile.vlm_engine) == (
        "/ckpt/qwen", "/ckpt/whisper", "transformers", "transformers")
    shape = profile.options_for("H200")
    assert (shape.dtype, shape.max_num_seqs, shape.max_frames) == ("bfloat16", 8, 16)  # one Serve batch, one generate
    assert settings.vlm.retries == 0 and not settings.asr.align_words and not settings.streaming.enabled
    ServeConfig.model_validate(settings.model_dump(mode="json"))  # what the ingress replica re-validates


def test_cpu_smoke_runs_the_same_path_without_gpus(tmp_path):
    settings = gpu_plan(_gpu_args(tmp_path, "--cpu-smoke", "--max-frames", "4"), "tiny-random", "tiny-random")
    assert settings.deployments.vlm.num_gpus == settings.deployments.asr.num_gpus == 0
    assert settings.stage_config().profile.options_for("cpu").dtype == "float32"
    assert settings.video.max_frames == 4


def test_fixed_length_stages_are_importable_subclasses_of_the_real_ones():
    from corpusflow.actors.asr import Transcribe
    from corpusflow.actors.vlm import Describe

    real = {"asr": Transcribe, "vlm": Describe}
    for name, path in FIXED_STAGES.items():
        module, cls = path.rsplit(".", 1)
        assert issubclass(getattr(importlib.import_module(module), cls), real[name])


def test_gpu_mode_needs_a_speech_clip():
    with pytest.raises(SystemExit):
        parse_args(["--gpu"])


def test_vllm_mode_sizes_its_kv_cache_to_share_the_gpu_and_takes_a_whole_serve_batch(tmp_path):
    from corpusflow.actors.engines.vlm_vllm import engine_kwargs

    settings = gpu_plan(_gpu_args(tmp_path, "--vlm-engine", "vllm", "--max-batch", "16"), "/ckpt/qwen", "/ckpt/whisper")
    profile = settings.stage_config().profile
    assert (profile.vlm_engine, profile.asr_engine) == ("vllm", "transformers")
    kwargs = engine_kwargs(profile.options_for("H200"))
    assert kwargs["kv_cache_memory_bytes"] == 16 * 2**30 and kwargs["gpu_memory_utilization"] == 0.35
    assert kwargs["max_num_seqs"] >= settings.deployments.vlm.batching.max_batch_size == 16
    assert not kwargs["enforce_eager"]  # CUDA graphs on: they are part of what vLLM brings
    ServeConfig.model_validate(settings.model_dump(mode="json"))


def test_vllm_mode_is_refused_on_the_cpu_smoke_path():
    with pytest.raises(SystemExit):
        parse_args(["--gpu", "--cpu-smoke", "--vlm-engine", "vllm", "--speech-clip", "speech.flac"])


def test_the_fixed_stages_import_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # any "import vllm" now raises ImportError
    importlib.reload(importlib.import_module("benchmarks.serve_fixed"))


def _totals(batches: float, size_sum: float, seconds_sum: float, sizes: list[int]) -> dict:
    """What read_batch_totals makes of the endpoint after batches of ``sizes``."""
    from corpusflow.serve_apps.batch_metrics import SIZE_BUCKETS

    le = Counter({float(b): sum(s <= b for s in sizes) for b in (*SIZE_BUCKETS, float("inf"))})
    return {"batches": batches, "size_sum": size_sum, "seconds_sum": seconds_sum, "size_le": le}


def test_batch_stats_cover_only_the_batches_between_two_readings():
    before = {"vlm": _totals(2, 2, 1.0, [1, 1])}
    after = {"vlm": _totals(5, 2 + 3 + 4 + 1, 1.0 + 6.0, [1, 1, 3, 4, 1]), "asr": _totals(1, 2, 0.5, [2])}
    assert batch_stats(before, after) == {
        "vlm": {"batches": 3, "mean_size": 2.67, "max_size": 4, "mean_s": 2.0},
        "asr": {"batches": 1, "mean_size": 2.0, "max_size": 2, "mean_s": 0.5}}
    assert batch_stats(after, after) == {}  # an idle stage has no row


def test_markdown_table_shows_each_levels_batches():
    row = {"concurrency": 4, "throughput_rps": 1.0, "p50_s": 1, "p99_s": 2, "statuses": {"200": 4},
           "row_errors": {}, "batches": {"vlm": {"batches": 1, "mean_size": 4.0, "max_size": 4, "mean_s": 2.5,
                                                "busy_share": 0.5}}}
    result = {"models": "m", "device": "d", "max_batch_size": 8, "seconds_per_level": 5, "load_average_before": 0,
              "setup": {"repeats": 1, "warmup_s": 1}, "inputs": {"analyze": "clip"}, "levels": {"analyze": [row]}}
    assert "| – | – | 4 / 4 / 2.50 s / 50% |" in to_markdown(result)
