"""The ASR stage: speech → language, time-stamped segments and (aligned) words.

``Transcribe`` is engine-agnostic: it talks to an :class:`AsrEngine` chosen by the models profile
(``whisperx`` here; ``transformers`` in actors/asr_transformers.py for GPUs where CTranslate2's CUDA
build cannot run). Engines return raw times; the stage sorts, clamps to the audio and writes columns.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from actors.device import accelerator, torch_device
from actors.model_store import resolve
from actors.tiny_whisper import build_wav2vec2, build_whisper_ct2
from contracts.config import StageConfig, ModelsProfile
from contracts.stage import Batch, StageContract, StageFailure, finish

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
    """One loaded ASR model. Built as ``Engine(profile: ModelsProfile, config: StageConfig)``; called from one thread at a time.

    An engine that can decode several tracks together also offers ``transcribe_many(pcms, language)
    -> list[AsrResult]`` (one result per track, in order); see :func:`transcribe_many`.
    """

    def transcribe(self, pcm: np.ndarray, language: str | None) -> AsrResult:
        """Transcribe 16 kHz mono float32 ``pcm``; ``language`` forces a code, None detects it."""
        ...


def transcribe_many(engine: AsrEngine, pcms: list[np.ndarray], language: str | None) -> list[AsrResult]:
    """The engine's ``transcribe_many`` where it has one, else its tracks one after another."""
    many = getattr(engine, "transcribe_many", None)
    return many(pcms, language) if many else [engine.transcribe(pcm, language) for pcm in pcms]


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
        # Serve may call from several threads; engines keep per-call state and one batch fills the
        # device, so batches take turns. Timing inside the lock makes device seconds the seconds a
        # row held the model, not the seconds it queued for it.
        with self._lock:
            n = self.contract.check_input(batch)
            errors, stages = list(batch["error"]), list(batch["error_stage"])
            pcms: dict[int, np.ndarray] = {}
            for i in range(n):
                if not errors[i]:
                    try:
                        pcms[i] = _checked_pcm(batch["pcm"][i])
                    except StageFailure as e:
                        stages[i], errors[i] = self.contract.name, str(e)
            heard, seconds = self._hear(pcms)
            out: dict[str, list[Any]] = {c: [] for c in (*self.contract.writes, *self.contract.metric_columns)}
            for i in range(n):
                got = heard.get(i)
                if isinstance(got, Exception):
                    stages[i], errors[i] = self.contract.name, _message(got)
                values = _columns(got if isinstance(got, AsrResult) else AsrResult(""),
                                  len(pcms[i]) / SAMPLE_RATE if i in pcms else 0.0)
                for c in self.contract.writes:
                    out[c].append(values[c])
                # A row that failed upstream never reached the model: no time, so no metrics row.
                spent = float("nan") if batch["error"][i] else seconds.get(i, 0.0)
                out[f"{self.contract.name}_wall_s"].append(spent)
                out[f"{self.contract.name}_device_s"].append(spent)
                out[f"{self.contract.name}_accel"].append(self._accelerator)
            return finish(self.contract, batch, out, stages, errors)

    def _hear(self, pcms: dict[int, np.ndarray]) -> tuple[dict[int, AsrResult | Exception], dict[int, float]]:
        """Every row's result (or exception) and its model seconds, rows keyed by batch index.

        All audible rows go to the engine together, so it can decode their speech in shared batches;
        each row is charged a share of that time in proportion to its length. If the shared call
        fails, the rows are retried one by one so that a failure lands on the row that caused it.
        """
        heard: dict[int, AsrResult | Exception] = {i: AsrResult("") for i in pcms}
        audible = {i: pcm for i, pcm in pcms.items() if len(pcm)}
        if not audible:
            return heard, {}
        t0 = time.perf_counter()
        try:
            heard.update(zip(audible, transcribe_many(self._engine, list(audible.values()), self._language)))
            failed = False
        except Exception as e:  # noqa: BLE001 - retried row by row below
            log.warning("transcribing %d rows together failed (%s: %s); retrying them one by one",
                        len(audible), type(e).__name__, e)
            failed = True
        spent = time.perf_counter() - t0
        total = sum(len(pcm) for pcm in audible.values())
        seconds = {i: spent * len(pcm) / total for i, pcm in audible.items()}
        if failed:
            for i, pcm in audible.items():
                t0 = time.perf_counter()
                try:
                    heard[i] = self._engine.transcribe(pcm, self._language)
                except Exception as e:  # noqa: BLE001 - one bad file must not kill the batch
                    heard[i] = e
                seconds[i] += time.perf_counter() - t0
        return heard, seconds


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


def _message(e: Exception) -> str:
    """What a failed row's ``error`` says: a StageFailure's own sentence, else the exception and its type."""
    return str(e) if isinstance(e, StageFailure) else f"{type(e).__name__}: {e}"


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


@dataclass
class _Track:
    """One track on its way through shared decoding: its language, VAD chunks (whisperX's dicts, in seconds) and their texts."""

    pcm: np.ndarray
    language: str
    chunks: list[dict]
    texts: list[str] = field(default_factory=list)


class WhisperXEngine:
    """whisperX: Silero VAD → batched faster-whisper (CTranslate2) over merged speech chunks → wav2vec2 word alignment.

    The chunks of all tracks handed over together share decoder batches (whisperX alone batches only
    within one track), so concurrent short requests fill the batch a long file would.
    Not thread-safe (whisperX's model keeps per-call state); Transcribe serialises calls.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig) -> None:
        import whisperx

        self._device = torch_device()
        self._batch_size = config.asr.batch_size
        self._vad = _SileroVad(config.asr.vad_onset, config.asr.vad_offset, config.asr.chunk_s)
        model_dir = resolve(profile.asr, "whisper-ct2", config.model_cache, build_tiny=build_whisper_ct2)
        # whisperX's own transcribe() is not used (it batches one track); the VAD given here only
        # keeps load_model from loading pyannote's, which needs a download.
        self._pipeline = whisperx.load_model(
            model_dir, self._device, compute_type=_compute_type(config.asr.compute_type, self._device),
            vad_model=self._vad, language=None, threads=max(1, int(config.resources.asr.num_cpus)))
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
        return self.transcribe_many([pcm], language)[0]

    def transcribe_many(self, pcms: list[np.ndarray], language: str | None) -> list[AsrResult]:
        """VAD and language per track, the speech chunks of all tracks decoded together, alignment per track."""
        tracks = [self._track(pcm, language) for pcm in pcms]
        self._decode(tracks)
        return [self._result(t) for t in tracks]

    def _track(self, pcm: np.ndarray, language: str | None) -> _Track:
        speech = self._vad.speech(pcm)
        if not speech:
            return _Track(pcm, "", [])
        return _Track(pcm, language or self._detect_language(pcm, speech), self._vad.chunks(speech))

    def _decode(self, tracks: list[_Track]) -> None:
        """Fill each track's ``texts``: all chunks through whisperX's batched decoder, ``batch_size`` at a time.

        A batch shares one prompt, and the prompt carries the language token, so chunks are batched
        per language. Each chunk is padded to Whisper's 30 s window on its own, as whisperX does.
        """
        import torch
        from faster_whisper.tokenizer import Tokenizer

        model = self._pipeline.model
        by_language: dict[str, list[tuple[_Track, int]]] = {}
        for t in tracks:
            t.texts = [""] * len(t.chunks)
            if t.chunks:
                by_language.setdefault(t.language, []).extend((t, k) for k in range(len(t.chunks)))
        for language, chunks in by_language.items():
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
            for b in range(0, len(chunks), self._batch_size):
                part = chunks[b:b + self._batch_size]
                features = torch.stack([self._features(t.pcm, t.chunks[k]) for t, k in part])
                for (t, k), text in zip(part, model.generate_segment_batched(features, tokenizer, self._pipeline.options)):
                    t.texts[k] = text

    def _features(self, pcm: np.ndarray, chunk: dict) -> Any:
        """whisperX's log-mel features of one chunk (its own preprocessing step)."""
        samples = pcm[int(chunk["start"] * SAMPLE_RATE):int(chunk["end"] * SAMPLE_RATE)]
        return self._pipeline.preprocess({"inputs": samples})["inputs"]

    def _result(self, t: _Track) -> AsrResult:
        if not t.chunks:
            return AsrResult(t.language)
        # whisperX's segment shape: one segment per chunk, times rounded to the millisecond
        segments = [{"text": text, "start": round(c["start"], 3), "end": round(c["end"], 3)}
                    for c, text in zip(t.chunks, t.texts)]
        aligned = self._align(segments, t.pcm, t.language) if self._aligner else None
        if aligned is None:
            return AsrResult(t.language, [TimedText(s["start"], s["end"], s["text"]) for s in segments])
        return AsrResult(t.language, *aligned)

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


class _SileroVad:
    """Speech regions from the Silero ONNX model faster-whisper ships (pyannote's, whisperX's default, needs a download).

    Silero's hysteresis is whisperX's: speech starts above ``onset`` and ends below ``offset``;
    whisperX's merge then joins speech regions into chunks of at most ``chunk_s`` seconds.
    """

    def __init__(self, onset: float, offset: float, chunk_s: float) -> None:
        from faster_whisper.vad import VadOptions

        self._options = VadOptions(threshold=onset, neg_threshold=offset, max_speech_duration_s=chunk_s)
        self._chunk_s = chunk_s

    def speech(self, pcm: np.ndarray) -> list[Any]:
        """Speech regions in seconds (whisperX segments)."""
        from faster_whisper.vad import get_speech_timestamps
        from whisperx.diarize import Segment

        stamps = get_speech_timestamps(pcm, self._options, sampling_rate=SAMPLE_RATE)
        return [Segment(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE, "UNKNOWN") for s in stamps]

    def chunks(self, speech: list[Any]) -> list[dict]:
        """Non-empty ``speech`` merged into whisperX chunks (``{"start", "end", ...}`` in seconds)."""
        from whisperx.vads import Vad

        return Vad.merge_chunks(speech, self._chunk_s, onset=self._options.threshold, offset=None)
