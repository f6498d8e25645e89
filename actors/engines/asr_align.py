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

from corpusflow.actors.engines.asr import SpeechTrack, TimedText
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

    def align(self, segments: list[TimedText], track: SpeechTrack, language: str
              ) -> tuple[list[TimedText], list[TimedText]] | None:
        """Sentence segments and words from wav2vec2 alignment; None keeps the engine's segments and no words
        (also for a language the profile gives no wav2vec2 aligner).

        Each speech chunk is aligned on its own samples, with the segments that lie in it (every engine's
        segments do: they are chunks, or timed inside one); times are put back on the media's axis.
        wav2vec2 sees each segment's samples alone either way, so this is the alignment of the whole track.
        Alignment fails for text the model's alphabet cannot spell (a language it was not trained on);
        that costs the words, never the row.
        """
        source = self._profile.aligner_for(language)
        if source is None or source == WHISPER_ALIGN:
            return None
        aligned = ([], [])
        for k, inside in enumerate(_by_chunk(segments, track.chunks)):
            if not inside:
                continue
            got = self._align_chunk(inside, track.samples(k), track.chunks[k][0], source, language)
            if got is None:
                return None
            aligned[0].extend(got[0])
            aligned[1].extend(got[1])
        return aligned

    def _align_chunk(self, segments: list[TimedText], samples: np.ndarray, offset: float, source: str,
                     language: str) -> tuple[list[TimedText], list[TimedText]] | None:
        import whisperx

        model, dictionary, kind = self._model(source, language)
        # whisperX's segment shape, times rounded to the millisecond, on the chunk's own axis
        shaped = [{"text": s.text, "start": max(0.0, round(s.start - offset, 3)), "end": max(0.0, round(s.end - offset, 3))}
                  for s in segments]
        metadata = {"language": language, "dictionary": dictionary, "type": kind}
        try:
            out = whisperx.align(shaped, model, metadata, samples, self._device)
        except Exception as e:  # noqa: BLE001 - see align's docstring
            log.warning("word alignment failed for language %r, keeping segment times: %s", language, e)
            return None
        at = lambda t: round(offset + float(t), 3)  # noqa: E731 - back on the media's axis, to the millisecond
        segs = [TimedText(at(s["start"]), at(s["end"]), s["text"]) for s in out["segments"]]
        if not segs or not all(np.isfinite([s.start for s in segs] + [s.end for s in segs])):
            return None
        words = [TimedText(at(w["start"]), at(w["end"]), w["word"])
                 for w in out["word_segments"] if "start" in w and "end" in w]
        return segs, words


def _by_chunk(segments: list[TimedText], chunks: list[tuple[float, float]]) -> list[list[TimedText]]:
    """The segments of each chunk: a segment belongs to the last chunk that starts at or before its middle."""
    starts = np.asarray([a for a, _ in chunks])
    out: list[list[TimedText]] = [[] for _ in chunks]
    for s in segments:
        out[max(0, int(np.searchsorted(starts, (s.start + s.end) / 2, side="right")) - 1)].append(s)
    return out
