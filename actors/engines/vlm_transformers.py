"""Qwen2.5-VL through transformers: the VLM engine that runs anywhere, CPU or GPU.

Greedy decoding, JSON-schema constrained by an xgrammar logits processor; the attention kernel is
chosen per GPU (the paper measured SDPA faster than FlashAttention-2 on the A10G).
"""
from __future__ import annotations

import importlib.util
import itertools

from corpusflow.actors.engines.vlm import PromptCounter, VlmRequest, processor_kwargs
from corpusflow.actors.models.device import accelerator
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import ModelsProfile

# GPUs where FlashAttention-2 beats SDPA. Not the A10G: the paper measured SDPA faster there.
_FA2_WINS = frozenset({"A100", "H100", "H200"})


def attention_for(accel: str, requested: str, flash_attn_installed: bool) -> str:
    """The transformers attention kernel: the profile's choice, or for 'auto' the faster one on this device."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if accel in _FA2_WINS and flash_attn_installed else "sdpa"


class TransformersEngine:
    """Qwen2.5-VL through transformers, greedy, JSON-schema constrained by an xgrammar logits processor."""

    name = "transformers"
    admits_concurrent_calls = False  # one padded generate at a time: concurrent callers are gathered instead

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
        path = resolve(profile.vlm, "qwen2_5_vl", cache_dir)
        self._processor = AutoProcessor.from_pretrained(path, **processor_kwargs(opts))
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
