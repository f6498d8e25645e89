"""The vLLM engine behind the VLM interface (actors/engines/vlm.py), for GPU workers.

vLLM batches continuously across requests and runs CUDA graphs, which is where the GPU path gets
its throughput. :class:`VllmEngine` drives vLLM's asynchronous engine (``AsyncLLM``) from a private
event loop, so a request joins the batch already running the moment it is submitted, from any
thread: the online API hands each request over as it arrives instead of gathering a batch and
waiting for it to finish as a whole. Prompts are the same chat messages as the transformers engine builds, and answers
are JSON-schema constrained by vLLM's structured outputs (xgrammar), with free whitespace off for
the reason the transformers engine gives. :func:`engine_kwargs` is the one place that turns a
profile's per-GPU options into vLLM engine arguments: our engine, Ray Data's ``ray.data.llm``
processor (flows/vllm_stage.py) and Ray Serve LLM all take that dict.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import threading
from typing import Any, Coroutine, TypeVar

from corpusflow.actors.models.compile_cache import cache_env, local_compile_cache, publish_compile_cache
from corpusflow.actors.models.device import accelerator
from corpusflow.actors.models.store import resolve
from corpusflow.actors.engines.vlm import PromptCounter, VlmRequest, processor_kwargs
from corpusflow.contracts.config import ModelsProfile, VlmEngineOptions

T = TypeVar("T")

# Fraction of a GPU the tiny-random model needs; keeps the tests from reserving a whole H200.
_TINY_GPU_MEMORY = 0.1


def engine_kwargs(opts: VlmEngineOptions, tiny: bool = False) -> dict[str, Any]:
    """vLLM engine arguments for one accelerator type's options (``ModelsProfile.options_for``).

    The same dict goes to our engine actors and to the ``ray_data_llm`` baseline of
    benchmarks/gpu_throughput.py, so both run with equal settings. ``tiny`` (the tiny-random model of
    the tests) skips compilation and CUDA graphs, which would
    take longer than everything the tests run.
    """
    # Options left unset keep vLLM's own defaults, so a profile names only what it tunes.
    tuned = {k: v for k, v in {"kv_cache_memory_bytes": opts.kv_cache_memory_bytes,
                               "max_num_batched_tokens": opts.max_num_batched_tokens,
                               "renderer_num_workers": opts.renderer_num_workers,
                               "mm_processor_cache_gb": opts.mm_processor_cache_gb,
                               "enable_prefix_caching": opts.enable_prefix_caching,
                               "quantization": opts.quantization}.items() if v is not None}
    if opts.kv_cache_dtype != "auto":
        tuned["kv_cache_dtype"] = opts.kv_cache_dtype
    frame_pixels = processor_kwargs(opts)
    if frame_pixels:
        tuned["mm_processor_kwargs"] = frame_pixels
    return {
        **tuned,
        "enforce_eager": tiny,
        "dtype": opts.dtype,
        "max_model_len": opts.max_model_len,
        "gpu_memory_utilization": min(opts.gpu_memory_utilization, _TINY_GPU_MEMORY) if tiny
        else opts.gpu_memory_utilization,
        "max_num_seqs": opts.max_num_seqs,
        # Frames travel as images (each preceded by its timestamp); videos are never passed as such.
        "limit_mm_per_prompt": {"image": opts.max_frames, "video": 0},
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "seed": 0,
    }


def model_path(profile: ModelsProfile, cache_dir: str) -> str:
    """The VLM's local folder (synced from S3, or the tiny random model built) once per node."""
    return resolve(profile.vlm, "qwen2_5_vl", cache_dir)


def sampling_params(max_new_tokens: int, json_schema: dict | None,
                    fixed_output_tokens: bool = False) -> dict[str, Any]:
    """``vllm.SamplingParams`` fields of one request: greedy and schema-constrained.

    ``fixed_output_tokens`` is for benchmarks: exactly ``max_new_tokens`` tokens, no schema, EOS
    ignored, so that every engine compared does the same decoding work.
    """
    if fixed_output_tokens:
        return {"temperature": 0.0, "max_tokens": max_new_tokens, "min_tokens": max_new_tokens, "ignore_eos": True}
    return {"temperature": 0.0, "max_tokens": max_new_tokens, "structured_outputs": {"json": json_schema}}


class VllmEngine:
    """Qwen2.5-VL through vLLM's ``AsyncLLM`` on this process's GPU, shaped by the profile's options for it.

    ``generate`` may be called from many threads at once; every call's requests enter the one running
    batch (``admits_concurrent_calls``), so callers never wait for each other's batches to end.
    """

    name = "vllm"
    admits_concurrent_calls = True

    def __init__(self, profile: ModelsProfile, cache_dir: str, fixed_output_tokens: bool = False):
        from transformers import AutoProcessor

        opts = profile.options_for(accelerator())
        self.model_id = profile.vlm
        self.max_frames = opts.max_frames
        self.max_model_len = opts.max_model_len
        self._fixed = fixed_output_tokens
        path = model_path(profile, cache_dir)
        self._counter = PromptCounter(AutoProcessor.from_pretrained(path, **processor_kwargs(opts)))
        self._count_lock = threading.Lock()  # a fast tokenizer is not safe to share between threads
        self._ids = itertools.count()
        # The engine's output handler runs as a task on the loop it was created on: one loop, one thread, for life.
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True).start()
        # Compile artifacts from model_cache (or the store), published there after a cold start
        os.environ.update(cache_env(local_compile_cache(profile.vlm, accelerator(), cache_dir)))
        self._llm = self._on_loop(self._start(path, engine_kwargs(opts, tiny=profile.vlm == "tiny-random")))
        publish_compile_cache(profile.vlm, accelerator(), cache_dir)

    @staticmethod
    async def _start(path: str, kwargs: dict[str, Any]) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=path, disable_log_stats=True, **kwargs))

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def count_tokens(self, request: VlmRequest) -> int:
        with self._count_lock:
            return self._counter(request)

    def generate(self, requests: list[VlmRequest]) -> list[str]:
        """The answers of ``requests``, which join whatever the engine is already running."""
        from PIL import Image
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        prompts, params = [], []
        for r in requests:
            with self._count_lock:
                prompt: dict[str, Any] = {"prompt": self._counter.prompt(r)}
            if len(r.frames):
                prompt["multi_modal_data"] = {"image": [Image.fromarray(f) for f in r.frames]}
            prompts.append(prompt)
            fields = sampling_params(r.max_new_tokens, r.json_schema, self._fixed)
            if "structured_outputs" in fields:
                fields["structured_outputs"] = StructuredOutputsParams(**fields["structured_outputs"])
            params.append(SamplingParams(**fields, output_kind=RequestOutputKind.FINAL_ONLY))
        return self._on_loop(self._answers(prompts, params))

    async def _answers(self, prompts: list[dict[str, Any]], params: list[Any]) -> list[str]:
        return list(await asyncio.gather(*(self._answer(p, s) for p, s in zip(prompts, params))))

    async def _answer(self, prompt: dict[str, Any], params: Any) -> str:
        text = ""
        async for out in self._llm.generate(prompt, params, f"cf-{next(self._ids)}"):
            text = out.outputs[0].text  # FINAL_ONLY: one output, when the request has finished
        return text
