"""The GPU path: vLLM engine and its Ray Data stage, the transformers Whisper engine.

Tests without the ``gpu`` marker run anywhere (prompt budgets, answer columns, chunking, the CPU
Whisper engine); ``gpu`` ones need CUDA (and vLLM where they say so) and are skipped elsewhere.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from corpusflow.actors.engines.asr import Decoding, SpeechTrack, chunk_batches
from corpusflow.actors.vlm import Describe
from corpusflow.actors.prompts.answer import schema_for
from corpusflow.contracts.config import QWEN25_VL_7B, JobConfig, VlmEngineOptions
from tests.media import speech_like

SR = 16000
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")


def _config(tmp_path, model_cache, **overrides) -> JobConfig:
    return JobConfig.build(corpus=str(tmp_path / "corpus"), out=str(tmp_path / "out"), model_cache=model_cache,
                           **{"models": "tiny-random", **overrides})


def _video_row(n_frames: int = 12, side: int = 56, segments: int = 40, error: str = "") -> dict:
    rng = np.random.default_rng(0)
    ts = np.arange(n_frames) * 10.0
    return {
        "asset_id": "a1", "uri": "/corpus/talk.mp4", "kind": "video", "duration_s": n_frames * 10.0,
        "meta_json": json.dumps({"title": "Phase II results"}), "language": "en",
        "frames": rng.integers(0, 255, (n_frames, side, side, 3), dtype=np.uint8), "frame_ts": ts,
        "shot_ts": np.asarray([30.0]), "seg_start": np.arange(segments) * 3.0, "seg_end": np.arange(segments) * 3.0 + 3,
        "seg_text": [f"segment {i} about the primary endpoint and adverse events" for i in range(segments)],
        "error_stage": "asr" if error else "", "error": error,
    }


# -- everywhere -----------------------------------------------------------------------------------

def test_decoder_batches_hold_one_language_and_are_balanced():
    def track(chunks: int) -> SpeechTrack:
        return SpeechTrack(np.zeros(SR, np.float32), [(0.0, 1.0)] * chunks)

    work = [Decoding(track(40), "en"), Decoding(track(0), ""), Decoding(track(27), "en"), Decoding(track(5), "de")]
    batches = list(chunk_batches(work, 64))
    assert [(lang, len(part)) for lang, part in batches] == [("en", 34), ("en", 33), ("de", 5)]
    assert all(d.language == lang for lang, part in batches for d, _ in part)
    assert sorted((id(d), k) for _, part in batches for d, k in part) == sorted(
        (id(d), k) for d in work for k in range(len(d.track.chunks))), "every chunk once"


def test_vllm_engine_shape_follows_the_gpu_type():
    from corpusflow.actors.engines.vlm_vllm import engine_kwargs

    a10g = engine_kwargs(QWEN25_VL_7B.options_for("A10G"))
    h200 = engine_kwargs(QWEN25_VL_7B.options_for("H200"))
    assert a10g["max_model_len"] < h200["max_model_len"]
    assert a10g["limit_mm_per_prompt"]["image"] < h200["limit_mm_per_prompt"]["image"]
    assert h200["max_num_seqs"] > a10g["max_num_seqs"]
    assert h200["structured_outputs_config"]["disable_any_whitespace"] is True
    # the prefill chunk, preprocessing threads and cache reach vLLM (Ray's processor would default to 2048 tokens)
    assert h200["max_num_batched_tokens"] == 16384 and h200["renderer_num_workers"] > 1
    assert h200["mm_processor_cache_gb"] == 0 and "max_num_batched_tokens" not in a10g
    capped = engine_kwargs(VlmEngineOptions(max_frame_pixels=224 * 224))
    assert capped["mm_processor_kwargs"] == {"max_pixels": 224 * 224}


def test_fp8_weights_and_kv_cache_reach_vllm_change_the_fingerprint_and_need_the_vllm_engine():
    from corpusflow.actors.engines.vlm_vllm import engine_kwargs
    from corpusflow.contracts.config import BUILTIN_PROFILES, ModelsProfile

    fp8 = VlmEngineOptions(quantization="fp8", kv_cache_dtype="fp8")
    assert (engine_kwargs(fp8)["quantization"], engine_kwargs(fp8)["kv_cache_dtype"]) == ("fp8", "fp8")
    assert not {"quantization", "kv_cache_dtype"} & set(engine_kwargs(VlmEngineOptions()))
    bf16 = BUILTIN_PROFILES["qwen2.5-vl-7b-vllm"].model_dump()
    h200 = {**bf16["engine_options"]["H200"], "kv_cache_dtype": "fp8"}
    kv8 = ModelsProfile.model_validate({**bf16, "engine_options": {**bf16["engine_options"], "H200": h200}})
    jobs = [JobConfig.build(corpus="/c", out="/o", models=ModelsProfile.model_validate(m)) for m in (bf16, kv8)]
    assert jobs[0].fingerprint() != jobs[1].fingerprint(), "FP8 changes answers: a re-run must redo the videos"
    with pytest.raises(ValueError, match="need vlm_engine: vllm"):
        ModelsProfile.model_validate({**bf16, "vlm_engine": "transformers", "engine_options": {"H100": {"quantization": "fp8"}}})


def test_fixed_length_sampling_has_no_schema_and_ignores_eos():
    from corpusflow.actors.engines.vlm_vllm import sampling_params

    constrained = sampling_params(128, {"type": "object"})
    fixed = sampling_params(128, {"type": "object"}, fixed_output_tokens=True)
    assert constrained["structured_outputs"] == {"json": {"type": "object"}}
    assert fixed == {"temperature": 0.0, "max_tokens": 128, "min_tokens": 128, "ignore_eos": True}


def test_vllm_prompt_fits_the_context_by_thinning_the_transcript(tmp_path, model_cache):
    from corpusflow.flows.vllm_stage import build_request

    config = _config(tmp_path, model_cache, **{"vlm.max_new_tokens": 512})
    row = _video_row(n_frames=12, segments=2000)  # far more transcript than fits 4096 tokens
    req = build_request(row, config)
    user = req["messages"][1]["content"]
    images = [p for p in user if p["type"] == "image_url"]
    text_bytes = sum(len(p["text"].encode()) for m in req["messages"] for p in m["content"] if p["type"] == "text")
    vision = len(images) * ((56 // 28) ** 2 + 2)
    assert len(images) == 8  # tiny-random's frame budget, spread over the video
    assert req["shown_ts"][0] == 0.0 and req["shown_ts"][-1] == 110.0
    assert text_bytes + vision + 512 <= 4096
    kept = [int(w) for w in user[-1]["text"].replace("segment ", "segment# ").split() if w.isdigit()]
    assert 0 in kept and max(kept) > 1500  # thinned over the whole video, not cut after its start
    assert user[0]["text"] == "[t=0.0s]"


def test_vllm_answers_become_describes_columns(tmp_path, model_cache):
    from corpusflow.flows.vllm_stage import _KEEP, _Answers

    ts = np.arange(8) * 10.0
    answer = {"summary": "A talk.", "chapters": [{"start_s": 0.0, "end_s": 70.0, "title": "All"}],
              "keyframes": [{"t_s": 30.0, "caption": "slide"}]}
    base = {k: v for k, v in _video_row().items() if k != "frames"}
    common = {_KEEP: json.dumps(sorted(base)), "_cf_failed": "", "_cf_t0": 0.0, "_cf_shown_ts": ts,
              "_cf_duration": 120.0, "time_taken_llm": 0.5, "messages": "[]"}
    rows = [{**base, **common, "generated_text": json.dumps(answer)},
            {**base, **common, "generated_text": '{"summary": "cut'},
            {**base, **common, "error_stage": "asr", "error": "no audio", "generated_text": ""}]
    batch = {}
    for key in rows[0]:
        batch[key] = np.empty(len(rows), dtype=object)
        for i, r in enumerate(rows):
            batch[key][i] = r[key]
    out = _Answers("m", "H200")(batch)
    assert set(Describe.contract.writes) | set(Describe.contract.metric_columns) <= set(out)
    assert "messages" not in out and "frames" not in out and _KEEP not in out
    good, bad, upstream = ({k: v[i] for k, v in out.items()} for i in range(3))
    assert good["error"] == "" and good["summary"] == "A talk." and list(good["keyframe_ts"]) == [30.0]
    assert bad["error_stage"] == "vlm" and "not valid JSON" in bad["error"] and bad["vlm_raw"].startswith("{")
    assert upstream["error_stage"] == "asr" and upstream["error"] == "no audio" and upstream["vlm_engine"] == ""


def test_transformers_whisper_decodes_all_rows_chunks_together_and_each_as_alone_on_cpu(
        tmp_path, model_cache, one_torch_thread):
    from corpusflow.actors.engines.asr_transformers import TransformersWhisperEngine

    config = _config(tmp_path, model_cache, **{"asr.batch_size": 4})
    engine = TransformersWhisperEngine(config.profile, config, fixed_output_tokens=3)
    sizes: list[int] = []
    generate = engine._model.generate

    def counted(features, **kw):
        sizes.append(len(features))
        return generate(features, **kw)

    engine._model.generate = counted
    talk = speech_like(8.0, SR)
    tracks = [SpeechTrack(talk, [(0.0, 1.5), (2.0, 3.0), (4.0, 6.5)]), SpeechTrack(np.zeros(SR, np.float32), []),
              SpeechTrack(talk[:5 * SR], [(0.5, 2.0), (3.0, 5.0)]), SpeechTrack(talk, [(1.0, 2.0), (6.0, 8.0)])]
    together = engine.transcribe_many(tracks, "en")
    assert sizes == [4, 3], "7 chunks in batches of 4: 4 + 3, one generate call each"
    alone = [engine.transcribe_many([t], "en")[0] for t in tracks]
    assert together == alone
    assert together[1].language == "" and together[1].segments == []
    assert [(s.start, s.end) for s in together[0].segments] == tracks[0].chunks
    detected = engine.transcribe_many(tracks[2:], None)
    assert detected == [engine.transcribe_many([t], None)[0] for t in tracks[2:]]
    assert all(len(r.language) >= 2 for r in detected), "the language is detected per track"


# -- on a GPU ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_engine(model_cache):
    """One tiny vLLM engine for the module: each holds a share of the GPU until its process ends."""
    from corpusflow.actors.engines.vlm_vllm import VllmEngine

    config = JobConfig.build(corpus="/tmp/corpus", out="/tmp/out", models="tiny-random", model_cache=model_cache)
    return VllmEngine(config.profile, model_cache)


@pytest.mark.gpu
@needs_vllm
def test_vllm_engine_answers_valid_json_and_counts_tokens_like_the_processor(tmp_path, model_cache, vllm_engine):
    from transformers import AutoProcessor

    from corpusflow.actors.engines.vlm_vllm import model_path
    from corpusflow.actors.prompts.answer import validate
    from corpusflow.actors.engines.vlm import VlmRequest, messages

    config = _config(tmp_path, model_cache)
    engine = vllm_engine
    row = _video_row(n_frames=4)
    req = VlmRequest(row["frames"], row["frame_ts"], "system", "describe", schema_for(row["frame_ts"], 256), 256)
    [raw] = engine.generate([req])
    validate(raw, row["frame_ts"], 40.0)  # constrained decoding: parses even from random weights
    processor = AutoProcessor.from_pretrained(model_path(config.profile, model_cache))
    text = processor.apply_chat_template(messages(req), tokenize=False, add_generation_prompt=True)
    full = processor(text=[text], images=list(row["frames"]), return_tensors="np")["input_ids"].shape[1]
    assert engine.count_tokens(req) == full


@pytest.mark.gpu
@needs_vllm
def test_vllm_engine_takes_calls_from_many_threads_at_once(vllm_engine):
    """The online API calls the engine from one thread per request; every caller gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from corpusflow.actors.engines.vlm import VlmRequest
    from corpusflow.actors.prompts.answer import validate

    rows = [_video_row(n_frames=2 + i % 3) for i in range(8)]
    reqs = [VlmRequest(r["frames"], r["frame_ts"], "system", f"describe video {i}", schema_for(r["frame_ts"], 256), 256)
            for i, r in enumerate(rows)]
    assert vllm_engine.admits_concurrent_calls
    with ThreadPoolExecutor(len(reqs)) as pool:
        answers = list(pool.map(lambda r: vllm_engine.generate([r]), reqs))
    for [raw], r in zip(answers, rows):
        validate(raw, r["frame_ts"], 40.0)  # each answer fits its own request's frames


@pytest.mark.gpu
@needs_vllm
def test_describe_runs_on_the_vllm_engine(tmp_path, model_cache, vllm_engine):
    config = _config(tmp_path, model_cache)
    stage = Describe(config, engine=vllm_engine)
    row = _video_row(n_frames=6, segments=5)
    out = stage({k: _cell_column(v) for k, v in row.items()})
    assert out["error"][0] == "", out["error"][0]
    assert out["vlm_engine"][0] == "vllm" and out["summary"][0]


@pytest.mark.gpu
@needs_vllm
def test_ray_data_vllm_stage_describes_and_passes_failed_rows_through(tmp_path, model_cache):
    import ray

    from corpusflow.flows.vllm_stage import describe_with_vllm

    config = _config(tmp_path, model_cache)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        rows = [_video_row(n_frames=6, segments=5), {**_video_row(n_frames=6), "asset_id": "a2", "error_stage": "asr",
                                                      "error": "no audio track"}]
        out = sorted(describe_with_vllm(ray.data.from_items(rows), config).take_all(), key=lambda r: r["asset_id"])
    finally:
        ray.shutdown()
    assert out[0]["error"] == "", out[0]["error"]
    assert out[0]["vlm_engine"] == "vllm" and out[0]["frames_used"] == 6
    assert out[1]["error"] == "no audio track" and out[1]["summary"] == ""


@pytest.mark.gpu
def test_transformers_whisper_runs_on_cuda(tmp_path, model_cache):
    from corpusflow.actors.engines.asr_transformers import TransformersWhisperEngine

    config = _config(tmp_path, model_cache)
    engine = TransformersWhisperEngine(config.profile, config, fixed_output_tokens=8)
    result = engine.transcribe_many([SpeechTrack(speech_like(40.0, SR), [(0.0, 30.0), (30.0, 40.0)])], "en")[0]
    assert engine._model.device.type == "cuda"
    assert result.language == "en"
    assert all(0 <= s.start < s.end <= 40.0 for s in result.segments)


def _cell_column(value):
    out = np.empty(1, dtype=object)
    out[0] = value
    return out
