"""Our attention for Qwen2.5-VL's text layers, registered through transformers' public
``AttentionInterface`` (and its mask interface), so no library code is patched.

The session runs the model with every position id set to 0, which makes the model's own RoPE the
identity: the query and key reaching this function are *pre-RoPE*. The function then stores the
keys as they are, rotates queries and keys at the positions of the retained layout, and attends
over whatever the forward's context says (window; or sinks + recalled blocks + recent for a
question). Called without a stream context, it is plain SDPA, so the model stays usable as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from corpusflow.actors.streaming.layout import TokenMeta, positions
from corpusflow.actors.streaming.recall import FrameRecall
from corpusflow.actors.streaming.window import Rope, StreamWindow, rotate

STREAM_ATTENTION = "corpusflow_stream"


def stream_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     stream=None, **kwargs):
    if stream is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return stream.attend(module.layer_idx, query, key, value, scaling), None


AttentionInterface.register(STREAM_ATTENTION, stream_attention)
AttentionMaskInterface.register(STREAM_ATTENTION, sdpa_mask)


def use_stream_attention(model) -> None:
    """Route the text layers of a loaded Qwen2.5-VL through :func:`stream_attention`."""
    if model.config.text_config._attn_implementation != STREAM_ATTENTION:
        model.set_attn_implementation({"text_config": STREAM_ATTENTION})


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
    """Queries (1, heads, q, d) over keys/values (kv_heads, n, d) whose last q entries are the
    queries' own tokens (causal among themselves); returns (1, q, heads, d) like HF attention."""
    q, n = query.shape[2], keys.shape[1]
    if q == 1:  # decoding: no mask, so SDPA's fused kernels can share kv heads themselves
        out = F.scaled_dot_product_attention(query, keys.unsqueeze(0), values.unsqueeze(0), scale=scaling,
                                             enable_gqa=True)
        return out.transpose(1, 2).contiguous()
    mask = torch.ones(q, n, dtype=torch.bool, device=query.device)
    mask[:, n - q:] = torch.tril(mask[:, n - q:])
    group = query.shape[1] // keys.shape[0]  # with a mask, fused kernels want kv heads repeated (as HF does)
    out = F.scaled_dot_product_attention(query, keys.repeat_interleave(group, 0).unsqueeze(0),
                                         values.repeat_interleave(group, 0).unsqueeze(0), attn_mask=mask,
                                         scale=scaling)
    return out.transpose(1, 2).contiguous()


class StreamStep:
    """One forward in streaming mode: attend to the window and append the new tokens to it."""

    def __init__(self, window: StreamWindow, new_pos: torch.Tensor):
        self.window = window
        self.cos, self.sin = window.rope(new_pos)

    def attend(self, layer: int, query, key, value, scaling: float) -> torch.Tensor:
        k_rot = rotate(key[0], self.cos, self.sin)
        keys, values = self.window.write(layer, key[0], value[0], k_rot)
        return attend(rotate(query, self.cos, self.sin), keys, values, scaling)


class Question:
    """The forwards of one question: per layer, the context is sinks + recalled blocks + recent
    window merged in stream order and laid out contiguously; recall happens at the first forward,
    from that layer's mean pre-RoPE query; question and answer tokens live in a scratch area that
    is dropped afterwards, so the stream itself is untouched by questions."""

    def __init__(self, window: StreamWindow, recall: FrameRecall | None, rope: Rope, max_new: int):
        self.window, self.recall, self.rope, self.max_new = window, recall, rope, max_new
        self.layers: list[dict] = [{} for _ in range(window.layers)]
        self.picked: list[list[int]] = [[] for _ in range(window.layers)]
        self.offset = 0  # tokens of this question written so far

    def attend(self, layer: int, query, key, value, scaling: float) -> torch.Tensor:
        state = self.layers[layer]
        if not state:
            self._context(layer, state, query[0].mean(dim=1), key.shape[2])
        q = key.shape[2]
        pos = state["start"] + self.offset + torch.arange(q, device=key.device)
        cos, sin = self.rope(pos.view(1, -1).expand(3, -1))
        n = state["n"] + self.offset
        state["k"][:, n:n + q] = rotate(key[0], cos, sin)
        state["v"][:, n:n + q] = value[0]
        if layer == len(self.layers) - 1:
            self.offset += q
        return attend(rotate(query, cos, sin), state["k"][:, :n + q], state["v"][:, :n + q], scaling)

    def _context(self, layer: int, state: dict, mean_query: torch.Tensor, q: int) -> None:
        w = self.window
        keys, values, meta = w.keys(layer), w.values(layer), w.meta
        if self.recall is not None:
            group = mean_query.shape[0] // w.kv_heads
            picked = self.recall.select(layer, mean_query.view(w.kv_heads, group, -1).mean(1))
            got = self.recall.fetch(layer, picked)
            if got is not None:
                self.picked[layer] = got.units
                meta = TokenMeta.cat([got.meta, meta])
                order = torch.argsort(meta.order)
                keys = torch.cat([got.keys, keys], 1)[:, order]
                values = torch.cat([got.values, values], 1)[:, order]
                meta = meta.select(order)
        pos, start = positions(meta)
        n = len(meta)
        room = n + q + self.max_new
        state["k"] = torch.empty(w.kv_heads, room, w.head_dim, dtype=keys.dtype, device=keys.device)
        state["v"] = torch.empty_like(state["k"])
        cos, sin = self.rope(pos)
        state["k"][:, :n] = rotate(keys, cos, sin)
        state["v"][:, :n] = values
        state["n"], state["start"], state["meta"], state["pos"] = n, start, meta, pos
