"""The ASR stage through its public class, on tiny random Whisper/wav2vec2 models and synthetic audio.

Batches carry the speech chunks and their int16 samples, as decode (actors/speech.py) hands them over in
the job and in Serve.

Random weights transcribe noise; what a user relies on is the shape of the answer: every row gets a
result or an error of its own, silence is not an error, times are sorted and lie inside the audio.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from corpusflow.actors.asr import SpeechTrack, Transcribe
from corpusflow.actors.speech import SAMPLE_RATE, SpeechDetector
from corpusflow.contracts.config import JobConfig
from tests.media import speech_like


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def _talk(*parts: tuple[str, float]) -> np.ndarray:
    """Speech-like bursts and silences, e.g. ('quiet', 1), ('talk', 3)."""
    return np.concatenate([speech_like(s, SAMPLE_RATE) if kind == "talk" else _silence(s) for kind, s in parts])


_DETECT = SpeechDetector(JobConfig(corpus="/corpus", out="/out"))


def _batch(*pcms: np.ndarray, failed: dict[int, str] | None = None) -> dict[str, np.ndarray]:
    """ASR's input, as decode hands it over: the speech chunks found in the rows' samples, their int16 samples."""
    failed = failed or {}
    speech = [_DETECT.detect(p) for p in pcms]
    columns = {c: np.empty(len(pcms), dtype=object) for c in ("speech_pcm", "speech_start_s", "speech_end_s")}
    for i, s in enumerate(speech):
        for c, v in s.columns().items():
            columns[c][i] = v
    return {
        "asset_id": np.asarray([f"asset-{i}" for i in range(len(pcms))]), **columns,
        "duration_s": np.asarray([len(p) / SAMPLE_RATE for p in pcms]), "kind": np.asarray(["audio"] * len(pcms)),
        "error_stage": np.asarray([failed.get(i, ("", ""))[0] for i in range(len(pcms))]),
        "error": np.asarray([failed.get(i, ("", ""))[1] for i in range(len(pcms))]),
    }


def _config(model_cache: str, **asr: object) -> JobConfig:
    return JobConfig(corpus="/corpus", out="/out", models="tiny-random", model_cache=model_cache, asr=asr)


@pytest.fixture(scope="module")
def stage(model_cache: str) -> Transcribe:
    return Transcribe(_config(model_cache))


def _assert_times(start: np.ndarray, end: np.ndarray, text: list[str], duration: float) -> None:
    assert start.dtype == end.dtype == np.float64
    assert len(start) == len(end) == len(text)
    assert np.all(np.diff(start) >= 0), "spans are sorted by start"
    assert np.all(start <= end)
    assert np.all(start >= 0) and np.all(end <= duration)


def test_speech_rows_get_language_and_sorted_segments_inside_the_audio(stage: Transcribe) -> None:
    long = _talk(("quiet", 1.0), ("talk", 3.0), ("quiet", 2.5), ("talk", 2.0), ("quiet", 1.0))
    short = _talk(("talk", 2.0))
    out = stage(_batch(long, short))

    assert "speech_pcm" not in out
    assert set(Transcribe.contract.writes) | {"asr_wall_s", "asr_device_s", "asr_accel"} <= set(out)
    assert list(out["error"]) == ["", ""]
    assert list(out["asset_id"]) == ["asset-0", "asset-1"]
    for i, pcm in enumerate((long, short)):
        duration = len(pcm) / SAMPLE_RATE
        lang = out["language"][i]
        assert isinstance(lang, str) and 2 <= len(lang) <= 3 and lang.isalpha()
        assert len(out["seg_start"][i]) >= 1
        _assert_times(out["seg_start"][i], out["seg_end"][i], out["seg_text"][i], duration)
        _assert_times(out["word_start"][i], out["word_end"][i], out["word_text"][i], duration)
        assert out["asr_wall_s"][i] > 0 and out["asr_device_s"][i] > 0
    assert out["seg_start"][0][0] >= 0.5, "the leading second of silence is not speech"


def test_silence_and_missing_audio_track_are_empty_results_not_errors(stage: Transcribe) -> None:
    out = stage(_batch(_silence(2.0), np.zeros(0, dtype=np.float32)))

    assert list(out["error"]) == ["", ""]
    assert list(out["language"]) == ["", ""]
    for col in ("seg_start", "seg_end", "seg_text", "word_start", "word_end", "word_text"):
        assert [len(v) for v in out[col]] == [0, 0]


def test_a_bad_row_fails_alone_and_earlier_failures_pass_through(stage: Transcribe) -> None:
    good = _talk(("talk", 2.0))
    batch = _batch(good, good, good, good, _silence(1.0), good,
                   failed={4: ("decode", "file is not a media container")})
    samples = batch["speech_pcm"][3]
    batch["speech_pcm"][0] = samples.astype(np.float32)
    batch["speech_pcm"][1] = np.stack([samples, samples])
    batch["speech_start_s"][2] = batch["speech_end_s"][2] + 0.5  # chunks that end before they start
    batch["speech_end_s"][5] = batch["speech_end_s"][5] + 60.0  # chunks from some other, longer track
    out = stage(batch)

    assert list(out["error_stage"]) == ["asr", "asr", "asr", "", "decode", "asr"]
    assert "int16" in out["error"][0] and "float32" in out["error"][0]
    assert "1-D" in out["error"][1]
    assert "non-empty, ordered spans" in out["error"][2]
    assert out["error"][3] == "" and len(out["seg_start"][3]) >= 1
    assert out["error"][4] == "file is not a media container"
    assert "samples of speech audio" in out["error"][5]
    for i in (0, 1, 2, 4, 5):
        assert out["language"][i] == "" and len(out["seg_text"][i]) == 0


def test_concurrent_one_row_calls_match_a_batched_call(stage: Transcribe) -> None:
    """Ray Serve hands one-row batches from several threads at once; answers must not mix."""
    pcms = [_talk(("talk", 2.0)), _talk(("quiet", 1.0), ("talk", 1.5)), _silence(1.0)]
    batched = stage(_batch(*pcms))
    singles: dict[int, dict[str, np.ndarray]] = {}

    def call(i: int) -> None:
        singles[i] = stage(_batch(pcms[i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(pcms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(pcms)):
        assert singles[i]["error"][0] == ""
        assert singles[i]["language"][0] == batched["language"][i]
        assert singles[i]["seg_text"][0] == batched["seg_text"][i]
        np.testing.assert_array_equal(singles[i]["seg_start"][0], batched["seg_start"][i])


def _files(folder: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


def test_forced_language_reuses_the_cached_models(stage: Transcribe, model_cache: str) -> None:
    before = _files(model_cache)
    assert before, "the first stage built its models into the cache"

    german = Transcribe(_config(model_cache, language="de", align_words=False))
    out = german(_batch(_talk(("talk", 2.0)), _silence(1.0)))

    assert _files(model_cache) == before, "a second stage on this node must not build or rewrite any model"
    assert list(out["language"]) == ["de", ""]
    assert len(out["seg_start"][0]) >= 1 and len(out["word_start"][0]) == 0


def test_unknown_forced_language_is_refused_at_load(model_cache: str) -> None:
    with pytest.raises(ValueError, match="asr.language 'xx'"):
        Transcribe(_config(model_cache, language="xx"))


def test_equal_length_rows_stacked_into_one_array_are_read_row_by_row(stage: Transcribe) -> None:
    """Ray Data stacks a tensor column whose rows share a shape into one 2-D array."""
    talk = _talk(("talk", 1.5))
    batch = _batch(talk, talk)
    for c in ("speech_pcm", "speech_start_s", "speech_end_s"):
        batch[c] = np.stack(list(batch[c]))
    out = stage(batch)

    assert list(out["error"]) == ["", ""]
    assert len(out["seg_start"][0]) >= 1 and out["seg_text"][0] == out["seg_text"][1]


def test_a_multi_row_batch_decodes_its_rows_together_and_gives_each_its_answer_alone(
        stage: Transcribe, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve gathers concurrent requests into one batch; their speech chunks share decoder batches.

    Every row still gets exactly the language and segments it gets when transcribed on its own.
    """
    from whisperx.asr import WhisperModel

    calls: list[int] = []
    decode = WhisperModel.generate_segment_batched

    def counted(self: WhisperModel, features: object, *args: object, **kwargs: object) -> list[str]:
        calls.append(len(features))
        return decode(self, features, *args, **kwargs)

    monkeypatch.setattr(WhisperModel, "generate_segment_batched", counted)
    pcms = [_talk(("talk", 2.0)), _talk(("quiet", 1.0), ("talk", 1.5)), _silence(1.0),
            _talk(("talk", 1.0), ("quiet", 0.5), ("talk", 2.5)), _talk(("quiet", 0.3), ("talk", 3.0))]
    alone = [stage(_batch(p)) for p in pcms]
    alone_calls, alone_chunks = len(calls), sum(calls)
    calls.clear()
    together = stage(_batch(*pcms))

    languages = {str(lang) for lang in together["language"] if lang}
    assert len(calls) == len(languages) < alone_calls, "one decoder call per language for the whole batch"
    assert sum(calls) == alone_chunks, "each speech chunk is decoded once"
    for i, single in enumerate(alone):
        assert together["error"][i] == single["error"][0] == ""
        assert together["language"][i] == single["language"][0]
        assert together["seg_text"][i] == single["seg_text"][0]
        np.testing.assert_array_equal(together["seg_start"][i], single["seg_start"][0])
        np.testing.assert_array_equal(together["seg_end"][i], single["seg_end"][0])
    assert np.all(together["asr_device_s"][[0, 1, 3, 4]] > 0), "every row is charged its share of the model time"
    assert together["asr_device_s"][2] == 0, "silence never reaches the model"


def test_an_engine_failure_on_one_row_of_a_shared_batch_fails_that_row_alone(
        stage: Transcribe, monkeypatch: pytest.MonkeyPatch) -> None:
    cursed = _talk(("talk", 1.25))
    probe = SpeechTrack.language_probe

    def detect(track: SpeechTrack) -> np.ndarray:
        if track.chunks[-1][1] <= 1.25:
            raise RuntimeError("language detection crashed")
        return probe(track)

    monkeypatch.setattr(SpeechTrack, "language_probe", detect)
    out = stage(_batch(_talk(("talk", 2.0)), cursed, _silence(1.0)))

    assert list(out["error_stage"]) == ["", "asr", ""]
    assert out["error"][1] == "RuntimeError: language detection crashed"
    assert len(out["seg_start"][0]) >= 1 and len(out["seg_start"][1]) == 0
