"""The ASR stage: speech → language, time-stamped segments and (aligned) words.

``Transcribe`` is engine-agnostic: it talks to an :class:`AsrEngine` chosen by the models profile
(``whisperx`` here; ``transformers`` in actors/asr_transformers.py for GPUs where CTranslate2's CUDA
build cannot run). Engines return raw times; the stage sorts, clamps to the audio and writes columns.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from actors.device import accelerator, torch_device
from actors.model_store import resolve
from actors.tiny_whisper import build_wav2vec2, build_whisper_ct2
from contracts.config import StageConfig, ModelsProfile
from contracts.stage import Batch, StageContract, StageFailure, run_rows

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
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


class AsrEngine(Protocol):
    """One loaded ASR model. Built as ``Engine(profile: ModelsProfile, config: StageConfig)``; called from one thread at a time."""

    def transcribe(self, pcm: np.ndarray, language: str | None) -> AsrResult:
        """Transcribe 16 kHz mono float32 ``pcm``; ``language`` forces a code, None detects it."""
        ...


class Transcribe:
    """Ray Data / Serve stage: 16 kHz mono ``pcm`` → language, segments and words on the media's time axis."""

    contract = StageContract(
        name="asr", reads=("asset_id", "pcm"),
        writes={"language": "str", "seg_start": "tensor[float64]", "seg_end": "tensor[float64]",
                "seg_text": "list[str]", "word_start": "tensor[float64]", "word_end": "tensor[float64]",
                "word_text": "list[str]"},
        drops=("pcm",),
    )

    def __init__(self, config: StageConfig) -> None:
        self._language = config.asr.language
        self._accelerator = accelerator()
        self._engine = load_engine(config.profile, config)
        self._lock = threading.Lock()

    def __call__(self, batch: Batch) -> Batch:
        # Serve may call from several threads; engines keep per-call state and one track fills the
        # device, so batches take turns. Timing inside the lock makes device seconds the seconds a
        # row held the model, not the seconds it queued for it.
        with self._lock:
            return run_rows(self.contract, batch, self._row, accelerator=self._accelerator,
                            empty=_columns(AsrResult(""), 0.0))

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        pcm = _checked_pcm(row["pcm"])
        duration = len(pcm) / SAMPLE_RATE
        result = self._engine.transcribe(pcm, self._language) if len(pcm) else AsrResult("")
        return _columns(result, duration)


def load_engine(profile: ModelsProfile, config: StageConfig) -> AsrEngine:
    """The engine the profile names; the transformers one is imported only when asked for."""
    if profile.asr_engine == "transformers":
        from actors.asr_transformers import TransformersWhisperEngine
        return TransformersWhisperEngine(profile, config)
    return WhisperXEngine(profile, config)


def _checked_pcm(pcm: Any) -> np.ndarray:
    """The row's samples, or a StageFailure saying why they cannot be audio."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.float32:
        got = f"{pcm.dtype} array of shape {pcm.shape}" if isinstance(pcm, np.ndarray) else type(pcm).__name__
        raise StageFailure(f"audio must be 16 kHz mono float32 samples (one 1-D array), got a {got}")
    bad = int(np.count_nonzero(~np.isfinite(pcm)))
    if bad:
        raise StageFailure(f"audio holds {bad} non-finite samples (NaN or infinity); the decoded track is corrupt")
    return pcm


def _columns(result: AsrResult, duration: float) -> dict[str, Any]:
    """Sorted spans clamped to [0, duration], as the contract's columns."""
    segs, words = _spans(result.segments, duration), _spans(result.words, duration)
    return {
        "language": result.language,
        "seg_start": segs[0], "seg_end": segs[1], "seg_text": segs[2],
        "word_start": words[0], "word_end": words[1], "word_text": words[2],
    }


def _spans(spans: list[TimedText], duration: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    kept = sorted((min(max(s.start, 0.0), duration), min(max(s.end, s.start, 0.0), duration), s.text.strip())
                  for s in spans if np.isfinite(s.start) and np.isfinite(s.end))
    return (np.asarray([k[0] for k in kept], dtype=np.float64), np.asarray([k[1] for k in kept], dtype=np.float64),
            [k[2] for k in kept])


class WhisperXEngine:
    """whisperX: Silero VAD → batched faster-whisper (CTranslate2) over merged speech chunks → wav2vec2 word alignment.

    Not thread-safe (whisperX's pipeline keeps per-call state, its tokenizer); Transcribe serialises calls.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig) -> None:
        import whisperx

        self._device = torch_device()
        self._batch_size = config.asr.batch_size
        self._chunk_s = config.asr.chunk_s
        self._vad = _silero_vad(config.asr.vad_onset, config.asr.vad_offset, config.asr.chunk_s)
        model_dir = resolve(profile.asr, "whisper-ct2", config.model_cache, build_tiny=build_whisper_ct2)
        self._pipeline = whisperx.load_model(
            model_dir, self._device, compute_type=_compute_type(config.asr.compute_type, self._device),
            vad_model=self._vad, language=None, threads=max(1, int(config.resources.asr.num_cpus)),
            vad_options={"chunk_size": config.asr.chunk_s, "vad_onset": config.asr.vad_onset,
                         "vad_offset": config.asr.vad_offset})
        forced = config.asr.language
        if forced is not None and forced not in self._pipeline.model.supported_languages:
            raise ValueError(f"asr.language {forced!r} is not a language this Whisper model knows "
                             f"(one of {', '.join(self._pipeline.model.supported_languages)})")
        self._aligner = None
        if config.asr.align_words and profile.align:
            align_dir = resolve(profile.align, "wav2vec2-align", config.model_cache, build_tiny=build_wav2vec2)
            model, metadata = whisperx.load_align_model("en", self._device, model_name=align_dir)
            self._aligner = (model, metadata["dictionary"], metadata["type"])

    def transcribe(self, pcm: np.ndarray, language: str | None) -> AsrResult:
        speech = self._vad.speech(pcm)
        if not speech:
            return AsrResult("")
        language = language or self._detect_language(pcm, speech)
        self._vad.answer_next_with(speech)
        out = self._pipeline.transcribe(pcm, batch_size=self._batch_size, language=language, chunk_size=self._chunk_s)
        segments = [TimedText(s["start"], s["end"], s["text"]) for s in out["segments"]]
        aligned = self._align(out["segments"], pcm, language) if self._aligner else None
        if aligned is None:
            return AsrResult(language, segments)
        return AsrResult(language, *aligned)

    def _detect_language(self, pcm: np.ndarray, speech: list) -> str:
        """Language of the first 30 s of speech (not of the first 30 s of the file, which may be music)."""
        probe = np.concatenate([pcm[int(s.start * SAMPLE_RATE):int(s.end * SAMPLE_RATE)] for s in speech])
        return self._pipeline.detect_language(probe[:int(LANGUAGE_PROBE_S * SAMPLE_RATE)])

    def _align(self, segments: list[dict], pcm: np.ndarray, language: str
               ) -> tuple[list[TimedText], list[TimedText]] | None:
        """Sentence segments and words from wav2vec2 alignment; None keeps whisper's segments and no words.

        Alignment fails for text the model's alphabet cannot spell (a language it was not trained on);
        that costs the words, never the row.
        """
        import whisperx

        model, dictionary, kind = self._aligner
        metadata = {"language": language, "dictionary": dictionary, "type": kind}
        try:
            out = whisperx.align(segments, model, metadata, pcm, self._device)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.warning("word alignment failed for language %r, keeping segment times: %s", language, e)
            return None
        segs = [TimedText(float(s["start"]), float(s["end"]), s["text"]) for s in out["segments"]]
        if not segs or not all(np.isfinite([s.start for s in segs] + [s.end for s in segs])):
            return None
        words = [TimedText(float(w["start"]), float(w["end"]), w["word"])
                 for w in out["word_segments"] if "start" in w and "end" in w]
        return segs, words


def _compute_type(requested: str, device: str) -> str:
    """'default' → float16 on CUDA, int8 on CPU, or float32 where the device lacks those kernels."""
    import ctranslate2

    if requested != "default":
        return requested
    supported = ctranslate2.get_supported_compute_types(device)
    preferred = "float16" if device == "cuda" else "int8"
    return preferred if preferred in supported else "float32"


def _silero_vad(onset: float, offset: float, chunk_s: float) -> Any:
    """whisperX's VAD interface around the Silero ONNX model faster-whisper ships (pyannote's needs a download).

    Silero's hysteresis is whisperX's: speech starts above ``onset`` and ends below ``offset``; whisperX
    then merges speech regions into chunks of at most ``chunk_s`` seconds.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps
    from whisperx.diarize import Segment
    from whisperx.vads import Vad

    class SileroOnnxVad(Vad):
        def __init__(self) -> None:
            super().__init__(onset)
            self._options = VadOptions(threshold=onset, neg_threshold=offset, max_speech_duration_s=chunk_s)
            self._next: list[Segment] | None = None

        def speech(self, pcm: np.ndarray) -> list[Segment]:
            """Speech regions in seconds."""
            stamps = get_speech_timestamps(pcm, self._options, sampling_rate=SAMPLE_RATE)
            return [Segment(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE, "UNKNOWN") for s in stamps]

        def answer_next_with(self, speech: list[Segment]) -> None:
            """The engine already ran VAD on this track; whisperX's own call gets that answer instead of a rerun."""
            self._next = speech

        def __call__(self, audio: dict, **kwargs: Any) -> list[Segment]:
            speech, self._next = self._next, None
            return speech if speech is not None else self.speech(audio["waveform"])

        @staticmethod
        def preprocess_audio(audio: np.ndarray) -> np.ndarray:
            return audio

        @staticmethod
        def merge_chunks(segments: list[Segment], chunk_size: float, onset: float = 0.5,
                         offset: float | None = None) -> list[dict]:
            return Vad.merge_chunks(segments, chunk_size, onset, offset) if segments else []

    return SileroOnnxVad()
