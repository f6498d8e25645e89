"""Speech detection (the CPU stage before ASR): Silero VAD regions merged into chunks Whisper decodes."""
from __future__ import annotations

import numpy as np
import pytest

from corpusflow.actors.speech import DetectSpeech, merge_speech
from corpusflow.contracts.config import JobConfig
from tests.media import speech_like

SR = 16000


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def _talk(*parts: tuple[str, float]) -> np.ndarray:
    """Speech-like bursts and silences, e.g. ('quiet', 1), ('talk', 3)."""
    return np.concatenate([speech_like(s, SR) if kind == "talk" else _silence(s) for kind, s in parts])


def _batch(*pcms: np.ndarray, failed: dict[int, tuple[str, str]] | None = None) -> dict[str, np.ndarray]:
    failed = failed or {}
    pcm = np.empty(len(pcms), dtype=object)
    for i, p in enumerate(pcms):
        pcm[i] = p
    return {"pcm": pcm, "kind": np.asarray(["audio"] * len(pcms)),
            "error_stage": np.asarray([failed.get(i, ("", ""))[0] for i in range(len(pcms))]),
            "error": np.asarray([failed.get(i, ("", ""))[1] for i in range(len(pcms))])}


def _stage(**asr: object) -> DetectSpeech:
    return DetectSpeech(JobConfig(corpus="/corpus", out="/out", asr=asr))


@pytest.fixture(scope="module")
def stage() -> DetectSpeech:
    return _stage()


def _assert_chunks(start: np.ndarray, end: np.ndarray, duration: float, chunk_s: float) -> None:
    assert start.dtype == end.dtype == np.float64 and len(start) == len(end) >= 1
    assert np.all(start >= 0) and np.all(end <= duration), "chunks lie inside the track"
    assert np.all(end > start) and np.all(end - start <= chunk_s), "each chunk fits Whisper's window"
    assert np.all(start[1:] >= end[:-1]), "sorted and non-overlapping"


def test_silence_and_a_missing_audio_track_have_no_speech(stage: DetectSpeech) -> None:
    out = stage(_batch(_silence(3.0), np.zeros(0, dtype=np.float32)))

    assert list(out["error"]) == ["", ""]
    assert [len(v) for v in out["speech_start_s"]] == [0, 0]
    assert [len(v) for v in out["speech_end_s"]] == [0, 0]


def test_speech_becomes_sorted_chunks_inside_the_track_and_pcm_stays(stage: DetectSpeech) -> None:
    pcm = _talk(("quiet", 1.0), ("talk", 3.0), ("quiet", 2.5), ("talk", 2.0), ("quiet", 1.0))
    out = stage(_batch(pcm))

    assert out["error"][0] == ""
    _assert_chunks(out["speech_start_s"][0], out["speech_end_s"][0], len(pcm) / SR, 30.0)
    assert out["speech_start_s"][0][0] >= 0.5, "the leading second of silence is not speech"
    assert out["pcm"][0] is pcm, "ASR still needs the samples"
    assert out["speech_wall_s"][0] > 0 and out["speech_accel"][0] == "cpu"


def test_long_speech_is_cut_into_chunks_no_longer_than_chunk_s() -> None:
    pcm = _talk(("talk", 7.0))
    out = _stage(chunk_s=2.0)(_batch(pcm))

    start, end = out["speech_start_s"][0], out["speech_end_s"][0]
    _assert_chunks(start, end, len(pcm) / SR, 2.0)
    assert len(start) >= 3 and end[-1] - start[0] >= 6.0, "all of the speech is kept"


def test_rows_failed_upstream_pass_untouched_and_bad_audio_fails_here(stage: DetectSpeech) -> None:
    talk = _talk(("talk", 2.0))
    nan = talk.copy()
    nan[10] = np.nan
    out = stage(_batch(talk, nan, talk, failed={2: ("decode", "file is not a media container")}))

    assert list(out["error_stage"]) == ["", "speech", "decode"]
    assert "non-finite" in out["error"][1]
    assert out["error"][2] == "file is not a media container"
    assert out["pcm"][2] is talk
    assert len(out["speech_start_s"][0]) >= 1
    assert [len(out["speech_start_s"][i]) for i in (1, 2)] == [0, 0]
    assert np.isnan(out["speech_wall_s"][2]), "a row that never ran here has no metrics"


def test_merge_joins_neighbours_and_cuts_what_is_too_long() -> None:
    max_samples = 30 * SR
    regions = [(0, 10 * SR), (12 * SR, 25 * SR), (26 * SR, 40 * SR), (41 * SR, 140 * SR)]
    chunks = merge_speech(regions, max_samples)

    assert all(b - a <= max_samples for a, b in chunks)
    assert chunks[0] == (0, 25 * SR), "neighbours joined while they fit"
    assert sum(b - a for a, b in chunks) >= sum(b - a for a, b in regions), "no speech left out"
    assert chunks[-1][1] == 140 * SR, "the long region is cut, not truncated"


def test_merge_gives_whisperx_chunks_for_regions_the_vad_split() -> None:
    from whisperx.diarize import Segment
    from whisperx.vads import Vad

    rng = np.random.default_rng(0)
    for _ in range(200):
        max_samples = int(rng.choice([5, 10, 30])) * SR
        t, regions = 0, []
        for _ in range(int(rng.integers(1, 12))):
            t += int(rng.integers(0, 5 * SR))
            length = int(rng.integers(1, max_samples))
            regions.append((t, t + length))
            t += length
        theirs = Vad.merge_chunks([Segment(a / SR, b / SR, "") for a, b in regions], max_samples / SR,
                                  onset=0.5, offset=None)
        assert merge_speech(regions, max_samples) == [(round(c["start"] * SR), round(c["end"] * SR)) for c in theirs]
