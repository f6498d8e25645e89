"""The GPU benchmark's compute floor: FLOPs counted from model configs, checked against a hand count."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import decode_flops, floor, prefill_flops, vision_flops, whisper_flops  # noqa: E402

# A tiny config of each architecture, small enough to count by hand.
TEXT = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16,
        "num_hidden_layers": 2, "vocab_size": 10}
VISION = {"hidden_size": 4, "intermediate_size": 6, "depth": 2, "patch_size": 14, "spatial_merge_size": 2,
          "temporal_patch_size": 2, "in_channels": 3, "window_size": 28, "fullatt_block_indexes": [1],
          "out_hidden_size": 8}
WHISPER = {"d_model": 4, "num_mel_bins": 2, "vocab_size": 10, "encoder_layers": 1, "decoder_layers": 1,
           "encoder_ffn_dim": 8, "decoder_ffn_dim": 8}


def test_language_model_prefill_and_decode_match_a_hand_count():
    # per token per layer: q,o 2·64, k,v 2·8·4, gated MLP 3·8·16 → 128 + 64 + 384 = 576 MACs; 2 layers → 2,304 FLOPs
    # attention over 3 tokens, causal: QKᵀ + AV = 2 · 3² · 8 per layer → 288 FLOPs; logits of the last token 2·8·10
    assert prefill_flops(TEXT, 3) == 3 * 2304 + 288 + 160
    # 3 new tokens after a 3-token prompt: 2 decode steps over contexts of 4 and 5 positions
    assert decode_flops(TEXT, 3, 3) == 2 * (2304 + 160) + 4 * 2 * 8 * (4 + 5)


def test_vision_encoder_matches_a_hand_count():
    # a 56×28 frame: 4×2 = 8 patches; embedding 3·2·14·14 = 1,176 → 4 wide: 8·1176·4 MACs
    # per block: 4·16 + 3·4·6 = 136 MACs per patch; windows of 28 px = 2×2 = 4 patches (block 0), full (block 1)
    # merger: 2 merged tokens, 16 → 16 → 8
    linear = 2 * 8 * (1176 * 4 + 2 * 136)
    attention = 4 * 8 * 4 * (8 + 4)
    merger = 2 * 2 * (16 * 16 + 16 * 8)
    assert vision_flops(VISION, 1, 28 * 2, 28) == linear + attention + merger
    assert vision_flops(VISION, 3, 56, 28) == 3 * vision_flops(VISION, 1, 56, 28)


def test_whisper_encoder_and_decoder_match_a_hand_count():
    n, d = 1500, 4
    conv = 2 * 3 * (2 * 4 * 3000 + 4 * 4 * n)
    encoder = conv + 2 * n * (4 * 16 + 2 * 4 * 8) + 4 * n * n * d
    positions = 4 + 2  # the 4-token prompt and 2 generated
    decoder = (2 * 2 * 16 * n + positions * (2 * (4 * 16 + 2 * 16 + 2 * 4 * 8) + 4 * n * d)
               + 4 * d * positions * (positions + 1) / 2 + 2 * d * 10 * 2)
    got = whisper_flops(WHISPER, chunks=5, new_tokens=2)
    assert got["encoder"] == 5 * encoder
    assert got["decoder"] == pytest.approx(5 * decoder)


def test_floor_efficiency_is_the_floor_over_the_gpu_seconds_used():
    got = floor(700e12 * 30, 700.0, 50.0)  # 30 s of work at peak, done in 50 GPU-s
    assert got == {"floor_gpu_s": 30.0, "floor_efficiency_pct": 60.0}
    assert floor(1e15, None, 10.0)["floor_efficiency_pct"] is None
