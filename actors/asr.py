"""The ASR stage: speech → language, time-stamped segments and (aligned) words.

``Transcribe`` is engine-agnostic: it talks to an :class:`AsrEngine` (actors/engines/asr.py) chosen
by the models profile — whisperX, or transformers for GPUs where CTranslate2's CUDA build cannot
run. Engines return raw times; the stage sorts, clamps to the audio and writes columns.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

import numpy as np

from corpusflow.actors.engines.asr import AsrResult, SpeechTrack, TimedText, load_engine
from corpusflow.actors.speech import chunk_lengths
from corpusflow.actors.models.device import reserved_accelerator
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import Row, RowOutcome, Stage, StageContract, StageFailure

log = logging.getLogger(__name__)


class Transcribe(Stage):
    """Ray Data / Serve stage: speech chunks (actors/speech.py) → language, segments and words on the media's time axis."""

    contract = StageContract(
        name="asr", reads=("asset_id", "duration_s", "speech_pcm", "speech_start_s", "speech_end_s"),
        kinds=("video", "audio"),
        writes={"language": "str", "seg_start": "tensor[float64]", "seg_end": "tensor[float64]",
                "seg_text": "list[str]", "word_start": "tensor[float64]", "word_end": "tensor[float64]",
                "word_text": "list[str]"},
        drops=("speech_pcm",),
    )

    def __init__(self, config: StageConfig) -> None:
        super().__init__(config)
        self._language = config.asr.language
        self.accelerator = reserved_accelerator()
        self._engine = self.load_model(lambda: load_engine(config.profile, config), f"ASR model {config.profile.asr}")
        if config.profile.fixed_output and self._engine is not None:  # a benchmark profile (transformers and vllm engines)
            self._engine.fixed_output_tokens = config.profile.fixed_output.asr_tokens_per_chunk  # type: ignore[attr-defined]
        self._lock = threading.Lock()

    def process(self, rows: list[Row]) -> Sequence[RowOutcome]:
        # Serve may call from several threads; engines keep per-call state and one batch fills the
        # device, so batches take turns. Timing inside the lock makes device seconds the seconds a
        # row held the model, not the seconds it queued for it.
        with self._lock:
            tracks: dict[int, SpeechTrack] = {}
            failed: dict[int, StageFailure] = {}
            for i, row in enumerate(rows):
                try:
                    tracks[i] = checked_track(row["speech_pcm"], row["speech_start_s"], row["speech_end_s"])
                except StageFailure as e:
                    failed[i] = e
            heard, seconds = self._hear(tracks)
        outcomes = []
        for i in range(len(rows)):
            got = failed.get(i) or heard[i]
            if isinstance(got, Exception):
                outcomes.append(RowOutcome(error=got, wall_s=seconds.get(i, 0.0)))
            else:
                outcomes.append(RowOutcome(_columns(got, _duration(rows[i]["duration_s"], tracks[i])),
                                           wall_s=seconds.get(i, 0.0)))
        return outcomes

    def _hear(self, tracks: dict[int, SpeechTrack]) -> tuple[dict[int, AsrResult | Exception], dict[int, float]]:
        """Every row's result (or exception) and its model seconds, rows keyed by batch index.

        All rows with speech go to the engine together, so it can decode their chunks in shared
        batches; each row is charged a share of that time in proportion to its chunks (each is
        padded to Whisper's 30 s window, so chunks, not seconds, are the work). If the shared call
        fails, the rows are retried one by one so that a failure lands on the row that caused it.
        """
        heard: dict[int, AsrResult | Exception] = {i: AsrResult("") for i in tracks}
        speaking = {i: t for i, t in tracks.items() if t.chunks}
        if not speaking:
            return heard, {}
        t0 = time.perf_counter()
        try:
            heard.update(zip(speaking, self._engine.transcribe_many(list(speaking.values()), self._language)))
            failed = False
        except Exception as e:  # noqa: BLE001 - retried row by row below
            log.warning("transcribing %d rows together failed (%s: %s); retrying them one by one",
                        len(speaking), type(e).__name__, e)
            failed = True
        spent = time.perf_counter() - t0
        total = sum(len(t.chunks) for t in speaking.values())
        seconds = {i: spent * len(t.chunks) / total for i, t in speaking.items()}
        if failed:
            for i, t in speaking.items():
                t0 = time.perf_counter()
                try:
                    heard[i] = self._engine.transcribe_many([t], self._language)[0]
                except Exception as e:  # noqa: BLE001 - one bad file must not kill the batch
                    heard[i] = e
                seconds[i] += time.perf_counter() - t0
        return heard, seconds


def checked_track(pcm: Any, starts: Any, ends: Any) -> SpeechTrack:
    """The row's speech chunks and their samples, or a StageFailure saying what is wrong with them."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.int16:
        got = f"{pcm.dtype} array of shape {pcm.shape}" if isinstance(pcm, np.ndarray) else type(pcm).__name__
        raise StageFailure(f"speech audio must be 16 kHz mono int16 samples (one 1-D array), got a {got}")
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    if starts.ndim != 1 or starts.shape != ends.shape or not np.all(np.isfinite(starts) & np.isfinite(ends)) \
            or np.any(starts < 0) or np.any(ends <= starts) or np.any(starts[1:] < ends[:-1]):
        raise StageFailure("speech chunks (speech_start_s/speech_end_s) must be finite, non-empty, ordered spans; "
                           f"got {len(starts)} starts and {len(ends)} ends")
    held = int(chunk_lengths(starts, ends).sum())
    if held != len(pcm):
        raise StageFailure(f"speech chunks (speech_start_s/speech_end_s) span {held} samples but the row holds "
                           f"{len(pcm)} samples of speech audio")
    return SpeechTrack(pcm, [(float(a), float(b)) for a, b in zip(starts, ends)])


def _duration(duration_s: Any, track: SpeechTrack) -> float:
    """Where times are clamped: the media's end (never before the last chunk's)."""
    last = track.chunks[-1][1] if track.chunks else 0.0
    duration = float(duration_s)
    return max(duration, last) if np.isfinite(duration) else last


def _columns(result: AsrResult, duration: float) -> dict[str, Any]:
    """Sorted spans clamped to [0, duration], as the contract's columns."""
    segs, words = _spans(result.segments, duration), _spans(result.words, duration)
    return {
        "language": result.language,
        "seg_start": segs[0], "seg_end": segs[1], "seg_text": segs[2],
        "word_start": words[0], "word_end": words[1], "word_text": words[2],
    }


def _spans(spans: list[TimedText], duration: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    kept = sorted((min(max(s.start, 0.0), duration), min(max(s.end, s.start, 0.0), duration), s.text.strip())
                  for s in spans if np.isfinite(s.start) and np.isfinite(s.end))
    return (np.asarray([k[0] for k in kept], dtype=np.float64), np.asarray([k[1] for k in kept], dtype=np.float64),
            [k[2] for k in kept])
