"""whisperX as an ASR engine: batched faster-whisper (CTranslate2) decoding, wav2vec2 word alignment (asr_align.py)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from corpusflow.actors.engines.asr import AsrResult, Decoding, SpeechTrack, TimedText, chunk_batches
from corpusflow.actors.engines.asr_align import WordAligner
from corpusflow.actors.models.device import torch_device
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import ModelsProfile, StageConfig

log = logging.getLogger(__name__)


class WhisperXEngine:
    """whisperX: batched faster-whisper (CTranslate2) over the speech chunks → wav2vec2 word alignment.

    The chunks of all tracks handed over together share decoder batches (whisperX alone batches only
    within one track), so concurrent short requests fill the batch a long file would.
    Not thread-safe (whisperX's model keeps per-call state); Transcribe serialises calls.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig) -> None:
        import whisperx

        self._device = torch_device()
        self._batch_size = config.asr.batch_size
        model_dir = resolve(profile.asr, "whisper-ct2", config.model_cache)
        # whisperX's own transcribe() (VAD + merge + decode of one track) is not used: speech
        # detection is actors/speech.py. Any VAD object here only keeps load_model from loading
        # pyannote's, which needs a download.
        self._pipeline = whisperx.load_model(
            model_dir, self._device, compute_type=_compute_type(config.asr.compute_type, self._device),
            vad_model=_NO_VAD, language=None, threads=max(1, int(config.resources.asr.num_cpus)))
        forced = config.asr.language
        if forced is not None and forced not in self._pipeline.model.supported_languages:
            raise ValueError(f"asr.language {forced!r} is not a language this Whisper model knows "
                             f"(one of {', '.join(self._pipeline.model.supported_languages)})")
        self._aligner = WordAligner(profile, config, self._device) if WordAligner.wanted(profile, config) else None

    def transcribe_many(self, tracks: list[SpeechTrack], language: str | None) -> list[AsrResult]:
        """Language per track, the speech chunks of all tracks decoded together, alignment per track."""
        work = [Decoding(t, (language or self._pipeline.detect_language(t.language_probe())) if t.chunks else "")
                for t in tracks]
        self._decode(work)
        return [self._result(d) for d in work]

    def _decode(self, work: list[Decoding]) -> None:
        """Fill each track's ``texts`` through whisperX's batched decoder (see :func:`chunk_batches`).

        Each chunk is padded to Whisper's 30 s window on its own, as whisperX does.
        """
        import torch
        from faster_whisper.tokenizer import Tokenizer

        model = self._pipeline.model
        for language, part in chunk_batches(work, self._batch_size):
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
            features = torch.stack([self._features(d.track.samples(d.track.chunks[k])) for d, k in part])
            for (d, k), text in zip(part, model.generate_segment_batched(features, tokenizer, self._pipeline.options)):
                d.texts[k] = text

    def _features(self, samples: np.ndarray) -> Any:
        """whisperX's log-mel features of one chunk (its own preprocessing step)."""
        return self._pipeline.preprocess({"inputs": samples})["inputs"]

    def _result(self, d: Decoding) -> AsrResult:
        # one segment per chunk; times rounded to the millisecond, as whisperX writes them
        segments = [TimedText(round(a, 3), round(b, 3), text) for (a, b), text in zip(d.track.chunks, d.texts)]
        aligned = self._aligner.align(segments, d.track.pcm, d.language) if self._aligner and segments else None
        return AsrResult(d.language, *aligned) if aligned else AsrResult(d.language, segments)


_NO_VAD = object()  # see WhisperXEngine.__init__


def _compute_type(requested: str, device: str) -> str:
    """'default' → float16 on CUDA, int8 on CPU, or float32 where the device lacks those kernels."""
    import ctranslate2

    if requested != "default":
        return requested
    supported = ctranslate2.get_supported_compute_types(device)
    preferred = "float16" if device == "cuda" else "int8"
    return preferred if preferred in supported else "float32"
