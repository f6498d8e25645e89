"""The ASR model family: what an engine is handed (speech tracks) and what it returns (timed text).

Every ASR engine (actors/engines/asr_*.py) implements :class:`AsrEngine`; the stage
(actors/asr.py:Transcribe) speaks only this protocol. Engines are found by the name a models
profile gives (``asr_engine``) through :data:`ENGINES`, and imported only when asked for, so a
worker without CTranslate2 can still run the transformers engine.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator, Protocol

import numpy as np

from corpusflow.actors.speech import SAMPLE_RATE, chunk_lengths, to_float32
from corpusflow.contracts.config import ModelsProfile, StageConfig

LANGUAGE_PROBE_S = 30.0  # Whisper identifies the language from one 30 s window


@dataclass(frozen=True)
class TimedText:
    """A span of text on the media's time axis, in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class AsrResult:
    """What an engine heard in one audio track. ``language`` is a code like 'en' ('' when silent)."""

    language: str
    segments: list[TimedText] = field(default_factory=list)
    words: list[TimedText] = field(default_factory=list)


@dataclass(frozen=True)
class SpeechTrack:
    """One track to transcribe: its speech chunks and their 16 kHz mono int16 samples, never the whole track.

    ``chunks`` are (start_s, end_s) on the media's time axis, as actors/speech.py found them while the
    track was decoded (each at most ``asr.chunk_s`` long); none means nothing to decode. ``pcm`` holds
    the chunks' samples back to back (actors/speech.py:Speech); :meth:`samples` hands one chunk over
    as float32, so at most a batch of chunks is ever float32 at once.
    """

    pcm: np.ndarray
    chunks: list[tuple[float, float]]

    @cached_property
    def _offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(chunk_lengths(*np.asarray(self.chunks).reshape(-1, 2).T))])

    def samples(self, k: int) -> np.ndarray:
        """Chunk ``k``'s samples as float32 in [-1, 1]."""
        return to_float32(self.pcm[self._offsets[k]:self._offsets[k + 1]])

    def language_probe(self) -> np.ndarray:
        """The first 30 s of speech, where the language is detected (not the file's first 30 s, which may be music)."""
        need, parts, got = int(LANGUAGE_PROBE_S * SAMPLE_RATE), [], 0
        for k in range(len(self.chunks)):  # only as many chunks as the probe needs, not the whole track
            parts.append(self.samples(k))
            got += len(parts[-1])
            if got >= need:
                break
        return np.concatenate(parts)[:need]


class AsrEngine(Protocol):
    """One loaded ASR model. Built as ``Engine(profile: ModelsProfile, config: StageConfig)``; called from one thread at a time."""

    def transcribe_many(self, tracks: list[SpeechTrack], language: str | None) -> list[AsrResult]:
        """One result per track, in order; ``language`` forces a code, None detects it per track.

        The chunks of all tracks share decoder batches, so concurrent short requests fill the batch a
        long file would; each track's result is the one it gets when transcribed alone.
        """
        ...


@dataclass
class Decoding:
    """One track on its way through an engine's shared decoding: the track, its language, its chunks' texts."""

    track: SpeechTrack
    language: str
    texts: list[str] = field(default_factory=list)
    words: list[TimedText] = field(default_factory=list)  # filled by engines that time words while decoding


def chunk_batches(work: list[Decoding], batch_size: int) -> Iterator[tuple[str, list[tuple[Decoding, int]]]]:
    """Every chunk of every track as decoder batches ``(language, [(track, chunk index), ...])``.

    A batch shares one prompt and the prompt carries the language token, so a batch holds one
    language. Batches are as few as ``batch_size`` allows and balanced (67 chunks at 64 → 34 + 33,
    not 64 + 3), so no batch pays full price for a few chunks. Resets each track's ``texts``.
    """
    by_language: dict[str, list[tuple[Decoding, int]]] = {}
    for d in work:
        d.texts, d.words = [""] * len(d.track.chunks), []
        if d.track.chunks:
            by_language.setdefault(d.language, []).extend((d, k) for k in range(len(d.track.chunks)))
    for language, chunks in by_language.items():
        n = -(-len(chunks) // batch_size)
        size, extra = divmod(len(chunks), n)
        start = 0
        for b in range(n):
            end = start + size + (b < extra)
            yield language, chunks[start:end]
            start = end


# asr_engine name → "module:Class"; each class is built as ``Engine(profile, config)``.
ENGINES = {
    "whisperx": "corpusflow.actors.engines.asr_whisperx:WhisperXEngine",
    "transformers": "corpusflow.actors.engines.asr_transformers:TransformersWhisperEngine",
    "vllm": "corpusflow.actors.engines.asr_vllm:VllmWhisperEngine",
}


def load_engine(profile: ModelsProfile, config: StageConfig) -> AsrEngine:
    """The engine the profile names, imported only now."""
    module, name = ENGINES[profile.asr_engine].split(":")
    return getattr(importlib.import_module(module), name)(profile, config)
