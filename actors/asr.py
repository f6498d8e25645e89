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
from typing import Any, Iterator, Protocol

import numpy as np

from actors.device import accelerator, torch_device
from actors.model_store import resolve
from actors.tiny_whisper import build_wav2vec2, build_whisper_ct2
from contracts.config import StageConfig, ModelsProfile
from contracts.stage import Batch, StageContract, StageFailure, failure_message, finish

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


@dataclass(frozen=True)
class SpeechTrack:
    """One track to transcribe: its 16 kHz mono float32 samples and the speech chunks to decode.

    ``chunks`` are (start_s, end_s) on the track's time axis, as actors/speech.py:DetectSpeech
    merged them (each at most ``asr.chunk_s`` long); none means nothing to decode.
    """

    pcm: np.ndarray
    chunks: list[tuple[float, float]]

    def samples(self, chunk: tuple[float, float]) -> np.ndarray:
        return self.pcm[round(chunk[0] * SAMPLE_RATE):round(chunk[1] * SAMPLE_RATE)]

    def language_probe(self) -> np.ndarray:
        """The first 30 s of speech, where the language is detected (not the file's first 30 s, which may be music)."""
        need, parts, got = int(LANGUAGE_PROBE_S * SAMPLE_RATE), [], 0
        for chunk in self.chunks:  # only as many chunks as the probe needs, not the whole track
            parts.append(self.samples(chunk))
            got += len(parts[-1])
            if got >= need:
                break
        return np.concatenate(parts)[:need]


class AsrEngine(Protocol):
    """One loaded ASR model. Built as ``Engine(profile: ModelsProfile, config: StageConfig)``; called from one thread at a time."""

    def transcribe_many(self, tracks: list[SpeechTrack], language: str | None) -> list[AsrResult]:
        """One result per track, in order; ``language`` forces a code, None detects it per track.

        The chunks of all tracks share decoder batches, so concurrent short requests fill the batch a
        long file would; each track's result is the one it gets when transcribed alone.
        """
        ...


class Transcribe:
    """Ray Data / Serve stage: ``pcm`` and its speech chunks → language, segments and words on the media's time axis."""

    contract = StageContract(
        name="asr", reads=("asset_id", "pcm", "speech_start_s", "speech_end_s"),
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
            tracks: dict[int, SpeechTrack] = {}
            for i in range(n):
                if not errors[i]:
                    try:
                        tracks[i] = _checked_track(batch["pcm"][i], batch["speech_start_s"][i], batch["speech_end_s"][i])
                    except StageFailure as e:
                        stages[i], errors[i] = self.contract.name, str(e)
            heard, seconds = self._hear(tracks)
            out: dict[str, list[Any]] = {c: [] for c in (*self.contract.writes, *self.contract.metric_columns)}
            for i in range(n):
                got = heard.get(i)
                if isinstance(got, Exception):
                    stages[i], errors[i] = self.contract.name, failure_message(got)
                values = _columns(got if isinstance(got, AsrResult) else AsrResult(""),
                                  len(tracks[i].pcm) / SAMPLE_RATE if i in tracks else 0.0)
                for c in self.contract.writes:
                    out[c].append(values[c])
                # A row that failed upstream never reached the model: no time, so no metrics row.
                spent = float("nan") if batch["error"][i] else seconds.get(i, 0.0)
                out[f"{self.contract.name}_wall_s"].append(spent)
                out[f"{self.contract.name}_device_s"].append(spent)
                out[f"{self.contract.name}_accel"].append(self._accelerator)
            return finish(self.contract, batch, out, stages, errors)

    def _hear(self, tracks: dict[int, SpeechTrack]) -> tuple[dict[int, AsrResult | Exception], dict[int, float]]:
        """Every row's result (or exception) and its model seconds, rows keyed by batch index.

        All rows with speech go to the engine together, so it can decode their chunks in shared
        batches; each row is charged a share of that time in proportion to its chunks (each is
        padded to Whisper's 30 s window, so chunks, not seconds, are the work). If the shared call
        fails, the rows are retried one by one so that a failure lands on the row that caused it.
        """
        heard: dict[int, AsrResult | Exception] = {i: AsrResult("") for i in tracks}
        speaking = {i: t for i, t in tracks.items() if t.chunks}
        if not speaking:
            return heard, {}
        t0 = time.perf_counter()
        try:
            heard.update(zip(speaking, self._engine.transcribe_many(list(speaking.values()), self._language)))
            failed = False
        except Exception as e:  # noqa: BLE001 - retried row by row below
            log.warning("transcribing %d rows together failed (%s: %s); retrying them one by one",
                        len(speaking), type(e).__name__, e)
            failed = True
        spent = time.perf_counter() - t0
        total = sum(len(t.chunks) for t in speaking.values())
        seconds = {i: spent * len(t.chunks) / total for i, t in speaking.items()}
        if failed:
            for i, t in speaking.items():
                t0 = time.perf_counter()
                try:
                    heard[i] = self._engine.transcribe_many([t], self._language)[0]
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


def checked_pcm(pcm: Any) -> np.ndarray:
    """The row's samples, or a StageFailure saying why they cannot be audio."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.float32:
        got = f"{pcm.dtype} array of shape {pcm.shape}" if isinstance(pcm, np.ndarray) else type(pcm).__name__
        raise StageFailure(f"audio must be 16 kHz mono float32 samples (one 1-D array), got a {got}")
    bad = int(np.count_nonzero(~np.isfinite(pcm)))
    if bad:
        raise StageFailure(f"audio holds {bad} non-finite samples (NaN or infinity); the decoded track is corrupt")
    return pcm


def _checked_track(pcm: Any, starts: Any, ends: Any) -> SpeechTrack:
    """The row's samples and speech chunks, or a StageFailure saying what is wrong with them."""
    pcm = checked_pcm(pcm)
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    duration = len(pcm) / SAMPLE_RATE
    if starts.ndim != 1 or starts.shape != ends.shape or not np.all(np.isfinite(starts) & np.isfinite(ends)) \
            or np.any(starts < 0) or np.any(ends <= starts) or np.any(ends > duration + 1 / SAMPLE_RATE):
        raise StageFailure(f"speech chunks (speech_start_s/speech_end_s) must be finite, non-empty spans inside "
                           f"the {duration:.3f} s of audio; got {len(starts)} starts and {len(ends)} ends")
    return SpeechTrack(pcm, [(float(a), float(b)) for a, b in zip(starts, ends)])


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
class Decoding:
    """One track on its way through an engine's shared decoding: the track, its language, its chunks' texts."""

    track: SpeechTrack
    language: str
    texts: list[str] = field(default_factory=list)


def chunk_batches(work: list[Decoding], batch_size: int) -> Iterator[tuple[str, list[tuple[Decoding, int]]]]:
    """Every chunk of every track as decoder batches ``(language, [(track, chunk index), ...])``.

    A batch shares one prompt and the prompt carries the language token, so a batch holds one
    language. Batches are as few as ``batch_size`` allows and balanced (67 chunks at 64 → 34 + 33,
    not 64 + 3), so no batch pays full price for a few chunks. Resets each track's ``texts``.
    """
    by_language: dict[str, list[tuple[Decoding, int]]] = {}
    for d in work:
        d.texts = [""] * len(d.track.chunks)
        if d.track.chunks:
            by_language.setdefault(d.language, []).extend((d, k) for k in range(len(d.track.chunks)))
    for language, chunks in by_language.items():
        n = -(-len(chunks) // batch_size)
        size, extra = divmod(len(chunks), n)
        start = 0
        for b in range(n):
            end = start + size + (b < extra)
            yield language, chunks[start:end]
            start = end


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
        model_dir = resolve(profile.asr, "whisper-ct2", config.model_cache, build_tiny=build_whisper_ct2)
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
        self._aligner = None
        if config.asr.align_words and profile.align:
            align_dir = resolve(profile.align, "wav2vec2-align", config.model_cache, build_tiny=build_wav2vec2)
            model, metadata = whisperx.load_align_model("en", self._device, model_name=align_dir)
            self._aligner = (model, metadata["dictionary"], metadata["type"])

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
        if not d.track.chunks:
            return AsrResult(d.language)
        # whisperX's segment shape: one segment per chunk, times rounded to the millisecond
        segments = [{"text": text, "start": round(a, 3), "end": round(b, 3)}
                    for (a, b), text in zip(d.track.chunks, d.texts)]
        aligned = self._align(segments, d.track.pcm, d.language) if self._aligner else None
        if aligned is None:
            return AsrResult(d.language, [TimedText(s["start"], s["end"], s["text"]) for s in segments])
        return AsrResult(d.language, *aligned)

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


_NO_VAD = object()  # see WhisperXEngine.__init__


def _compute_type(requested: str, device: str) -> str:
    """'default' → float16 on CUDA, int8 on CPU, or float32 where the device lacks those kernels."""
    import ctranslate2

    if requested != "default":
        return requested
    supported = ctranslate2.get_supported_compute_types(device)
    preferred = "float16" if device == "cuda" else "int8"
    return preferred if preferred in supported else "float32"
