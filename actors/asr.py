"""The ASR stage: speech → language, time-stamped segments and (aligned) words.

``Transcribe`` is engine-agnostic: it talks to an :class:`AsrEngine` chosen by the models profile
(``whisperx`` here; ``transformers`` in actors/asr_transformers.py for GPUs where CTranslate2's CUDA
build cannot run). Engines return raw times; the stage sorts, clamps to the audio and writes columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


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


class AsrEngine(Protocol):
    """One loaded ASR model. Built as ``Engine(profile: ModelsProfile, config: JobConfig)``."""

    def transcribe(self, pcm: np.ndarray, language: str | None) -> AsrResult:
        """Transcribe 16 kHz mono float32 ``pcm``; ``language`` forces a code, None detects it."""
        ...
