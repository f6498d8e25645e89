"""One live stream on the transformers engine: 1-second chunks in, timestamped commentary out,
questions at any time — with device memory bounded by the window, whatever the stream's length."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from corpusflow.actors.streaming.attention import Question, StreamStep, use_stream_attention
from corpusflow.actors.streaming.config import StreamConfig
from corpusflow.actors.streaming.layout import SINK
from corpusflow.actors.streaming.recall import ClusterRecall, FrameRecall
from corpusflow.actors.streaming.tokens import Piece, PieceEncoder
from corpusflow.actors.streaming.window import StreamWindow

CHUNK_PROMPT = "<|im_start|>user\n{video}<|im_end|>\n<|im_start|>assistant\n"
QUESTION_PROMPT = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
PIXELS_PER_TOKEN = 28 * 28  # Qwen2.5-VL: 14-pixel patches merged 2x2


@dataclass(frozen=True)
class Commentary:
    t: float
    text: str


@dataclass(frozen=True)
class Answer:
    text: str
    timestamps: list[float]  # stream seconds of the frames the answer rests on
    recalled: dict[float, int] = field(default_factory=dict)  # recalled frame second -> layers that chose it


class SessionClosed(RuntimeError):
    """The session was closed (client gone); its memory is released."""


class StreamSession:
    """Bounded-memory streaming over a Qwen2.5-VL model whose text attention this session routes
    through :mod:`corpusflow.actors.streaming.attention` (plain SDPA for every other caller)."""

    def __init__(self, model, processor, cfg: StreamConfig):
        self.model, self.processor, self.cfg = model, processor, cfg
        use_stream_attention(model)
        text = model.config.text_config
        rotary = model.model.language_model.rotary_emb
        if rotary.attention_scaling != 1.0:
            raise ValueError("RoPE with attention scaling is not the identity at position 0; unsupported")
        self.device, self.dtype = model.device, model.dtype
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        self._rope = lambda pos: tuple(x[0] for x in rotary(probe, pos.view(3, 1, -1)))
        self.encoder = PieceEncoder(model, processor, cfg.fps, cfg.frame_pixels)
        self.tokens = self.encoder.tokens
        self.frames_per_chunk = math.ceil(cfg.fps)
        grids = math.ceil(self.frames_per_chunk / processor.video_processor.temporal_patch_size)
        chunk_vision = grids * (cfg.frame_pixels // PIXELS_PER_TOKEN) + 2  # + vision_start/end
        vision_tokens = math.ceil(cfg.vision_window_s) * chunk_vision
        prompt = len(processor.tokenizer.encode(CHUNK_PROMPT.format(video="") + "\n", add_special_tokens=False))
        piece = chunk_vision + prompt + 2 + cfg.commentary_tokens  # one round in flight (+ last round's end)
        system = self.encoder.text(f"<|im_start|>system\n{cfg.system_prompt}<|im_end|>\n")
        kv_heads, head_dim = text.num_key_value_heads, text.hidden_size // text.num_attention_heads
        self.window = StreamWindow(text.num_hidden_layers, kv_heads, head_dim, self.dtype, self.device,
                                   self._rope, cfg.vision_window_s, vision_tokens, cfg.text_window,
                                   bound_tokens=cfg.sink_tokens + cfg.text_window + vision_tokens
                                   + max(piece, len(system)))
        self.recall = _make_recall(cfg, text.num_hidden_layers, self.device)
        self._masks = {kind: None for kind in set(text.layer_types)}  # our attention builds its own
        self._banned = torch.tensor(self.tokens.vision_only, device=self.device)
        self._order = self._segment = 0
        self._sink_left = cfg.sink_tokens
        self._pending: list[int] = []  # decided tokens not yet in the cache (end of the last round)
        self.closed = False
        self.tokens_generated = 0  # commentary tokens decided so far (a throughput metric)
        with torch.inference_mode():
            self._forward(system, 0.0)
            self._evict(0.0)

    # -- the public API --------------------------------------------------------------------------
    def push_chunk(self, frames: np.ndarray, t: float) -> list[Commentary]:
        """Feed one second of frames (k, H, W, 3) uint8 starting at stream second ``t``."""
        self._check_open()
        if not 1 <= frames.shape[0] <= self.frames_per_chunk:
            raise ValueError(f"a chunk holds 1..{self.frames_per_chunk} frames (fps={self.cfg.fps}), "
                             f"got {frames.shape[0]}")
        with torch.inference_mode():
            piece = self.encoder.chunk(frames, self._pending, CHUNK_PROMPT)
            logits = self._forward(piece, t)
            said: list[int] = []
            self._pending = [self.tokens.im_end]
            while len(said) < self.cfg.commentary_tokens:
                token = self._greedy(logits)
                if token == self.tokens.im_end:
                    break
                said.append(token)
                self.tokens_generated += 1
                if len(said) == self.cfg.commentary_tokens:
                    self._pending = [token, self.tokens.im_end]
                    break
                logits = self._forward(self.encoder.text(ids=[token]), t)
            self._pending += self.processor.tokenizer.encode("\n", add_special_tokens=False)
            self._evict(t)
        text = self.processor.tokenizer.decode(said, skip_special_tokens=True).strip()
        return [Commentary(t, text)] if text else []

    def ask(self, question: str) -> Answer:
        """Answer from sinks + the recent window + the evicted blocks that best match the question.
        The question and its answer do not enter the stream's memory."""
        self._check_open()
        with torch.inference_mode():
            q = Question(self.window, self.recall, self._rope, self.cfg.answer_tokens)
            piece = self.encoder.text(QUESTION_PROMPT.format(question=question), ids=self._pending)
            logits = self._run(piece, q)
            said: list[int] = []
            while len(said) < self.cfg.answer_tokens:
                token = self._greedy(logits)
                if token == self.tokens.im_end:
                    break
                said.append(token)
                if len(said) < self.cfg.answer_tokens:
                    logits = self._run(self.encoder.text(ids=[token]), q)
        votes = Counter(uid for layer in q.picked for uid in layer)
        recalled: dict[float, int] = {}
        if self.recall is not None:
            for uid, n in votes.items():
                for t in self.recall.frames_of([uid]):
                    recalled[t] = max(recalled.get(t, 0), n)
        top = max(recalled.values(), default=0)
        stamps = sorted(t for t, n in recalled.items() if 2 * n >= top) or self.window_frames()
        text = self.processor.tokenizer.decode(said, skip_special_tokens=True).strip()
        return Answer(text, stamps, recalled)

    def window_frames(self) -> list[float]:
        """Stream seconds of the frames currently in the vision window."""
        meta = self.window.meta
        return sorted(set(meta.time[meta.kind == 2].tolist()))

    def memory_bytes(self) -> int:
        """Device bytes this stream holds: the window plus recalled blocks and their index."""
        return self.window.memory_bytes() + (self.recall.device_bytes() if self.recall else 0)

    def memory_report(self) -> dict[str, int]:
        return {"window_tokens": len(self.window), "capacity_tokens": self.window.capacity,
                "bound_tokens": self.window.bound_tokens,
                "next_position": self.window.next_position, "window_bytes": self.window.memory_bytes(),
                "recall_device_bytes": self.recall.device_bytes() if self.recall else 0,
                "recall_host_bytes": self.recall.host_bytes() if self.recall else 0,
                "recall_host_reserved_bytes": self.recall.host_reserved_bytes() if self.recall else 0,
                "recall_units": len(self.recall.units) if self.recall else 0}

    def close(self) -> None:
        """Release the stream's memory; later calls raise :class:`SessionClosed`."""
        self.closed = True
        self.window = self.recall = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- internals -------------------------------------------------------------------------------
    def _forward(self, piece: Piece, t: float) -> torch.Tensor:
        meta = piece.meta(t, self._order, self._segment, self._sink_left)
        pos = self.window.plan(meta)
        logits = self._run(piece, StreamStep(self.window, pos))
        self.window.commit()
        self._order += len(piece)
        self._segment += int(meta.first.sum())
        self._sink_left -= int((meta.kind == SINK).sum())
        return logits

    def _run(self, piece: Piece, stream) -> torch.Tensor:
        n = len(piece)
        vision = {k: v.to(self.device) for k, v in piece.vision.items()}
        out = self.model(input_ids=piece.input_ids.to(self.device), attention_mask=self._masks,
                         position_ids=torch.zeros(3, 1, n, dtype=torch.long, device=self.device),
                         use_cache=False, logits_to_keep=1, stream=stream, **vision)
        return out.logits[0, -1]

    def _greedy(self, logits: torch.Tensor) -> int:
        logits = logits.clone()
        logits[self._banned] = float("-inf")
        return int(torch.argmax(logits))

    def _evict(self, now: float) -> None:
        gone = self.window.evict(now)
        if self.recall is None:
            return
        for kv, meta, mean_key in gone.frames:
            self.recall.add_frame(kv, meta, mean_key)
        if gone.text is not None:
            self.recall.add_text(*gone.text)

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosed("this streaming session is closed")


def _make_recall(cfg: StreamConfig, layers: int, device: torch.device) -> FrameRecall | None:
    common = dict(layers=layers, device=device, token_budget=cfg.recall_tokens, gpu_bytes=cfg.gpu_recall_bytes,
                  host_bytes=cfg.offload_bytes)
    if cfg.recall == "frame":
        return FrameRecall(**common)
    if cfg.recall == "cluster":
        return ClusterRecall(**common, boundary=cfg.cluster_boundary, max_frames=cfg.cluster_max_frames)
    return None


def load_streaming_model(source: str, cache_dir: str, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, processor) for a Qwen2.5-VL source (HF id, folder, s3:// prefix or ``tiny-random``)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from corpusflow.actors.models.store import resolve

    path = resolve(source, "qwen2_5_vl", cache_dir)
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
    use_stream_attention(model)
    return model, AutoProcessor.from_pretrained(path)
