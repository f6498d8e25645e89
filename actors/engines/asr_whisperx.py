"""whisperX as an ASR engine: batched faster-whisper (CTranslate2) decoding; word times from each language's
wav2vec2 aligner (asr_align.py) or from Whisper's own cross-attention."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from corpusflow.actors.engines.asr import AsrResult, Decoding, SpeechTrack, TimedText, chunk_batches
from corpusflow.actors.engines.asr_align import WordAligner
from corpusflow.actors.models.device import torch_device
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import WHISPER_ALIGN, ModelsProfile, StageConfig

log = logging.getLogger(__name__)


class WhisperXEngine:
    """whisperX: batched faster-whisper (CTranslate2) over the speech chunks → word alignment.

    Words come from the aligner the profile gives the track's language: a wav2vec2 CTC model (whisperX's
    alignment, asr_align.py), or ``whisper``, the decoder's cross-attention over the chunk (faster-whisper's
    word timestamps). A language without one gets segments and no words.

    The chunks of all tracks handed over together share decoder batches (whisperX alone batches only
    within one track), so concurrent short requests fill the batch a long file would.
    Not thread-safe (whisperX's model keeps per-call state); Transcribe serialises calls.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig) -> None:
        import whisperx

        self._device = torch_device()
        self._profile, self._align_words = profile, config.asr.align_words
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
        work = [Decoding(t, (language or self._detect_language(t)) if t.chunks else "") for t in tracks]
        self._decode(work)
        return [self._result(d) for d in work]

    def _detect_language(self, track: SpeechTrack) -> str:
        """Whisper's language identification; an English-only model (``*.en``) has none and speaks English."""
        if not self._pipeline.model.model.is_multilingual:
            return "en"
        return self._pipeline.detect_language(track.language_probe())

    def _decode(self, work: list[Decoding]) -> None:
        """Fill each track's ``texts`` through whisperX's batched decoder (see :func:`chunk_batches`).

        Each chunk is padded to Whisper's 30 s window on its own, as whisperX does.
        """
        import torch
        from faster_whisper.tokenizer import Tokenizer

        model = self._pipeline.model
        for language, part in chunk_batches(work, self._batch_size):
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
            features = torch.stack([self._features(d.track.samples(k)) for d, k in part])
            for (d, k), text in zip(part, model.generate_segment_batched(features, tokenizer, self._pipeline.options)):
                d.texts[k] = text
            if self._align_words and self._profile.aligner_for(language) == WHISPER_ALIGN:
                self._attention_words(part, features, tokenizer)

    def _attention_words(self, part: list[tuple[Decoding, int]], features: Any, tokenizer: Any) -> None:
        """Words of the decoded chunks timed by the decoder's cross-attention (alignment heads + DTW).

        The encoder runs again on the batch: whisperX's batched decoding does not hand its output back.
        """
        from faster_whisper.transcribe import merge_punctuations

        model = self._pipeline.model
        tokens = [tokenizer.encode(" " + d.texts[k].strip()) for d, k in part]
        frames = [len(d.track.samples(k)) // model.feature_extractor.hop_length for d, k in part]
        encoded = model.encode(features.cpu().numpy())
        for (d, k), timed in zip(part, model.find_alignment(tokenizer, tokens, encoded, frames)):
            merge_punctuations(timed, _PREPEND, _APPEND)  # "Monday" "." → "Monday."
            offset = d.track.chunks[k][0]
            spans = [(float(w["start"]), float(w["end"]), w["word"]) for w in timed if w["word"].strip()]
            # The attention path stretches a word that follows a pause into the pause: no word is
            # taken to last longer than twice the chunk's median word (faster-whisper's rule too).
            longest = 2 * min(0.7, float(np.median([b - a for a, b, _ in spans]))) if spans else 0.0
            d.words += [TimedText(offset + max(a, b - longest), offset + b, w) for a, b, w in spans]

    def _features(self, samples: np.ndarray) -> Any:
        """whisperX's log-mel features of one chunk (its own preprocessing step)."""
        return self._pipeline.preprocess({"inputs": samples})["inputs"]

    def _result(self, d: Decoding) -> AsrResult:
        # one segment per chunk; times rounded to the millisecond, as whisperX writes them
        segments = [TimedText(round(a, 3), round(b, 3), text) for (a, b), text in zip(d.track.chunks, d.texts)]
        if self._align_words and self._profile.aligner_for(d.language) == WHISPER_ALIGN:
            return AsrResult(d.language, segments, sorted(d.words, key=lambda w: w.start))
        aligned = self._aligner.align(segments, d.track, d.language) if self._aligner and segments else None
        return AsrResult(d.language, *aligned) if aligned else AsrResult(d.language, segments)


_NO_VAD = object()  # see WhisperXEngine.__init__
# Punctuation joined to the word before or after it (faster-whisper's defaults).
_PREPEND, _APPEND = "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、"


def _compute_type(requested: str, device: str) -> str:
    """'default' → float16 on CUDA, int8 on CPU, or float32 where the device lacks those kernels."""
    import ctranslate2

    if requested != "default":
        return requested
    supported = ctranslate2.get_supported_compute_types(device)
    preferred = "float16" if device == "cuda" else "int8"
    return preferred if preferred in supported else "float32"
