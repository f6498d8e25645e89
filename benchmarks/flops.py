"""The compute floor of the GPU benchmark: FLOPs of both models' work, counted from their configs.

Matrix products only (2 FLOPs per multiply-add); norms, activations, softmax and rotary embeddings
are left out, as they run far below the matrix units' rate and are a few percent of the total. Divided
by the bf16 matmul rate measured on the same GPU this gives the GPU-seconds no engine can beat (the
floor); the floor over the GPU-seconds a run used is its *floor efficiency*.

- Qwen2.5-VL's vision encoder (per frame): the patch embedding, ``depth`` blocks of attention and gated
  MLP over the frame's patches (full attention in ``fullatt_block_indexes``, windows of
  ``window_size`` pixels elsewhere), and the merger MLP over each 2×2 group of patches.
- Qwen2.5-VL's language model: the prompt's prefill (weights, causal attention over the prompt) and each
  generated token (weights, attention over the context so far, the vocabulary projection).
- Whisper (per 30-s chunk, always padded to 3,000 mel frames): the two input convolutions, the encoder's
  blocks over 1,500 positions, the decoder's cross-attention keys and values once, then each decoder
  position (prompt and generated) through self-attention, cross-attention and MLP, and the vocabulary
  projection for each generated token.
"""
from __future__ import annotations

WHISPER_FRAMES = 3000      # mel frames of one 30-s window
WHISPER_POSITIONS = 1500   # encoder positions after the stride-2 convolution
WHISPER_PROMPT_TOKENS = 4  # <|startoftranscript|>, language, task, <|notimestamps|>


def vision_flops(vision: dict, frames: int, height: int, width: int) -> float:
    """Qwen2.5-VL's vision encoder on ``frames`` images of height × width pixels (multiples of 28)."""
    patch = vision.get("patch_size", 14)
    d, f, depth = vision["hidden_size"], vision["intermediate_size"], vision["depth"]
    out = vision.get("out_hidden_size", d)
    merge = vision.get("spatial_merge_size", 2) ** 2
    embed_in = vision.get("in_channels", 3) * vision.get("temporal_patch_size", 2) * patch * patch
    n = (height // patch) * (width // patch)  # patches of one frame
    window = min(n, (vision.get("window_size", 112) // patch) ** 2)  # patches one window attends over
    full = len(vision.get("fullatt_block_indexes", ()))
    linear = 2.0 * n * (embed_in * d + depth * (4 * d * d + 3 * d * f))
    attention = 4.0 * n * d * (full * n + (depth - full) * window)  # QKᵀ and AV, not causal
    merger = 2.0 * (n // merge) * (merge * d * merge * d + merge * d * out)
    return frames * (linear + attention + merger)


def _lm_shape(text: dict) -> tuple[int, int, int, int, int]:
    d, heads = text["hidden_size"], text["num_attention_heads"]
    kv = d // heads * text.get("num_key_value_heads", heads)
    return d, kv, text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]


def prefill_flops(text: dict, tokens: int) -> float:
    """The language model's prefill of one prompt: weights, causal attention (QKᵀ and AV), one logits row."""
    d, kv, f, layers, vocab = _lm_shape(text)
    per_token = 2.0 * layers * (2 * d * d + 2 * d * kv + 3 * d * f)
    return per_token * tokens + 2.0 * layers * d * tokens * tokens + 2.0 * d * vocab


def decode_flops(text: dict, prompt_tokens: int, new_tokens: int) -> float:
    """The language model generating ``new_tokens`` after a prompt (the first comes with the prefill)."""
    d, kv, f, layers, vocab = _lm_shape(text)
    steps = max(new_tokens - 1, 0)
    per_step = 2.0 * layers * (2 * d * d + 2 * d * kv + 3 * d * f) + 2.0 * d * vocab
    context = steps * prompt_tokens + steps * (steps + 1) / 2  # positions attended, summed over the steps
    return steps * per_step + 4.0 * layers * d * context


def whisper_flops(cfg: dict, chunks: int, new_tokens: int) -> dict[str, float]:
    """Whisper on ``chunks`` 30-s windows, each decoded to ``new_tokens`` tokens: encoder and decoder FLOPs."""
    d, mels, vocab = cfg["d_model"], cfg["num_mel_bins"], cfg["vocab_size"]
    n = WHISPER_POSITIONS
    conv = 2.0 * 3 * (mels * d * WHISPER_FRAMES + d * d * n)
    enc_layer = 2.0 * n * (4 * d * d + 2 * d * cfg["encoder_ffn_dim"]) + 4.0 * n * n * d
    encoder = conv + cfg["encoder_layers"] * enc_layer
    positions = WHISPER_PROMPT_TOKENS + new_tokens
    cross_kv = 2.0 * 2 * d * d * n
    per_position = 2.0 * (4 * d * d + 2 * d * d + 2 * d * cfg["decoder_ffn_dim"]) + 4.0 * n * d
    self_attention = 4.0 * d * positions * (positions + 1) / 2
    decoder = cfg["decoder_layers"] * (cross_kv + positions * per_position + self_attention) + 2.0 * d * vocab * new_tokens
    return {"encoder": chunks * encoder, "decoder": chunks * decoder}


def floor(flops: float, peak_tflops: float | None, gpu_s: float) -> dict[str, float | None]:
    """GPU-seconds at the measured matmul peak, and that over the GPU-seconds used (floor efficiency)."""
    if not peak_tflops:
        return {"floor_gpu_s": None, "floor_efficiency_pct": None}
    floor_s = flops / (peak_tflops * 1e12)
    return {"floor_gpu_s": round(floor_s, 2),
            "floor_efficiency_pct": round(100 * floor_s / gpu_s, 1) if gpu_s > 0 else None}
