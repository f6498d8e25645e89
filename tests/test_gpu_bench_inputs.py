"""The GPU benchmark's inputs, on CPU: a many-hour corpus from few encodes, and the plan it is compared with."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import make_corpus, speech_clip, with_copies  # noqa: E402
from benchmarks.gpu_plan import predict  # noqa: E402
from corpusflow.actors.engines.vlm_vllm import engine_kwargs  # noqa: E402
from corpusflow.contracts.config import VlmEngineOptions  # noqa: E402


def _decoded(path: str) -> tuple[list[np.ndarray], np.ndarray, float]:
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(path) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        duration = c.duration / av.time_base
    return frames, pcm, duration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    work = tmp_path_factory.mktemp("bench")
    clip = speech_clip(work / "speech.wav", seconds=12)
    originals = make_corpus(work / "corpus", videos=1, minutes=0.4, clip=clip, kind="tiny")
    return with_copies(originals, 3, work / "corpus_x3", clip)


def test_copies_show_the_same_picture_with_other_sound_and_other_bytes(corpus):
    assert len(corpus) == 3 and len({Path(p).parent for p in corpus}) == 1
    digests = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in corpus}
    assert len(digests) == 3  # a job that skips identical bytes processes every copy
    (f0, a0, d0), *others = [_decoded(p) for p in corpus]
    for frames, pcm, duration in others:
        assert len(frames) == len(f0) and all(np.array_equal(a, b) for a, b in zip(frames, f0))
        assert duration == pytest.approx(d0, abs=0.1)
        n = min(len(pcm), len(a0))
        assert n > 0.9 * len(a0) and not np.allclose(pcm[:n], a0[:n])  # the ASR hears another signal


def test_plan_from_a_one_gpu_run_gives_two_gpus_an_engine_each(corpus, tmp_path):
    video_s = 3 * 0.4 * 60
    run = {"videos_h": video_s / 3600, "startup_s": 200.0, "after_startup_s": 10.0, "asr_actor_s": 4.0, "gpus": 1}
    plans = predict(tmp_path, run, str(Path(corpus[0]).parent), "H200", [1, 2], asr_share=0.2, asr_actors=1, cores=32)
    one, two = plans["1"], plans["2"]
    assert one["feasible"] and two["feasible"]
    assert one["pools"]["vlm@H200"] == 1 and two["pools"]["vlm@H200"] == 2
    # the measured engine's rate: one engine needs the run's 10 s, two need half (start-up is measured apart)
    assert one["busy_s"]["vlm"] == pytest.approx(10.0, rel=0.05)
    assert two["busy_s"]["vlm"] == pytest.approx(5.0, rel=0.05)
    assert two["command"].startswith("corpusflow plan --cluster")


def test_plan_of_a_paired_run_puts_one_asr_actor_beside_each_engine(corpus, tmp_path):
    video_s = 3 * 0.4 * 60
    run = {"videos_h": video_s / 3600, "startup_s": 200.0, "after_startup_s": 10.0, "asr_actor_s": 4.0, "gpus": 1,
           "asr_pairs_per_gpu": True}
    plans = predict(tmp_path, run, str(Path(corpus[0]).parent), "H200", [2], asr_share=0.2, asr_actors=1, cores=32,
                    decode_cpu_s_per_h=20.0)
    two = plans["2"]
    assert two["pools"]["vlm@H200"] == two["pools"]["asr@H200"] == 2
    # what the run's wall after start-up is compared with: the plan's wall less the lead the start-up hides
    assert two["wall_after_startup_s"] == pytest.approx(two["wall_s"] - two["lead_s"], abs=0.11) and two["lead_s"] > 0


def test_prefix_caching_reaches_vllm_only_when_the_profile_sets_it():
    assert engine_kwargs(VlmEngineOptions(enable_prefix_caching=False))["enable_prefix_caching"] is False
    assert "enable_prefix_caching" not in engine_kwargs(VlmEngineOptions())


def test_every_contender_builds_its_requests_from_corpusflows_frames_and_transcripts(corpus, tmp_path):
    """The comparison's inputs: each contender's own request-building path on the tiny corpus, no vLLM needed."""
    from benchmarks.gpu_throughput import CONTENDERS, _save_transcripts, contender_requests, pipeline_row, write_profile
    from corpusflow.actors.asr import Transcribe
    from corpusflow.contracts.config import JobConfig

    profile = write_profile(tmp_path, True, "tiny-random", "tiny-random", "vllm", asr_tokens=8)  # 8 tokens a chunk
    config = JobConfig.build(corpus=str(Path(corpus[0]).parent), out=str(tmp_path / "out"),
                             model_cache=str(tmp_path / "cache"), models=profile,
                             **{"vlm.retries": 0, "asr.align_words": False, "vlm.max_new_tokens": 256,
                                "vlm.max_transcript_chars": 400})
    decoded = [pipeline_row(config, uri) for uri in corpus[:2]]
    batch = {k: np.empty(len(decoded), dtype=object) for k in decoded[0]}
    for i, r in enumerate(decoded):
        for k, v in r.items():
            batch[k][i] = v
    heard = Transcribe(config)(batch)
    rows = [{**d, **{k: heard[k][i] for k in ("language", "seg_start", "seg_end", "seg_text", "error")}}
            for i, d in enumerate(decoded)]
    assert all(not r["error"] and len(r["frames"]) for r in rows)
    transcripts = tmp_path / "transcripts.json"
    _save_transcripts(rows, transcripts)

    built = {name: contender_requests(name, config, rows, transcripts) for name in CONTENDERS}
    for name, requests in built.items():
        assert [r["uri"] for r in requests] == [str(r["uri"]) for r in rows], name
        for req, row in zip(requests, rows):
            assert 0 < len(req["images"]) <= len(row["frames"]), name
            spoken = [str(t)[:40] for t in row["seg_text"] if str(t).strip()]
            assert spoken and spoken[0] in req["text"], f"{name} left out the transcript"
    # Ray's processor gets exactly corpusflow_vllm's prompts: the same frames (as JPEG) and the same text
    assert built["ray_data_llm"] == built["corpusflow_vllm"]
