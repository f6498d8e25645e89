"""Whisper through transformers: the ASR engine for GPUs where CTranslate2's CUDA build cannot run.

CTranslate2's wheels are built against CUDA 12 (they load ``libcublas.so.12``); a machine whose
stack is CUDA 13 only (the H200 image: torch 2.11+cu130) has no such library, so faster-whisper
and whisperX run there on the CPU at best. This engine keeps the whisperX shape — the speech
chunks actors/speech.py detected, decoded in batches of ``asr.batch_size`` — on torch's own CUDA.
Segment times are the chunk bounds; it writes no word times (no wav2vec2 alignment here).
"""
from __future__ import annotations

import logging

import numpy as np

from corpusflow.actors.engines.asr import SAMPLE_RATE, AsrResult, Decoding, SpeechTrack, TimedText, chunk_batches
from corpusflow.actors.models.device import torch_device
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import ModelsProfile, StageConfig

log = logging.getLogger(__name__)


class TransformersWhisperEngine:
    """``WhisperForConditionalGeneration`` on torch's device; the chunks of all tracks handed over share batches.

    ``fixed_output_tokens`` is for benchmarks: every chunk decodes exactly that many tokens (EOS
    ignored), so that runs compare equal work whatever a random-weight model would emit.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig, fixed_output_tokens: int | None = None) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self._device = torch_device()
        self._dtype = _dtype(config.asr.compute_type, self._device)
        self._batch_size = config.asr.batch_size
        self.fixed_output_tokens = fixed_output_tokens
        path = resolve(profile.asr, "whisper-hf", config.model_cache)
        self._processor = WhisperProcessor.from_pretrained(path)
        self._model = WhisperForConditionalGeneration.from_pretrained(path, dtype=self._dtype)
        self._model = self._model.to(self._device).eval()
        self._lang_of_id = {i: tok.strip("<|>") for tok, i in self._model.generation_config.lang_to_id.items()}
        forced = config.asr.language
        if forced is not None and forced not in self._lang_of_id.values():
            raise ValueError(f"asr.language {forced!r} is not a language this Whisper model knows "
                             f"(one of {', '.join(sorted(self._lang_of_id.values()))})")
        self._torch = torch

    def _features(self, chunks: list[np.ndarray]):
        feats = self._processor.feature_extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                                  device=self._device)["input_features"]
        return feats.to(self._device, self._dtype)

    def _detect_language(self, track: SpeechTrack) -> str:
        """Language of the track's first speech (not of the file's first 30 s, which may be music)."""
        with self._torch.inference_mode():
            ids = self._model.detect_language(self._features([track.language_probe()]))
        return self._lang_of_id.get(int(ids.reshape(-1)[0]), "")

    def transcribe_many(self, tracks: list[SpeechTrack], language: str | None) -> list[AsrResult]:
        """Language per track, then the chunks of all tracks decoded together (see :func:`chunk_batches`)."""
        work = [Decoding(t, (language or self._detect_language(t)) if t.chunks else "") for t in tracks]
        fixed = self.fixed_output_tokens
        lengths = {} if fixed is None else {"min_new_tokens": fixed, "max_new_tokens": fixed}
        for lang, part in chunk_batches(work, self._batch_size):
            features = self._features([d.track.samples(k) for d, k in part])
            with self._torch.inference_mode():
                ids = self._model.generate(features, language=lang or None, task="transcribe", **lengths)
            for (d, k), text in zip(part, self._processor.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                d.texts[k] = text
        return [AsrResult(d.language, [TimedText(a, b, text) for (a, b), text in zip(d.track.chunks, d.texts)])
                for d in work]


def _dtype(compute_type: str, device: str):
    """float16 on CUDA, float32 on CPU; CTranslate2's int8 types have no transformers counterpart here."""
    import torch

    if compute_type.startswith("int8"):
        log.warning("asr.compute_type %r is CTranslate2's; the transformers engine runs %s instead", compute_type,
                    "float16" if device == "cuda" else "float32")
    if compute_type == "float32" or device == "cpu":
        return torch.float32
    return torch.float16
