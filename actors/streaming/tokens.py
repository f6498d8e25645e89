"""Turn stream pieces (a 1-second chunk of frames, a piece of text) into token ids, model inputs and
per-token layout metadata, using only the processor's own special tokens and the model's own mrope
position rule (``get_rope_index``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.video_utils import VideoMetadata

from corpusflow.actors.streaming.layout import SINK, TEXT, VISION, TokenMeta

_MARKERS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
_VISION_ONLY = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the chat and vision markers, looked up in the processor's tokenizer."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    vision_only: tuple[int, ...]  # ids text generation must never emit (they would open a fake frame)

    @classmethod
    def from_processor(cls, processor) -> "SpecialTokens":
        tok = processor.tokenizer
        special = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values()}
        missing = [t for t in (*_MARKERS, *_VISION_ONLY) if t not in special]
        if missing:
            raise ValueError(f"processor's tokenizer lacks the Qwen2.5-VL special tokens {missing}")
        ids = dict(zip(_MARKERS, tok.convert_tokens_to_ids(list(_MARKERS))))
        return cls(ids["<|im_start|>"], ids["<|im_end|>"], ids["<|vision_start|>"], ids["<|vision_end|>"],
                   tuple(tok.convert_tokens_to_ids(list(_VISION_ONLY))))


@dataclass
class Piece:
    """One piece of the stream ready for a forward: ids, vision inputs, and layout relative to 0."""

    input_ids: torch.Tensor       # (1, n)
    local: torch.Tensor           # (3, n) mrope positions as if the piece started at position 0
    is_vision: torch.Tensor       # (n,) bool, tokens of a <|vision_start|> … <|vision_end|> span
    starts: torch.Tensor          # (n,) bool, first token of a segment (every text token, each <|vision_start|>)
    vision: dict[str, torch.Tensor]  # pixel_values_videos, video_grid_thw, second_per_grid_ts (empty for text)

    def __len__(self) -> int:
        return int(self.input_ids.shape[1])

    def meta(self, time: float, order: int, segment: int, sink_left: int) -> TokenMeta:
        """Layout metadata: a frame span is one segment, every text token its own; the first
        ``sink_left`` text tokens become attention sinks."""
        n, vis, starts = len(self), self.is_vision, self.starts
        seg = torch.cumsum(starts.long(), 0) - 1
        first_idx = torch.nonzero(starts).squeeze(1)
        last_idx = torch.cat([first_idx[1:] - 1, torch.tensor([n - 1])])
        extent_seg = self.local[0, last_idx] - self.local[0, first_idx] + 1
        text_rank = torch.cumsum((~vis).long(), 0) - 1
        kind = torch.where(vis, VISION, torch.where(text_rank < sink_left, SINK, TEXT)).to(torch.int8)
        return TokenMeta(local=self.local - self.local[:, first_idx[seg]], extent=extent_seg[seg], first=starts,
                         kind=kind, time=torch.full((n,), float(time), dtype=torch.float64),
                         order=order + torch.arange(n), segment=segment + seg)


class PieceEncoder:
    """Builds :class:`Piece` objects for one model/processor pair."""

    def __init__(self, model, processor, fps: float, frame_pixels: int):
        self.model, self.processor = model, processor
        self.tokens = SpecialTokens.from_processor(processor)
        self.fps, self.frame_pixels = fps, frame_pixels
        self._video_pad = processor.video_token

    def text(self, text: str = "", ids: list[int] | None = None) -> Piece:
        """A text piece; ``ids`` are prepended (tokens already decided, e.g. the end of the last round)."""
        all_ids = list(ids or []) + (self.processor.tokenizer.encode(text, add_special_tokens=False) if text else [])
        n = len(all_ids)
        return self._piece(torch.tensor([all_ids], dtype=torch.long),
                           torch.arange(n).view(1, -1).expand(3, -1).clone(), {})

    def chunk(self, frames: np.ndarray, prefix_ids: list[int], prompt: str) -> Piece:
        """``prefix_ids`` + a user turn holding the chunk's frames as one video + the assistant's opening.

        ``prompt`` is the user turn's text with one video placeholder ``{video}``.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be a (k, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
        video = "<|vision_start|>" + self._video_pad + "<|vision_end|>"
        text = prompt.format(video=video)
        k = int(frames.shape[0])
        metadata = VideoMetadata(total_num_frames=k, fps=self.fps, frames_indices=list(range(k)))
        out = self.processor(text=[text], videos=[frames], return_tensors="pt", videos_kwargs={
            "do_sample_frames": False, "video_metadata": [metadata], "cap_pixels_per_frame": False,
            "size": {"shortest_edge": 56 * 56, "longest_edge": self.frame_pixels}})
        prefix = torch.tensor([prefix_ids], dtype=torch.long)
        ids = torch.cat([prefix, out["input_ids"]], dim=1)
        types = torch.cat([torch.zeros_like(prefix), out["mm_token_type_ids"]], dim=1)
        local, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=types, video_grid_thw=out["video_grid_thw"],
            second_per_grid_ts=out["second_per_grid_ts"])
        vision = {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"],
                  "second_per_grid_ts": torch.as_tensor(out["second_per_grid_ts"])}
        return self._piece(ids, local[:, 0], vision)

    def _piece(self, ids: torch.Tensor, local: torch.Tensor, vision: dict[str, torch.Tensor]) -> Piece:
        row = ids[0]
        opens = torch.cumsum((row == self.tokens.vision_start).long(), 0)
        closes = torch.cumsum((row == self.tokens.vision_end).long(), 0) - (row == self.tokens.vision_end).long()
        vis = opens > closes
        return Piece(ids, local.long(), vis, ~vis | (row == self.tokens.vision_start), vision)
