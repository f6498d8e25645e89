"""The GPU mode of benchmarks/serve_bench.py builds its app config correctly (no Ray, no model load).

The GPU run gets one try on a lent machine, so what it would deploy is checked here on CPU.
"""
from __future__ import annotations

import importlib

import pytest

from benchmarks.serve_bench import FIXED_STAGES, gpu_plan, parse_args
from contracts.serve_config import ServeConfig


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
    from actors.asr import Transcribe
    from actors.vlm import Describe

    real = {"asr": Transcribe, "vlm": Describe}
    for name, path in FIXED_STAGES.items():
        module, cls = path.rsplit(".", 1)
        assert issubclass(getattr(importlib.import_module(module), cls), real[name])


def test_gpu_mode_needs_a_speech_clip():
    with pytest.raises(SystemExit):
        parse_args(["--gpu"])
