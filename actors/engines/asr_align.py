"""Word times after any Whisper engine: wav2vec2 CTC forced alignment of the decoded segments (whisperX's aligner).

Whisper's own times are per segment at best; the aligner places every word of a segment on the audio.
Each ASR engine that writes words (whisperX, vLLM) runs the same :class:`WordAligner` over its segments.
"""
from __future__ import annotations

import logging

import numpy as np

from corpusflow.actors.engines.asr import TimedText
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import ModelsProfile, StageConfig

log = logging.getLogger(__name__)


class WordAligner:
    """The profile's wav2vec2 CTC model, loaded once; :meth:`align` turns segments into sentence segments and words."""

    def __init__(self, profile: ModelsProfile, config: StageConfig, device: str) -> None:
        import whisperx

        align_dir = resolve(str(profile.align), "wav2vec2-align", config.model_cache)
        model, metadata = whisperx.load_align_model("en", device, model_name=align_dir)
        self._model, self._dictionary, self._kind = model, metadata["dictionary"], metadata["type"]
        self._device = device

    @staticmethod
    def wanted(profile: ModelsProfile, config: StageConfig) -> bool:
        return bool(config.asr.align_words and profile.align)

    def align(self, segments: list[TimedText], pcm: np.ndarray, language: str
              ) -> tuple[list[TimedText], list[TimedText]] | None:
        """Sentence segments and words from wav2vec2 alignment; None keeps the engine's segments and no words.

        Alignment fails for text the model's alphabet cannot spell (a language it was not trained on);
        that costs the words, never the row.
        """
        import whisperx

        # whisperX's segment shape, times rounded to the millisecond
        shaped = [{"text": s.text, "start": round(s.start, 3), "end": round(s.end, 3)} for s in segments]
        metadata = {"language": language, "dictionary": self._dictionary, "type": self._kind}
        try:
            out = whisperx.align(shaped, self._model, metadata, pcm, self._device)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.warning("word alignment failed for language %r, keeping segment times: %s", language, e)
            return None
        segs = [TimedText(float(s["start"]), float(s["end"]), s["text"]) for s in out["segments"]]
        if not segs or not all(np.isfinite([s.start for s in segs] + [s.end for s in segs])):
            return None
        words = [TimedText(float(w["start"]), float(w["end"]), w["word"])
                 for w in out["word_segments"] if "start" in w and "end" in w]
        return segs, words
