"""VLM engines behind one interface: a request is frames + timestamps + text + a JSON schema.

The stage (actors/vlm.py) only speaks :class:`VlmEngine`; ``transformers`` runs anywhere (CPU or
GPU, attention kernel chosen per device), ``vllm`` (actors/vllm_engine.py) runs on GPUs. Both must
return JSON that conforms to the request's schema (constrained decoding), so answers parse even
from a randomly initialised model.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from actors.device import accelerator
from actors.model_store import resolve
from actors.tiny_qwen import build_qwen25vl
from actors.vlm_answer import format_ts
from contracts.config import ModelsProfile

# GPUs where FlashAttention-2 beats SDPA. Not the A10G: the paper measured SDPA faster there.
_FA2_WINS = frozenset({"A100", "H100", "H200"})


@dataclass(frozen=True)
class VlmRequest:
    frames: np.ndarray          # (n, H, W, 3) uint8, already resized
    frame_ts: np.ndarray        # (n,) float64 seconds
    system: str
    user: str                   # text that follows the frames (transcript, metadata, task)
    json_schema: dict           # answers MUST conform (constrained decoding)
    max_new_tokens: int


class VlmEngine(Protocol):
    name: str                   # "transformers" | "vllm"
    model_id: str
    max_frames: int             # frame budget of one context on this device
    max_model_len: int

    def count_tokens(self, request: VlmRequest) -> int: ...   # prompt tokens incl. vision tokens

    def generate(self, requests: list[VlmRequest]) -> list[str]: ...   # raw JSON text per request


class EngineUnavailable(RuntimeError):
    """The configured engine cannot run here (package missing); the message says what to do."""


def frame_label(t: float) -> str:
    """Text put before each frame so the model knows when it was taken."""
    return f"[t={format_ts(t)}s]"


def messages(request: VlmRequest) -> list[dict]:
    """Chat messages of a request: each frame as an image preceded by its timestamp, then the text."""
    content: list[dict] = []
    for t in request.frame_ts:
        content += [{"type": "text", "text": frame_label(t)}, {"type": "image"}]
    content.append({"type": "text", "text": request.user})
    return [{"role": "system", "content": request.system}, {"role": "user", "content": content}]


class PromptCounter:
    """Prompt tokens of a request, vision tokens included, from its text and its frames' size.

    Why: the stage checks every prompt against the context before asking the engine, and running
    the image processor over all frames just to count would double its CPU work per request (about
    0.2 s for 15 frames of 448²). Each frame is one ``<|image_pad|>`` in the text and expands to a
    number of vision tokens that depends only on its size, computed once per size.
    """

    def __init__(self, processor):
        self._processor = processor

    def prompt(self, request: VlmRequest) -> str:
        return self._processor.apply_chat_template(messages(request), tokenize=False, add_generation_prompt=True)

    @functools.lru_cache(maxsize=8)
    def _per_image(self, height: int, width: int) -> int:
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        grid = self._processor.image_processor(images=[frame], return_tensors="np")["image_grid_thw"][0]
        return int(np.prod(grid)) // self._processor.image_processor.merge_size ** 2

    def __call__(self, request: VlmRequest) -> int:
        text_ids = self._processor.tokenizer(self.prompt(request))["input_ids"]
        if not len(request.frames):
            return len(text_ids)
        h, w = request.frames.shape[1:3]
        return len(text_ids) + len(request.frames) * (self._per_image(int(h), int(w)) - 1)


def attention_for(accel: str, requested: str, flash_attn_installed: bool) -> str:
    """The transformers attention kernel: the profile's choice, or for 'auto' the faster one on this device."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if accel in _FA2_WINS and flash_attn_installed else "sdpa"


class TransformersEngine:
    """Qwen2.5-VL through transformers, greedy, JSON-schema constrained by an xgrammar logits processor."""

    name = "transformers"

    def __init__(self, profile: ModelsProfile, cache_dir: str):
        import torch
        import xgrammar
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        accel = accelerator()
        opts = profile.options_for(accel)
        self.model_id = profile.vlm
        self.max_frames = opts.max_frames
        self.max_model_len = opts.max_model_len
        self._batch = opts.max_num_seqs
        self._device = "cpu" if accel == "cpu" else "cuda"
        gpu_half = torch.bfloat16 if accel != "cpu" and torch.cuda.is_bf16_supported() else torch.float16
        dtype = {"auto": torch.float32 if accel == "cpu" else gpu_half, "bfloat16": torch.bfloat16,
                 "float16": torch.float16, "float32": torch.float32}[opts.dtype]
        self.attn_implementation = attention_for(accel, opts.attn_implementation,
                                                 importlib.util.find_spec("flash_attn") is not None)
        path = resolve(profile.vlm, "qwen2_5_vl", cache_dir, build_tiny=build_qwen25vl)
        self._processor = AutoProcessor.from_pretrained(path)
        self._processor.tokenizer.padding_side = "left"  # batched generation continues from the right edge
        self._counter = PromptCounter(self._processor)
        self._model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation=self.attn_implementation).to(self._device).eval()
        # The model's vocabulary is padded past the tokenizer's; masks must cover every logit.
        vocab = self._model.get_output_embeddings().weight.shape[0]
        info = xgrammar.TokenizerInfo.from_huggingface(self._processor.tokenizer, vocab_size=vocab)
        self._compiler = xgrammar.GrammarCompiler(info)
        self._compiler.compile_builtin_json_grammar()  # pays the vocabulary preprocessing once, at load

    def _inputs(self, requests: list[VlmRequest]):
        texts = [self._counter.prompt(r) for r in requests]
        images = [f for r in requests for f in r.frames]
        return self._processor(text=texts, images=images or None, padding=True, return_tensors="pt")

    def count_tokens(self, request: VlmRequest) -> int:
        return self._counter(request)

    def _grammar(self, schema: dict):
        import json

        # any_whitespace=False: with free whitespace a weak model can pad with spaces until the limit.
        return self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def generate(self, requests: list[VlmRequest]) -> list[str]:
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        out: dict[int, str] = {}
        order = sorted(range(len(requests)), key=lambda i: requests[i].max_new_tokens)
        for limit, group in itertools.groupby(order, key=lambda i: requests[i].max_new_tokens):
            group = list(group)
            for start in range(0, len(group), self._batch):
                idx = group[start:start + self._batch]
                chunk = [requests[i] for i in idx]
                inputs = self._inputs(chunk).to(self._device)
                constrain = LogitsProcessor([self._grammar(r.json_schema) for r in chunk])
                with torch.inference_mode():
                    ids = self._model.generate(**inputs, max_new_tokens=limit, do_sample=False,
                                               logits_processor=[constrain])
                new = ids[:, inputs["input_ids"].shape[1]:]
                for i, row in zip(idx, new):
                    out[i] = self._processor.tokenizer.decode(row, skip_special_tokens=True)
        return [out[i] for i in range(len(requests))]


def load_engine(profile: ModelsProfile, cache_dir: str) -> VlmEngine:
    """The engine the profile names, loaded once (an actor calls this in its ``__init__``)."""
    if profile.vlm_engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise EngineUnavailable(f"models profile {profile.name!r} asks for the vllm engine, but the vllm "
                                    "package is not installed here: install vllm on the GPU workers, or set "
                                    "vlm_engine: transformers")
        from actors.vllm_engine import VllmEngine

        return VllmEngine(profile, cache_dir)
    return TransformersEngine(profile, cache_dir)
