"""The VLM stage: grounded, schema-valid answers from the tiny random Qwen2.5-VL on CPU, long videos
through windows, invalid answers retried then recorded, and the attention kernel chosen per device."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from corpusflow.actors.vlm import Describe
from corpusflow.actors.prompts.answer import AnswerError, grid, schema_for, validate
from corpusflow.actors.engines.vlm import EngineUnavailable, VlmRequest, load_engine
from corpusflow.actors.engines.vlm_transformers import attention_for
from corpusflow.actors.prompts.video import Transcript, VideoMeta, transcript_text
from corpusflow.contracts.config import JobConfig, ModelsProfile
from corpusflow.contracts.stage import list_column, tensor_column

MAX_NEW = 256
GOOD = json.dumps({"summary": "a lab", "chapters": [{"start_s": 0.0, "end_s": 20.0, "title": "intro"}],
                   "keyframes": [{"t_s": 10.0, "caption": "a pipette"}]})


def _video(n: int, size: int, duration: float = 40.0, speech: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    starts = np.linspace(0, duration - 5, speech)
    return {"asset_id": f"a{seed}", "kind": "video", "uri": f"s3://corpus/videos/trial_{seed}.mp4", "duration_s": duration,
            "meta_json": '{"format":"mp4","codec":"h264"}',
            "frames": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
            "frame_ts": np.arange(n) * (duration / n), "shot_ts": np.array([duration / 2]),
            "language": "en", "seg_start": starts, "seg_end": starts + 4,
            "seg_text": [f"dose {i} given" for i in range(speech)], "error_stage": "", "error": ""}


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        out[key] = tensor_column(vals) if isinstance(vals[0], np.ndarray) else \
            list_column(vals) if isinstance(vals[0], list) else np.asarray(vals)
    return out


def _config(tmp_path: Path, model_cache: str, **vlm) -> JobConfig:
    profile = ModelsProfile(name="tiny-small-context", asr="tiny-random", vlm="tiny-random", engine_options={
        "default": {"dtype": "float32", "max_model_len": 1280, "max_frames": 8}})
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    return JobConfig(corpus=str(tmp_path / "corpus"), out=str(tmp_path / "out"), models=str(path), model_cache=model_cache,
                     vlm={"max_new_tokens": MAX_NEW, "max_transcript_chars": 400, "window_overlap_frames": 2, **vlm})


@pytest.fixture(scope="module")
def stage(tmp_path_factory, model_cache):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box is shared: one thread each is faster than oversubscribed cores
    yield Describe(_config(tmp_path_factory.mktemp("vlm"), model_cache))
    torch.set_num_threads(threads)


class ScriptedEngine:
    """A protocol-conforming engine that returns given answers in order (tests of retry paths only)."""

    name, model_id, max_frames, max_model_len = "scripted", "scripted-model", 8, 100_000
    admits_concurrent_calls = False

    def __init__(self, answers: list[str]):
        self.answers, self.requests = list(answers), []

    def count_tokens(self, request: VlmRequest) -> int:
        return len(request.user) + 16 * len(request.frames)

    def generate(self, requests: list[VlmRequest]) -> list[str]:
        self.requests += requests
        return [self.answers.pop(0) for _ in requests]


def test_tiny_model_answers_grounded_json_and_long_videos_go_through_windows(stage):
    short, long = _video(4, 56, seed=1), _video(12, 112, duration=90.0, speech=12, seed=2)
    short_prompt = stage._plan({c: short[c] for c in stage.contract.reads}).jobs[0].request
    assert stage.engine.count_tokens(short_prompt) <= stage._limit, "test setup: the short video must fit"

    out = stage(_batch([short, long]))

    assert list(out["error"]) == ["", ""]
    assert "frames" not in out
    for i, row in enumerate((short, long)):
        answer = validate(out["vlm_raw"][i], row["frame_ts"], row["duration_s"])
        assert out["summary"][i] == answer.summary and answer.summary
        allowed = set(grid(row["frame_ts"]))
        times = [*out["chapter_start"][i], *out["chapter_end"][i], *out["keyframe_ts"][i]]
        assert times and set(times) <= allowed
        assert len(out["keyframe_caption"][i]) == len(out["keyframe_ts"][i]) >= 1
    assert out["vlm_windows"][0] == 1 and out["frames_used"][0] == 4
    assert out["vlm_windows"][1] > 1 and out["frames_used"][1] == 12
    assert list(out["vlm_engine"]) == ["transformers"] * 2 and out["vlm_model"][0] == "tiny-random"
    assert (out["vlm_wall_s"] >= out["vlm_device_s"]).all() and (out["vlm_device_s"] > 0).all()


@pytest.mark.parametrize("shape", [(448, 448), (120, 160), (64, 64)])
def test_prompt_tokens_are_counted_exactly_without_processing_every_frame(stage, shape):
    engine = stage.engine
    frames = np.random.default_rng(0).integers(0, 255, (3, *shape, 3), dtype=np.uint8)
    req = VlmRequest(frames, np.asarray([0.0, 5.0, 10.0]), "system", "describe the video", {}, 8)
    assert engine.count_tokens(req) == engine._inputs([req])["input_ids"].shape[1]


def test_ask_cites_sampled_frame_times(stage):
    v = _video(4, 56, seed=3)
    answer = stage.ask(v["frames"], v["frame_ts"], Transcript(v["seg_start"], v["seg_end"], tuple(v["seg_text"])),
                       VideoMeta(v["uri"], v["duration_s"]), "When is the dose given?")
    assert answer.answer and set(answer.timestamps) <= set(grid(v["frame_ts"]))


def test_a_malformed_answer_is_retried_once_then_becomes_the_rows_error(tmp_path, model_cache):
    engine = ScriptedEngine(['{"summary": "cut off', '{"summary": "still cut'])
    stage = Describe(_config(tmp_path, model_cache, retries=1), engine=engine)

    out = stage(_batch([_video(4, 56)]))

    assert len(engine.requests) == 2
    assert "rejected" in engine.requests[1].user and "rejected" not in engine.requests[0].user
    assert out["error_stage"][0] == "vlm"
    assert "no valid answer in 2 attempt(s)" in out["error"][0] and "not valid JSON" in out["error"][0]
    assert out["vlm_attempts"][0] == 2 and out["vlm_raw"][0] == '{"summary": "still cut'
    assert out["summary"][0] == "" and len(out["chapter_start"][0]) == 0


def test_an_answer_fixed_on_retry_is_used_and_failed_rows_pass_through(tmp_path, model_cache):
    bad = GOOD.replace('"end_s": 20.0', '"end_s": 0.0').replace('"start_s": 0.0', '"start_s": 20.0')
    engine = ScriptedEngine([bad, GOOD])
    stage = Describe(_config(tmp_path, model_cache, retries=1), engine=engine)
    earlier = {**_video(4, 56, seed=5), "error_stage": "decode", "error": "the file is not a video"}

    out = stage(_batch([_video(4, 56, duration=40.0), earlier]))

    assert "ends at 0 s, before it starts at 20 s" in engine.requests[1].user
    assert out["error"][0] == "" and out["vlm_attempts"][0] == 2 and list(out["chapter_end"][0]) == [20.0]
    assert (out["error_stage"][1], out["error"][1]) == ("decode", "the file is not a video")
    assert out["vlm_attempts"][1] == 0 and len(engine.requests) == 2


@pytest.mark.parametrize("raw, message", [
    ("not json", "not valid JSON"),
    ('{"summary": "x", "chapters": []}', "keyframes"),
    (GOOD.replace('"t_s": 10.0', '"t_s": 99.0'), "outside the video"),
    (GOOD.replace('"t_s": 10.0', '"t_s": 12.5'), "not the time of any sampled frame"),
    (GOOD.replace('"end_s": 20.0', '"end_s": 0.0').replace('"start_s": 0.0', '"start_s": 10.0'), "before it starts"),
])
def test_validation_rejects_with_a_readable_reason(raw, message):
    with pytest.raises(AnswerError, match=message):
        validate(raw, [0.0, 10.0, 20.0, 99.0], duration_s=30.0)


def test_schema_offers_only_sampled_times_and_bounds_every_field():
    schema = schema_for(np.array([0.0, 10.004, 20.0]), budget_chars=300)
    chapter = schema["properties"]["chapters"]["items"]["properties"]
    assert chapter["start_s"]["enum"] == [0.0, 10.0, 20.0]
    assert all("maxLength" in s for s in (schema["properties"]["summary"], chapter["title"]))
    assert schema["properties"]["keyframes"]["maxItems"] >= 1


def test_a_long_transcript_is_thinned_over_the_whole_video_not_cut():
    starts = np.arange(0, 3600, 10.0)
    text = transcript_text(Transcript(starts, starts + 10, tuple(f"part {i}" for i in range(len(starts)))), 600)
    shown = [float(t) for t in re.findall(r"^\[([\d.]+)-", text, flags=re.M)]
    assert len(text) <= 600 and shown[0] == 0.0 and shown[-1] == 3590.0
    assert max(np.diff(shown)) <= 3600 / 10, "no part of the video may go unheard"


@pytest.mark.parametrize("accel, requested, flash, expected", [
    ("cpu", "auto", True, "sdpa"),
    ("A10G", "auto", True, "sdpa"),
    ("H100", "auto", True, "flash_attention_2"),
    ("H100", "auto", False, "sdpa"),
    ("H200", "auto", True, "flash_attention_2"),
    ("H100", "eager", True, "eager"),
    ("A10G", "flash_attention_2", True, "flash_attention_2"),
])
def test_attention_kernel_per_device(accel, requested, flash, expected):
    assert attention_for(accel, requested, flash) == expected


def test_vllm_engine_without_vllm_says_what_to_do(tmp_path):
    if importlib.util.find_spec("vllm"):
        pytest.skip("vllm is installed here")
    profile = ModelsProfile(name="p", asr="tiny-random", vlm="tiny-random", vlm_engine="vllm")
    with pytest.raises(EngineUnavailable, match="vllm package is not installed"):
        load_engine(profile, str(tmp_path))


@pytest.mark.gpu
def test_on_gpu_the_engine_runs_bf16_with_the_devices_attention_kernel(tmp_path, model_cache):
    import torch

    from corpusflow.actors.models.device import accelerator

    profile = ModelsProfile(name="tiny-gpu", asr="tiny-random", vlm="tiny-random", engine_options={
        "default": {"dtype": "auto", "max_model_len": 4096, "max_frames": 8}})
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    stage = Describe(JobConfig(corpus=str(tmp_path / "corpus"), out=str(tmp_path / "out"), models=str(path),
                               model_cache=model_cache, vlm={"max_new_tokens": MAX_NEW}))
    flash = importlib.util.find_spec("flash_attn") is not None
    assert stage.engine.attn_implementation == attention_for(accelerator(), "auto", flash)

    rows = [_video(8, 112, seed=s) for s in range(3)]
    out = stage(_batch(rows))

    assert next(stage.engine._model.parameters()).dtype == torch.bfloat16
    assert list(out["error"]) == [""] * 3 and set(out["vlm_accel"]) == {accelerator()}
    for i, row in enumerate(rows):
        assert set(out["keyframe_ts"][i]) <= set(grid(row["frame_ts"]))
