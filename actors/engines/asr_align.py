"""Word times after any Whisper engine: wav2vec2 CTC forced alignment of the decoded segments (whisperX's aligner).

Whisper's own times are per segment at best; the aligner places every word of a segment on the audio.
Each ASR engine that writes words (whisperX, vLLM) runs the same :class:`WordAligner` over its segments.
The model is the one the profile names for the track's language (``align``), loaded when a language
first needs it; a language without one gets no words rather than words misaligned by another
language's model. (``align: whisper`` is the whisperX engine's own cross-attention timing, not done here.)
"""
from __future__ import annotations

import logging

import numpy as np

from corpusflow.actors.engines.asr import TimedText
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import WHISPER_ALIGN, ModelsProfile, StageConfig

log = logging.getLogger(__name__)


class WordAligner:
    """The profile's wav2vec2 CTC models, each loaded once; :meth:`align` turns segments into sentence segments and words."""

    def __init__(self, profile: ModelsProfile, config: StageConfig, device: str) -> None:
        self._profile, self._cache, self._device = profile, config.model_cache, device
        self._models: dict[str, tuple[object, dict, str]] = {}  # by source: model, dictionary, kind

    def _model(self, source: str, language: str) -> tuple[object, dict, str]:
        import whisperx

        if source not in self._models:
            model, metadata = whisperx.load_align_model(
                language, self._device, model_name=resolve(source, "wav2vec2-align", self._cache))
            self._models[source] = (model, metadata["dictionary"], metadata["type"])
        return self._models[source]

    @staticmethod
    def wanted(profile: ModelsProfile, config: StageConfig) -> bool:
        return bool(config.asr.align_words and profile.align)

    def align(self, segments: list[TimedText], pcm: np.ndarray, language: str
              ) -> tuple[list[TimedText], list[TimedText]] | None:
        """Sentence segments and words from wav2vec2 alignment; None keeps the engine's segments and no words
        (also for a language the profile gives no wav2vec2 aligner).

        Alignment fails for text the model's alphabet cannot spell (a language it was not trained on);
        that costs the words, never the row.
        """
        import whisperx

        source = self._profile.aligner_for(language)
        if source is None or source == WHISPER_ALIGN:
            return None
        model, dictionary, kind = self._model(source, language)
        # whisperX's segment shape, times rounded to the millisecond
        shaped = [{"text": s.text, "start": round(s.start, 3), "end": round(s.end, 3)} for s in segments]
        metadata = {"language": language, "dictionary": dictionary, "type": kind}
        try:
            out = whisperx.align(shaped, model, metadata, pcm, self._device)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.warning("word alignment failed for language %r, keeping segment times: %s", language, e)
            return None
        segs = [TimedText(float(s["start"]), float(s["end"]), s["text"]) for s in out["segments"]]
        if not segs or not all(np.isfinite([s.start for s in segs] + [s.end for s in segs])):
            return None
        words = [TimedText(float(w["start"]), float(w["end"]), w["word"])
                 for w in out["word_segments"] if "start" in w and "end" in w]
        return segs, words
