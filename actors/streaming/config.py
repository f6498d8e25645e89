"""Settings of one streaming session: window sizes, recall strategy and the bounds they imply."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamConfig(BaseModel):
    """StreamingVLM's inference defaults (16 s vision, 512 sink + 512 recent text tokens, ≤20 tokens/s)
    plus the Mosaic-style recall of evicted vision memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str = Field("You are watching a live video. Comment briefly on what happens each second.",
                               description="first text of the stream; it becomes part of the attention sink")
    fps: float = Field(2.0, gt=0, le=8, description="frames per second the client sends; sets mrope time spacing")
    frame_pixels: int = Field(448 * 448, ge=56 * 56, description="max pixels per frame after resizing (tokens = pixels/784)")
    vision_window_s: float = Field(16.0, gt=0, description="seconds of recent vision tokens kept on the device")
    sink_tokens: int = Field(512, ge=0, description="first text tokens (system prompt, first rounds) never evicted")
    text_window: int = Field(512, ge=0, description="most recent non-sink text tokens kept")
    commentary_tokens: int = Field(20, ge=0, description="max new tokens of commentary after each chunk (0 = silent)")
    answer_tokens: int = Field(64, ge=1, description="max new tokens of an answer to a question")
    recall: Literal["cluster", "frame", "none"] = Field(
        "cluster", description="cluster = Mosaic-style cross-modal clusters; frame = ReKV-style one block per frame")
    recall_tokens: int = Field(4096, ge=0, description="evicted tokens brought back per layer for one question")
    cluster_boundary: float = Field(3.0, gt=1, description="a frame whose mean key jumps this many times the "
                                    "stream's typical frame-to-frame change starts a new cluster")
    cluster_max_frames: int = Field(16, ge=1, description="frames per cluster at most")
    gpu_recall_bytes: int = Field(512 << 20, ge=0, description="device LRU of recalled blocks, bytes")
    offload_bytes: int = Field(16 << 30, ge=0, description="host memory for evicted memory; oldest dropped beyond it")
