"""The bounded on-device KV cache of one stream: attention sinks, recent vision, recent text.

Keys are kept before RoPE (so any retained subset can be laid out contiguously again) and, next to
them, rotated at the current layout's positions (so decoding does not re-rotate the whole cache at
every token; the rotated copy is refreshed only when an eviction changes the layout). Buffers grow
by doubling up to the configured bound and are compacted in place, so device memory stays flat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from corpusflow.actors.streaming.layout import TEXT, VISION, TokenMeta, positions

# (positions (3, n)) -> (cos, sin), each (n, head_dim), in the cache dtype
Rope = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (..., n, head_dim) with (n, head_dim) tables: the same arithmetic as the HF model."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass
class Evicted:
    """What left the window: one KV block per frame, and the text tokens (one block). The KV stays on
    the window's device (a copy, so compaction cannot touch it): recall decides where it goes on the host."""

    frames: list[tuple[torch.Tensor, TokenMeta, torch.Tensor]]  # kv (layers, 2, kv_heads, n, head_dim),
    # host meta, and the frame's mean pre-RoPE key per layer and head (layers, kv_heads, head_dim)
    text: tuple[torch.Tensor, TokenMeta] | None


class StreamWindow:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 rope: Rope, vision_window_s: float, vision_tokens: int, text_window: int, bound_tokens: int):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device, self.rope = dtype, torch.device(device), rope
        self.vision_window_s, self.vision_tokens, self.text_window = vision_window_s, vision_tokens, text_window
        self.bound_tokens = bound_tokens  # most tokens held at any moment (window + one piece in flight)
        self.meta = TokenMeta.empty(self.device)
        self._pos = torch.zeros(3, 0, dtype=torch.long, device=self.device)
        self.next_position = 0
        self._planned: tuple[TokenMeta, torch.Tensor, int] | None = None  # the forward in flight
        self._cap = 0
        self._k = self._kr = self._v = [torch.empty(0)] * layers
        self._rotated = [0] * layers  # per layer: how many leading tokens have valid rotated keys
        self._tables: tuple[int, int, torch.Tensor, torch.Tensor] | None = None  # RoPE tables shared by layers

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def capacity(self) -> int:
        """Tokens the device buffers can hold; never above ``bound_tokens`` for in-bound streams."""
        return self._cap

    # -- the forward path ------------------------------------------------------------------------
    def plan(self, new: TokenMeta) -> torch.Tensor:
        """Positions of ``new`` tokens appended now; call before the forward that writes them."""
        new = new.to(self.device)
        pos, after = positions(new, self.next_position)
        self._planned = (new, pos, after)
        self._ensure(len(self) + len(new))
        return pos

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor, rotated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a layer's new pre-RoPE keys, rotated keys and values (kv_heads, q, head_dim) after the
        retained ones; return that layer's rotated keys and values over everything, new tokens last."""
        n, q = len(self), keys.shape[1]
        self._refresh(layer)
        self._k[layer][:, n:n + q] = keys
        self._kr[layer][:, n:n + q] = rotated
        self._v[layer][:, n:n + q] = values
        return self._kr[layer][:, :n + q], self._v[layer][:, :n + q]

    def commit(self) -> None:
        """The planned forward wrote every layer: its tokens are now part of the window."""
        new, pos, self.next_position = self._planned
        self._planned = None
        self.meta = TokenMeta.cat([self.meta, new])
        self._pos = torch.cat([self._pos, pos], dim=1)
        self._rotated = [len(self)] * self.layers

    def keys(self, layer: int) -> torch.Tensor:
        return self._k[layer][:, :len(self)]

    def values(self, layer: int) -> torch.Tensor:
        return self._v[layer][:, :len(self)]

    def positions(self) -> torch.Tensor:
        return self._pos

    # -- eviction --------------------------------------------------------------------------------
    def evict(self, now: float) -> Evicted:
        """Drop frames older than the vision window (or beyond its token bound) and text beyond the
        text window; re-lay the rest out contiguously. Returns what left."""
        meta = self.meta
        vision = meta.kind == VISION
        drop = torch.zeros(len(meta), dtype=torch.bool, device=self.device)
        frames: list[torch.Tensor] = []
        if bool(vision.any()):
            segs, counts = torch.unique_consecutive(meta.segment[vision], return_counts=True)
            times = meta.time[vision][torch.cumsum(counts, 0) - 1]
            kept, full = 0, False
            for seg, count, t in reversed(list(zip(segs.tolist(), counts.tolist(), times.tolist()))):
                full = full or t <= now - self.vision_window_s or kept + count > self.vision_tokens
                if not full:
                    kept += count
                else:
                    frames.append(torch.tensor(seg, device=self.device))
            if frames:
                drop |= vision & torch.isin(meta.segment, torch.stack(frames))
        text_idx = torch.nonzero(meta.kind == TEXT).squeeze(1)
        excess = len(text_idx) - self.text_window
        if excess > 0:
            drop[text_idx[:excess]] = True
        if not bool(drop.any()):
            return Evicted([], None)
        out = self._offload(drop, sorted(s.item() for s in frames))
        keep = torch.nonzero(~drop).squeeze(1)
        m = len(keep)
        for layer in range(self.layers):
            self._k[layer][:, :m] = self._k[layer][:, keep]
            self._v[layer][:, :m] = self._v[layer][:, keep]
        self.meta = meta.select(keep)
        self._pos, self.next_position = positions(self.meta)
        self._rotated = [0] * self.layers
        self._tables = None
        return out

    def _offload(self, drop: torch.Tensor, frame_segments: list[int]) -> Evicted:
        meta = self.meta
        frames = []
        for seg in frame_segments:
            idx = torch.nonzero(meta.segment == seg).squeeze(1)
            mean_key = torch.stack([self._k[layer][:, idx].float().mean(1) for layer in range(self.layers)])
            frames.append((self._gather(idx), meta.select(idx).to("cpu"), mean_key))
        text_idx = torch.nonzero(drop & (meta.kind == TEXT)).squeeze(1)
        text = (self._gather(text_idx), meta.select(text_idx).to("cpu")) if len(text_idx) else None
        return Evicted(frames, text)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack([self._k[layer][:, idx], self._v[layer][:, idx]]) for layer in range(self.layers)])

    # -- memory ----------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Device bytes held by the KV buffers (pre-RoPE keys, rotated keys, values) and metadata."""
        per = self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8
        meta_per_token = 11 * 8 + 2  # TokenMeta columns plus cached positions
        return 3 * self.layers * self._cap * per + len(self) * meta_per_token

    def _ensure(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, min(max(2 * self._cap, 256), self.bound_tokens))
        def grow(old: torch.Tensor) -> torch.Tensor:
            new = torch.empty(self.kv_heads, cap, self.head_dim, dtype=self.dtype, device=self.device)
            if old.numel():
                new[:, :old.shape[1]] = old
            return new
        self._k = [grow(t) for t in self._k]
        self._kr = [grow(t) for t in self._kr]
        self._v = [grow(t) for t in self._v]
        self._cap = cap

    def _refresh(self, layer: int) -> None:
        """Rotate the retained keys at the current layout's positions (only after an eviction)."""
        done, n = self._rotated[layer], len(self)
        if done < n:
            if self._tables is None or self._tables[:2] != (done, n):
                self._tables = (done, n, *self.rope(self._pos[:, done:n]))
            _, _, cos, sin = self._tables
            self._kr[layer][:, done:n] = rotate(self._k[layer][:, done:n], cos, sin)
            self._rotated[layer] = n
