"""Fixed-length ASR and VLM stages for the GPU run of benchmarks/serve_bench.py (bench-only).

Random weights stop at arbitrary points, so without this two concurrency levels would not do the
same work. These subclasses of the real stages decode exactly N tokens per request (EOS ignored, no
JSON schema, as gpu_throughput.py's batch benchmark does): every VLM answer
``$CORPUSFLOW_BENCH_VLM_TOKENS``, every ASR chunk ``$CORPUSFLOW_BENCH_ASR_TOKENS``. The bench sets
both before Ray starts, so replicas inherit them (a stage constructor only receives the StageConfig,
and ``vlm.max_new_tokens`` must stay large enough for Describe's answer-budget check). The VLM's answers are
therefore not JSON and each analyzed row carries that error: expected in this mode, and the request
still answers 200 like any row-level failure.
"""
from __future__ import annotations

import os
from dataclasses import replace

from corpusflow.actors.asr import Transcribe
from corpusflow.actors.vlm import Describe
from corpusflow.actors.engines.vlm import VlmEngine, VlmRequest
from benchmarks.gpu_throughput import fixed_transformers_engine
from corpusflow.contracts.config import StageConfig

ASR_TOKENS_ENV = "CORPUSFLOW_BENCH_ASR_TOKENS"
VLM_TOKENS_ENV = "CORPUSFLOW_BENCH_VLM_TOKENS"


class FixedTranscribe(Transcribe):
    """Transcribe whose Whisper (transformers or vLLM) decodes exactly ``$CORPUSFLOW_BENCH_ASR_TOKENS`` tokens per chunk."""

    def __init__(self, config: StageConfig) -> None:
        super().__init__(config)
        if not hasattr(self._engine, "fixed_output_tokens"):
            raise TypeError("the fixed-length benchmark needs asr_engine: transformers or vllm in its models profile")
        self._engine.fixed_output_tokens = int(os.environ[ASR_TOKENS_ENV])


def fixed_vllm_engine(config: StageConfig, tokens: int) -> VlmEngine:
    """Our vLLM engine with every request's answer exactly ``tokens`` tokens long, unconstrained.

    Describe's requests carry ``vlm.max_new_tokens`` (its answer budget), so the length is set here.
    """
    from corpusflow.actors.engines.vlm_vllm import VllmEngine

    engine = VllmEngine(config.profile, config.model_cache, fixed_output_tokens=True)
    generate = engine.generate

    def fixed(requests: list[VlmRequest]) -> list[str]:
        return generate([replace(r, max_new_tokens=tokens) for r in requests])
    engine.generate = fixed  # type: ignore[method-assign]
    return engine


class FixedDescribe(Describe):
    """Describe on the profile's VLM engine (transformers or vLLM), every answer exactly
    ``$CORPUSFLOW_BENCH_VLM_TOKENS`` tokens, unconstrained."""

    def __init__(self, config: StageConfig) -> None:
        tokens = int(os.environ[VLM_TOKENS_ENV])
        fixed = fixed_vllm_engine if config.profile.vlm_engine == "vllm" else fixed_transformers_engine
        super().__init__(config, engine=fixed(config, tokens))
