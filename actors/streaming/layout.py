"""Token bookkeeping and the contiguous mrope layout of whatever the cache retains.

Every cached token carries its position *relative to its segment* (a text token, or one frame's
``<|vision_start|> … <|vision_end|>`` span with Qwen2.5-VL's 3-D t/h/w offsets) and the extent the
segment advances the position counter by. Absolute positions are then a prefix sum over the retained
segments, so after any eviction or retrieval the positions are contiguous again and never grow with
stream length — the model always sees positions it was trained on (StreamingVLM's "shrink").
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

SINK, TEXT, VISION = 0, 1, 2


@dataclass
class TokenMeta:
    """Per-token columns, all of length n and on one device."""

    local: torch.Tensor   # (3, n) long: t/h/w position relative to the segment start
    extent: torch.Tensor  # (n,) long: how far the segment moves the position counter
    first: torch.Tensor   # (n,) bool: first token of its segment
    kind: torch.Tensor    # (n,) int8: SINK, TEXT or VISION
    time: torch.Tensor    # (n,) float64: stream second the token belongs to
    order: torch.Tensor   # (n,) long: index in the never-ending stream (for time-ordered merges)
    segment: torch.Tensor  # (n,) long: segment id (a frame is evicted and recalled whole)

    def __len__(self) -> int:
        return int(self.extent.shape[0])

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> "TokenMeta":
        long = dict(dtype=torch.long, device=device)
        return cls(torch.zeros(3, 0, **long), torch.zeros(0, **long), torch.zeros(0, dtype=torch.bool, device=device),
                   torch.zeros(0, dtype=torch.int8, device=device), torch.zeros(0, dtype=torch.float64, device=device),
                   torch.zeros(0, **long), torch.zeros(0, **long))

    def select(self, idx: torch.Tensor) -> "TokenMeta":
        return TokenMeta(self.local[:, idx], *(getattr(self, f.name)[idx] for f in fields(self)[1:]))

    def to(self, device: torch.device | str) -> "TokenMeta":
        return TokenMeta(*(getattr(self, f.name).to(device) for f in fields(self)))

    @staticmethod
    def cat(parts: list["TokenMeta"]) -> "TokenMeta":
        return TokenMeta(torch.cat([p.local for p in parts], dim=1),
                         *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TokenMeta)[1:]))


def positions(meta: TokenMeta, start: int = 0) -> tuple[torch.Tensor, int]:
    """Contiguous (3, n) positions of the retained tokens in their order, and the next free position."""
    step = meta.extent * meta.first
    before = torch.cumsum(step, 0) - step
    base = before - meta.extent * (~meta.first)  # later tokens of a segment share its first token's base
    total = int(step.sum()) if len(meta) else 0
    return base.unsqueeze(0) + meta.local + start, start + total
