"""A tiny, randomly initialised Qwen2.5-VL checkpoint of the real architecture, built offline.

Used by the ``tiny-random`` profile and the tests: real loading code runs on it, its text is noise.
The tokenizer is byte-level (one token per byte, no merges) with Qwen2.5's special-token ids, so
chat template, vision placeholders and stop tokens behave as in the real model.
"""
from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
FIRST_SPECIAL_ID = 151643
VOCAB_SIZE = 151680  # Qwen2.5 ids fit; a multiple of 64 keeps matmuls aligned

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (what ByteLevel pre-tokenisation emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    order = sorted(range(256), key=lambda i: printable[i])
    return [chr(codes[i]) for i in order]


def _write_tokenizer(dest: Path) -> dict[str, int]:
    ids = {t: FIRST_SPECIAL_ID + i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    # Fillers keep ids contiguous so the special tokens land on Qwen2.5's real ids.
    vocab.update({f"<|unused{i}|>": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in ids.items()],
        "pre_tokenizer": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    (dest / "tokenizer.json").write_text(json.dumps(tok))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None, "errors": "replace",
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
        "extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
    }))
    (dest / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 56 * 56, "max_pixels": 448 * 448, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor"}))
    return ids


def config_dict(ids: dict[str, int], hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> dict:
    head_dim = hidden // heads
    mrope = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "torch_dtype": "float32", "vocab_size": VOCAB_SIZE, "max_position_embeddings": 32768,
        "hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": layers, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "vision_config": {
            "model_type": "qwen2_5_vl", "hidden_act": "silu", "in_chans": 3, "in_channels": 3,
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112, "fullatt_block_indexes": [1],
        },
    }


def build_qwen25vl(dest: Path, seed: int = 0) -> None:
    """Write config, tokenizer, processor and random weights of a tiny Qwen2.5-VL into ``dest``."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(dest)
    (dest / "config.json").write_text(json.dumps(config_dict(ids)))
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "do_sample": False}))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(dest), dtype=torch.float32)
    model.save_pretrained(dest)
