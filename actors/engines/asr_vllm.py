"""Whisper on vLLM: the ASR engine for GPU workers (``asr_engine: vllm``, the ``corpusflow[gpu]`` extra).

vLLM runs Whisper's decoder with CUDA graphs and schedules the speech chunks of every track handed
over as one continuous batch (16 decoder batches per call), so a short file's chunks ride along with a long file's. Each chunk is
decoded in Whisper's timestamp mode: the decoded ``<|t|>`` tokens split the chunk into timed segments
(``asr.segment_timestamps``; off, each chunk is one segment, as the other engines write), and the
profile's wav2vec2 aligner (asr_align.py) places the words after that. Any Whisper checkpoint in
transformers layout works: large-v3, or large-v3-turbo (4 decoder layers instead of 32) for speed.
vLLM is imported only when this engine is built, so workers without it run the other engines.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from corpusflow.actors.engines.asr import SAMPLE_RATE, AsrResult, Decoding, SpeechTrack, TimedText
from corpusflow.actors.engines.asr_align import WordAligner
from corpusflow.actors.models.compile_cache import cache_env, local_compile_cache, publish_compile_cache
from corpusflow.actors.models.device import accelerator, torch_device
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import ModelsProfile, StageConfig

TIMESTAMP_STEP_S = 0.02  # <|0.00|>, <|0.02|>, ... <|30.00|>
# Test-size checkpoints (narrower than this) run eagerly in float32 with a small start-up check: compiling
# and capturing CUDA graphs would take longer than the tests run.
_TEST_SIZE_WIDTH = 512
_TEST_GPU_MEMORY = 0.05
_CALL_BATCHES = 16  # decoder batches (asr.batch_size chunks each) handed to one generate call


@dataclass(frozen=True)
class WhisperTokens:
    """The ids a prompt and its parsing need, read from the checkpoint's tokenizer."""

    end_of_text: int  # <|endoftext|>: text tokens come before it, special tokens after
    first_timestamp: int  # <|0.00|>: every id from here on is a time
    languages: dict[int, str]  # <|en|> id → 'en'

    @classmethod
    def of(cls, tokenizer: Any) -> "WhisperTokens":
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        end, first = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|0.00|>")
        ids = {code: tokenizer.convert_tokens_to_ids(f"<|{code}|>") for code in LANGUAGES}
        # A code the checkpoint lacks (an English-only or older model) maps to the unknown token: not a language.
        return cls(end_of_text=end, first_timestamp=first,
                   languages={i: code for code, i in ids.items() if isinstance(i, int) and end < i < first})


def decoder_prompt(language: str, timestamps: bool) -> str:
    """Whisper's decoder prefix for transcription; in timestamp mode it opens the first segment at 0.00 s."""
    return f"<|startoftranscript|><|{language}|><|transcribe|>" + ("<|0.00|>" if timestamps else "<|notimestamps|>")


def timed_segments(token_ids: Sequence[int], chunk: tuple[float, float], tokens: WhisperTokens,
                   decode: Callable[[list[int]], str]) -> list[TimedText]:
    """One chunk's decoded ids (after a prompt ending in ``<|0.00|>``) → segments on the track's time axis.

    A timestamp closes the open segment if it holds text, else it moves the open segment's start
    (Whisper writes ``… <|2.40|><|2.40|> …`` between segments). Times never run backwards and never
    leave the chunk, whatever a model emits; text after the last timestamp ends at the chunk's end.
    Ids that are neither text nor time (other special tokens) are dropped.
    """
    start, end = chunk
    length = end - start
    spans: list[tuple[float, float, list[int]]] = []
    opened, text = 0.0, []
    for tok in token_ids:
        if tok >= tokens.first_timestamp:
            t = min(max((tok - tokens.first_timestamp) * TIMESTAMP_STEP_S, opened), length)
            if text:
                spans.append((opened, t, text))
                text = []
            opened = t
        elif tok < tokens.end_of_text:
            text.append(tok)
    if text:
        spans.append((opened, length, text))
    out = [TimedText(start + a, start + b, decode(ids)) for a, b, ids in spans]
    return [s for s in out if s.text.strip()]


def kv_cache_bytes(hf_config: dict, sequences: int, dtype_bytes: int) -> int:
    """KV cache for ``sequences`` chunks decoded at once: cross-attention over the encoder's positions plus
    self-attention over the longest answer, in every decoder layer, with a quarter more for block rounding.

    Sized, not profiled: the engine shares its GPU with live tenants (the VLM engine), whose memory
    moves while vLLM would profile (docs/benchmarks.md, run 2).
    """
    per_token = 2 * hf_config["decoder_layers"] * hf_config["d_model"] * dtype_bytes
    positions = hf_config["max_source_positions"] + hf_config["max_target_positions"]
    return int(1.25 * sequences * positions * per_token)


def engine_kwargs(config: StageConfig, hf_config: dict) -> dict[str, Any]:
    """``vllm.LLM`` arguments: the job's ASR settings; the actor's GPU share is vLLM's start-up check only."""
    test_size = hf_config["d_model"] < _TEST_SIZE_WIDTH
    dtype = "float32" if config.asr.compute_type == "float32" or test_size else "float16"
    share = float(config.resources.asr.num_gpus) or 1.0
    return {
        "dtype": dtype,
        "max_num_seqs": config.asr.batch_size,
        "kv_cache_memory_bytes": kv_cache_bytes(hf_config, config.asr.batch_size, 4 if dtype == "float32" else 2),
        "gpu_memory_utilization": min(share, _TEST_GPU_MEMORY if test_size else 0.9),
        "limit_mm_per_prompt": {"audio": 1},
        "enforce_eager": test_size,
        "seed": 0,
    }


class VllmWhisperEngine:
    """``vllm.LLM`` over a Whisper checkpoint on this process's GPU; see the module docstring.

    ``fixed_output_tokens`` is for benchmarks: every chunk decodes exactly that many tokens (EOS
    ignored), so that runs compare equal work whatever a random-weight model would emit.
    """

    def __init__(self, profile: ModelsProfile, config: StageConfig, fixed_output_tokens: int | None = None) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("asr_engine 'vllm' needs vLLM on this worker: pip install 'corpusflow[gpu]'") from e

        path = resolve(profile.asr, "whisper-hf", config.model_cache)
        hf_config = _hf_config(path)
        # Compile artifacts from model_cache (or the store), published there after a cold start; the engine
        # process vLLM spawns inherits these variables
        os.environ.update(cache_env(local_compile_cache(profile.asr, accelerator(), config.model_cache)))
        self._llm = LLM(model=path, **engine_kwargs(config, hf_config))
        publish_compile_cache(profile.asr, accelerator(), config.model_cache)
        self._tokenizer = self._llm.get_tokenizer()
        self._tokens = WhisperTokens.of(self._tokenizer)
        forced = config.asr.language
        if forced is not None and forced not in self._tokens.languages.values():
            raise ValueError(f"asr.language {forced!r} is not a language this Whisper model knows "
                             f"(one of {', '.join(sorted(self._tokens.languages.values()))})")
        self._timestamps = config.asr.segment_timestamps
        self._batch_size = config.asr.batch_size
        self._max_tokens = int(hf_config["max_target_positions"]) - 4  # the prompt's four tokens
        self.fixed_output_tokens = fixed_output_tokens
        self._aligner = WordAligner(profile, config, torch_device()) if WordAligner.wanted(profile, config) else None

    @staticmethod
    def _prompt(samples: Any, decoder: str) -> dict[str, Any]:
        return {"encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (samples, SAMPLE_RATE)}},
                "decoder_prompt": decoder}

    def _detect_languages(self, tracks: list[SpeechTrack]) -> list[str]:
        """Each track's language from its first 30 s of speech: one token, constrained to language tokens."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=sorted(self._tokens.languages))
        prompts = [self._prompt(t.language_probe(), "<|startoftranscript|>") for t in tracks]
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        return [self._tokens.languages.get(o.outputs[0].token_ids[0], "") for o in outputs]

    def transcribe_many(self, tracks: list[SpeechTrack], language: str | None) -> list[AsrResult]:
        """Languages of the tracks that need one, then every chunk of every track, in as few generate calls as fit."""
        from vllm import SamplingParams

        speaking = [t for t in tracks if t.chunks]
        detected = iter(self._detect_languages(speaking) if speaking and language is None else [])
        work = [Decoding(t, (language or next(detected)) if t.chunks else "") for t in tracks]
        fixed = self.fixed_output_tokens
        params = SamplingParams(temperature=0.0, max_tokens=fixed or self._max_tokens, skip_special_tokens=False,
                                **({"min_tokens": fixed, "ignore_eos": True} if fixed else {}))
        chunks = [(d, k) for d in work for k in range(len(d.track.chunks))]
        segments: dict[int, list[TimedText]] = {id(d): [] for d in work}
        # Chunks go over in calls of ``_CALL_BATCHES`` decoder batches: vLLM's scheduler stays full, and
        # no more than that many chunks are float32 at once, however long the tracks.
        per_call = _CALL_BATCHES * self._batch_size
        for first in range(0, len(chunks), per_call):
            part = chunks[first:first + per_call]
            prompts = [self._prompt(d.track.samples(k), decoder_prompt(d.language or "en", self._timestamps))
                       for d, k in part]
            for (d, k), out in zip(part, self._llm.generate(prompts, params, use_tqdm=False)):
                segments[id(d)].extend(self._segments(list(out.outputs[0].token_ids), d.track.chunks[k]))
        return [self._result(d, segments[id(d)]) for d in work]

    def _segments(self, ids: list[int], chunk: tuple[float, float]) -> list[TimedText]:
        if self._timestamps:
            return timed_segments(ids, chunk, self._tokens, self._decode)
        return [TimedText(chunk[0], chunk[1], self._decode([i for i in ids if i < self._tokens.end_of_text]))]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _result(self, d: Decoding, segments: list[TimedText]) -> AsrResult:
        aligned = self._aligner.align(segments, d.track, d.language) if self._aligner and segments else None
        return AsrResult(d.language, *aligned) if aligned else AsrResult(d.language, segments)


def _hf_config(path: str) -> dict:
    """The checkpoint's config.json (a local folder, or a hub id resolved through transformers' cache)."""
    local = Path(path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).to_dict()
