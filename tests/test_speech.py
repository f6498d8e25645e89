"""Speech detection as decode streams the audio: Silero VAD over windows, regions merged into chunks
Whisper decodes, and only the chunks' samples kept, as int16."""
from __future__ import annotations

import numpy as np
import pytest

from corpusflow.actors.speech import VAD_WINDOW_S, Speech, SpeechDetector, merge_speech, to_int16
from corpusflow.contracts.config import JobConfig
from corpusflow.contracts.stage import StageFailure
from tests.media import speech_like

SR = 16000


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def _talk(*parts: tuple[str, float]) -> np.ndarray:
    """Speech-like bursts and silences, e.g. ('quiet', 1), ('talk', 3)."""
    return np.concatenate([speech_like(s, SR) if kind == "talk" else _silence(s) for kind, s in parts])


def _detector(window_s: float = VAD_WINDOW_S, **asr: object) -> SpeechDetector:
    return SpeechDetector(JobConfig(corpus="/corpus", out="/out", asr=asr), window_s=window_s)


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return _detector()


def _assert_chunks(start: np.ndarray, end: np.ndarray, duration: float, chunk_s: float) -> None:
    assert start.dtype == end.dtype == np.float64 and len(start) == len(end) >= 1
    assert np.all(start >= 0) and np.all(end <= duration), "chunks lie inside the track"
    assert np.all(end > start) and np.all(end - start <= chunk_s), "each chunk fits Whisper's window"
    assert np.all(start[1:] >= end[:-1]), "sorted and non-overlapping"


def test_silence_and_a_missing_audio_track_carry_no_audio(detector: SpeechDetector) -> None:
    for pcm in (_silence(3.0), np.zeros(0, dtype=np.float32)):
        speech = detector.detect(pcm)
        assert len(speech.start_s) == len(speech.end_s) == 0
        assert speech.pcm.dtype == np.int16 and len(speech.pcm) == 0, "a track without speech carries nothing"
        assert speech.track_samples == len(pcm)


def test_speech_becomes_sorted_chunks_and_only_their_samples_are_kept(detector: SpeechDetector) -> None:
    pcm = _talk(("quiet", 1.0), ("talk", 3.0), ("quiet", 2.5), ("talk", 2.0), ("quiet", 4.0))
    speech = detector.detect(pcm)

    _assert_chunks(speech.start_s, speech.end_s, len(pcm) / SR, 30.0)
    assert speech.start_s[0] >= 0.5, "the leading second of silence is not speech"
    spans = [(round(a * SR), round(b * SR)) for a, b in zip(speech.start_s, speech.end_s)]
    np.testing.assert_array_equal(speech.pcm, np.concatenate([to_int16(pcm[a:b]) for a, b in spans]))
    assert len(speech.pcm) < 0.8 * len(pcm), "the trailing silence is not carried"


def test_long_speech_is_cut_into_chunks_no_longer_than_chunk_s() -> None:
    pcm = _talk(("talk", 7.0))
    speech = _detector(chunk_s=2.0).detect(pcm)

    _assert_chunks(speech.start_s, speech.end_s, len(pcm) / SR, 2.0)
    assert len(speech.start_s) >= 3 and speech.end_s[-1] - speech.start_s[0] >= 6.0, "all of the speech is kept"


def test_speech_across_window_edges_is_neither_lost_nor_doubled() -> None:
    """Long tracks go through the VAD a window at a time; speech crossing an edge is detected once, whole."""
    rng = np.random.default_rng(1)
    parts: list[tuple[str, float]] = []
    for _ in range(8):
        parts += [("quiet", float(rng.uniform(1, 15))), ("talk", float(rng.uniform(2, 40)))]
    pcm = _talk(*parts)
    whole, windowed = _detector(window_s=1e9).detect(pcm), _detector(window_s=60.0).detect(pcm)

    assert len(pcm) / SR > 3 * 60, "the track spans several windows"
    _assert_chunks(windowed.start_s, windowed.end_s, len(pcm) / SR, 30.0)
    # Every talk is in the chunks, whole (to within the VAD's edges), and nothing is held twice. Chunks
    # may differ from the whole track's: a region found again by the next window may start a few tenths
    # earlier and then no longer fit one chunk with its neighbour (one chunk more here, without the
    # silence between the two that the whole track's chunk held).
    kept, at = _speech_mask(windowed, len(pcm)), 0.0
    for kind, seconds in parts:
        if kind == "talk":
            assert kept[int((at + 0.5) * SR):int((at + seconds - 0.5) * SR)].all(), f"talk at {at:.1f} s is kept"
        at += seconds
    assert abs(len(windowed.start_s) - len(whole.start_s)) <= 1
    assert len(windowed.pcm) <= 1.01 * len(whole.pcm)


def _speech_mask(speech: Speech, samples: int) -> np.ndarray:
    mask = np.zeros(samples, dtype=bool)
    for a, b in zip(np.rint(speech.start_s * SR).astype(int), np.rint(speech.end_s * SR).astype(int)):
        mask[a:b] = True
    return mask


def test_speech_found_does_not_depend_on_how_the_samples_arrive() -> None:
    """Decode feeds blocks of resampled audio; the windows, and so the speech, are those of the whole track."""
    pcm = _talk(("quiet", 5.0), ("talk", 50.0), ("quiet", 4.0), ("talk", 40.0), ("quiet", 3.0), ("talk", 35.0))
    detector = _detector(window_s=60.0)
    whole = detector.detect(pcm)
    finder = detector.finder()
    for piece in np.array_split(pcm, np.cumsum(np.random.default_rng(2).integers(300, 200_000, 40))):
        finder.feed(piece)
    pieces = finder.finish()
    assert len(whole.start_s) >= 4, "the track spans several windows and chunks"
    np.testing.assert_array_equal(pieces.start_s, whole.start_s)
    np.testing.assert_array_equal(pieces.end_s, whole.end_s)
    np.testing.assert_array_equal(pieces.pcm, whole.pcm)


def test_non_finite_samples_fail_the_track(detector: SpeechDetector) -> None:
    pcm = _talk(("talk", 2.0))
    pcm[10] = np.nan
    with pytest.raises(StageFailure, match="non-finite"):
        detector.detect(pcm)


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
