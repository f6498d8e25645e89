"""Speech detection as the audio streams out of the decoder: only the speech chunks are kept, as int16.

whisperX's shape is VAD → speech merged into chunks of at most ``asr.chunk_s`` → batched decoding.
The first two steps are CPU work (Silero VAD takes ~4 s of one core per 30-minute track) and run
inside decode (actors/decode.py feeds the resampled audio to a :class:`SpeechFinder` as it comes), so the ASR
actors' GPU share only decodes chunks and no stage ever holds a whole track: the finder runs the VAD
over windows of :data:`VAD_WINDOW_S` (two minutes), keeps the samples of the chunks it has closed as int16
(Whisper's features come from 16-bit audio anyway) and forgets the rest. A long lecture with 10%
speech carries 10% of its audio at half the bytes of float32; a track with no speech carries none.

The row's audio is then three columns (:class:`Speech`): ``speech_pcm``, the chunks' samples one
after the other; ``speech_start_s``/``speech_end_s``, each chunk's span on the media's time axis.
Chunk k's samples are the next ``round(end_k * 16000) - round(start_k * 16000)`` of ``speech_pcm``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import StageFailure

SAMPLE_RATE = 16000
# The VAD runs over this much audio at a time, whatever the track's length. Its working set is about
# 0.5 MB per second of window (the ONNX model's activations over every 32 ms frame at once, measured):
# ~100 MB here, ~180 MB for 300 s; shorter windows re-detect their last 11 s more often.
VAD_WINDOW_S = 120.0
# Speech ending this close to a window's end is not trusted yet: the VAD ends a region only after
# ``min_silence_duration_ms`` (2 s) of silence, plus 0.4 s of padding. Such speech is detected again
# with the next window, from just before it, so speech across a window edge is neither cut nor doubled.
_SETTLE_S = 10.0
_LEAD_S = 1.0  # audio kept before re-detected speech: the VAD's onset and padding need it
_INT16 = 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] as int16 (clipped, rounded): what a 16-bit WAV of them would hold."""
    return np.clip(np.rint(samples * _INT16), -_INT16, _INT16 - 1).astype(np.int16)


def to_float32(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / np.float32(_INT16)


@dataclass(frozen=True)
class Speech:
    """A track's speech: its chunks' int16 samples back to back, their spans (seconds), the track's length."""

    pcm: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    track_samples: int

    def columns(self) -> dict[str, np.ndarray]:
        return {"speech_pcm": self.pcm, "speech_start_s": self.start_s, "speech_end_s": self.end_s}


def chunk_lengths(start_s: np.ndarray, end_s: np.ndarray) -> np.ndarray:
    """Samples in each chunk of ``speech_pcm``: chunk bounds are whole samples, written as seconds."""
    return np.rint(np.asarray(end_s) * SAMPLE_RATE).astype(np.int64) - np.rint(np.asarray(start_s) * SAMPLE_RATE).astype(np.int64)


class _Chunker:
    """whisperX's merge, online: speech regions (sample offsets, in order) → chunks of at most ``max_samples``.

    A chunk takes the next region while it still ends within ``max_samples`` of the chunk's start
    (``whisperx.vads.Vad.merge_chunks``), else a new chunk begins. A region longer than that is cut
    into equal pieces first (whisperX would pass it on whole), so every chunk fits Whisper's window.
    """

    def __init__(self, max_samples: int):
        self.max_samples = max_samples
        self.open: tuple[int, int] | None = None

    def add(self, start: int, end: int) -> list[tuple[int, int]]:
        """Take one region; the chunks it closes."""
        closed = []
        n = max(1, -(-(end - start) // self.max_samples))
        edges = np.linspace(start, end, n + 1).round().astype(int)
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
            if b <= a:
                continue
            if self.open and b - self.open[0] <= self.max_samples:
                self.open = (self.open[0], b)
            else:
                if self.open:
                    closed.append(self.open)
                self.open = (a, b)
        return closed

    def finish(self) -> list[tuple[int, int]]:
        closed, self.open = ([self.open] if self.open else []), None
        return closed


def merge_speech(regions: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Consecutive speech regions (sample offsets) joined into chunks no longer than ``max_samples`` (see _Chunker)."""
    chunker = _Chunker(max_samples)
    chunks = [c for start, end in regions for c in chunker.add(start, end)]
    return chunks + chunker.finish()


class SpeechDetector:
    """Silero VAD with whisperX's hysteresis (speech starts above ``asr.vad_onset``, ends below
    ``asr.vad_offset``) and ``asr.chunk_s`` chunks. The ONNX model is the offline one faster-whisper
    ships (whisperX's default, pyannote, needs a download); built once per process."""

    def __init__(self, config: StageConfig, window_s: float = VAD_WINDOW_S) -> None:
        from faster_whisper.vad import VadOptions, get_vad_model

        asr = config.asr
        self.options = VadOptions(threshold=asr.vad_onset, neg_threshold=asr.vad_offset,
                                  max_speech_duration_s=asr.chunk_s)
        self.max_samples = int(asr.chunk_s * SAMPLE_RATE)
        # A window must hold a whole chunk and the settling margin, or it could not make progress.
        self.window = int(max(window_s, asr.chunk_s + 2 * (_SETTLE_S + _LEAD_S)) * SAMPLE_RATE)
        get_vad_model()

    def finder(self) -> "SpeechFinder":
        """A finder for one track."""
        return SpeechFinder(self)

    def detect(self, pcm: np.ndarray) -> Speech:
        """The speech of a track held in memory (16 kHz mono float32), as if decoded."""
        finder = self.finder()
        finder.feed(pcm)
        return finder.finish()

    def regions(self, audio: np.ndarray) -> list[tuple[int, int]]:
        from faster_whisper.vad import get_speech_timestamps

        stamps = get_speech_timestamps(audio, self.options, sampling_rate=SAMPLE_RATE) if len(audio) else []
        return [(int(s["start"]), int(s["end"])) for s in stamps]


class SpeechFinder:
    """One track's speech, fed 16 kHz mono float32 samples as they are decoded (see the module docstring).

    Holds at most about a window of float32 (the audio the VAD has yet to decide, and the open chunk's),
    and the int16 samples of the closed chunks.
    """

    def __init__(self, detector: SpeechDetector) -> None:
        self.detector = detector
        self.parts: list[np.ndarray] = []  # float32 samples held, from sample ``base`` of the track on
        self.base = 0
        self.held = 0
        self.undecided = 0  # from this sample on, the VAD has not decided yet
        self.chunker = _Chunker(detector.max_samples)
        self.kept: list[np.ndarray] = []  # int16 samples of the closed chunks
        self.spans: list[tuple[int, int]] = []

    @property
    def samples(self) -> int:
        """Samples of the track seen so far."""
        return self.base + self.held

    def feed(self, samples: np.ndarray) -> None:
        """Take the next samples; the VAD runs each time a window's worth past the undecided sample has come.

        The windows end at the same samples however the track arrives (a decoded frame at a time, in
        blocks, or whole), so the speech found does not depend on the decoder's frame size.
        """
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        if bad:
            raise StageFailure(f"audio holds {bad} non-finite samples (NaN or infinity); the decoded track is corrupt")
        samples = np.asarray(samples, dtype=np.float32)
        at = 0
        while at < len(samples):
            part = samples[at:at + max(1, self.undecided + self.detector.window - self.samples)]
            self.parts.append(part)
            self.held += len(part)
            at += len(part)
            if self.samples - self.undecided >= self.detector.window:
                self._detect(last=False)

    def pad_to(self, samples: int) -> None:
        """Silence up to sample ``samples`` (audio that starts late stays on the media's time axis)."""
        while self.samples < samples:
            self.feed(np.zeros(min(samples - self.samples, self.detector.window), dtype=np.float32))

    def finish(self) -> Speech:
        self._detect(last=True)
        for chunk in self.chunker.finish():
            self._keep(chunk)
        track = self.samples
        self.parts, self.base, self.held = [], track, 0
        starts = np.asarray([a for a, _ in self.spans], dtype=np.float64) / SAMPLE_RATE
        ends = np.asarray([b for _, b in self.spans], dtype=np.float64) / SAMPLE_RATE
        pcm = np.concatenate(self.kept) if self.kept else np.zeros(0, dtype=np.int16)
        return Speech(pcm, starts, ends, track)

    def _held(self) -> np.ndarray:
        if len(self.parts) != 1:
            self.parts = [np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)]
        return self.parts[0]

    def _detect(self, last: bool) -> None:
        """VAD over the undecided audio; settled speech goes to the chunker, the rest waits for more audio."""
        held = self._held()
        regions = [(self.undecided + a, self.undecided + b)
                   for a, b in self.detector.regions(held[self.undecided - self.base:])]
        settle = self.samples if last else self.samples - int(_SETTLE_S * SAMPLE_RATE)
        done = [r for r in regions if r[1] <= settle]
        for start, end in done:
            for chunk in self.chunker.add(start, end):
                self._keep(chunk)
        if last:
            return
        # Decided up to ``cut``: the next window starts there. A window longer than a chunk plus the
        # margins always settles something, so ``cut`` moves forward.
        pending = [r for r in regions if r[1] > settle]
        cut = pending[0][0] - int(_LEAD_S * SAMPLE_RATE) if pending else settle
        self.undecided = max(cut, done[-1][1] if done else self.undecided)
        keep_from = min(self.undecided, self.chunker.open[0]) if self.chunker.open else self.undecided
        self.parts = [held[keep_from - self.base:].copy()]  # a copy: the old window's memory is freed
        self.held -= keep_from - self.base
        self.base = keep_from

    def _keep(self, chunk: tuple[int, int]) -> None:
        a, b = chunk
        self.kept.append(to_int16(self._held()[a - self.base:b - self.base]))
        self.spans.append(chunk)
