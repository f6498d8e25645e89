"""Whisper through transformers: the ASR engine for GPUs where CTranslate2's CUDA build cannot run.

CTranslate2's wheels are built against CUDA 12 (they load ``libcublas.so.12``); a machine whose
stack is CUDA 13 only (the H200 image: torch 2.11+cu130) has no such library, so faster-whisper
and whisperX run there on the CPU at best. This engine keeps the whisperX shape — Silero VAD
(the ONNX model faster-whisper ships), speech merged into chunks of at most ``asr.chunk_s``
seconds, chunks decoded in batches of ``asr.batch_size`` — on torch's own CUDA. Segment times are
the VAD chunk bounds; it writes no word times (no wav2vec2 alignment here).
"""
from __future__ import annotations

import logging

import numpy as np

from actors.asr import SAMPLE_RATE, AsrResult, TimedText
from actors.device import torch_device
from actors.model_store import resolve
from actors.tiny_whisper import build_whisper_hf
from contracts.config import ModelsProfile, StageConfig

log = logging.getLogger(__name__)


def merge_speech(regions: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Consecutive speech regions (sample offsets) joined into chunks no longer than ``max_samples``.

    A single region longer than that is cut into equal pieces, so every chunk fits Whisper's window.
    """
    pieces: list[tuple[int, int]] = []
    for start, end in regions:
        n = max(1, -(-(end - start) // max_samples))
        edges = np.linspace(start, end, n + 1).round().astype(int)
        pieces += [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    chunks: list[tuple[int, int]] = []
    for start, end in pieces:
        if chunks and end - chunks[-1][0] <= max_samples:
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, end))
    return chunks


class TransformersWhisperEngine:
    """``WhisperForConditionalGeneration`` on torch's device; one track at a time, its chunks batched.

    ``fixed_output_tokens`` is for benchmarks: every chunk decodes exactly that many tokens (EOS
    ignored), so that runs compare equal work whatever a random-weight model would emit.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig, fixed_output_tokens: int | None = None) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self._device = torch_device()
        self._dtype = _dtype(config.asr.compute_type, self._device)
        self._batch_size = config.asr.batch_size
        self._max_samples = int(config.asr.chunk_s * SAMPLE_RATE)
        self._vad = (config.asr.vad_onset, config.asr.vad_offset)
        self.fixed_output_tokens = fixed_output_tokens
        path = resolve(profile.asr, "whisper-hf", config.model_cache, build_tiny=build_whisper_hf)
        self._processor = WhisperProcessor.from_pretrained(path)
        self._model = WhisperForConditionalGeneration.from_pretrained(path, dtype=self._dtype)
        self._model = self._model.to(self._device).eval()
        self._lang_of_id = {i: tok.strip("<|>") for tok, i in self._model.generation_config.lang_to_id.items()}
        forced = config.asr.language
        if forced is not None and forced not in self._lang_of_id.values():
            raise ValueError(f"asr.language {forced!r} is not a language this Whisper model knows "
                             f"(one of {', '.join(sorted(self._lang_of_id.values()))})")
        self._torch = torch

    def speech_chunks(self, pcm: np.ndarray) -> list[tuple[int, int]]:
        """Sample ranges to transcribe: Silero VAD speech, merged into chunks that fit Whisper's window."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        onset, offset = self._vad
        options = VadOptions(threshold=onset, neg_threshold=offset, max_speech_duration_s=self._max_samples / SAMPLE_RATE)
        stamps = get_speech_timestamps(pcm, options, sampling_rate=SAMPLE_RATE)
        return merge_speech([(s["start"], s["end"]) for s in stamps], self._max_samples)

    def _features(self, pcm: np.ndarray, chunks: list[tuple[int, int]]):
        feats = self._processor.feature_extractor([pcm[a:b] for a, b in chunks], sampling_rate=SAMPLE_RATE,
                                                  return_tensors="pt", device=self._device)["input_features"]
        return feats.to(self._device, self._dtype)

    def _detect_language(self, pcm: np.ndarray, chunk: tuple[int, int]) -> str:
        """Language of the first speech chunk (not of the file's first 30 s, which may be music)."""
        with self._torch.inference_mode():
            ids = self._model.detect_language(self._features(pcm, [chunk]))
        return self._lang_of_id.get(int(ids.reshape(-1)[0]), "")

    def transcribe(self, pcm: np.ndarray, language: str | None) -> AsrResult:
        chunks = self.speech_chunks(pcm)
        if not chunks:
            return AsrResult("")
        language = language or self._detect_language(pcm, chunks[0])
        fixed = self.fixed_output_tokens
        lengths = {} if fixed is None else {"min_new_tokens": fixed, "max_new_tokens": fixed}
        segments: list[TimedText] = []
        for i in range(0, len(chunks), self._batch_size):
            batch = chunks[i:i + self._batch_size]
            with self._torch.inference_mode():
                ids = self._model.generate(self._features(pcm, batch), language=language or None,
                                           task="transcribe", **lengths)
            texts = self._processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
            segments += [TimedText(a / SAMPLE_RATE, b / SAMPLE_RATE, t) for (a, b), t in zip(batch, texts)]
        return AsrResult(language, segments)


def _dtype(compute_type: str, device: str):
    """float16 on CUDA, float32 on CPU; CTranslate2's int8 types have no transformers counterpart here."""
    import torch

    if compute_type.startswith("int8"):
        log.warning("asr.compute_type %r is CTranslate2's; the transformers engine runs %s instead", compute_type,
                    "float16" if device == "cuda" else "float32")
    if compute_type == "float32" or device == "cpu":
        return torch.float32
    return torch.float16
