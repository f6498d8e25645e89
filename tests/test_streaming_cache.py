"""The streaming KV window: bounded over very long streams, contiguous positions after every
eviction, and identical to full attention when nothing is evicted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from corpusflow.actors.streaming import StreamConfig, StreamSession, load_streaming_model
from corpusflow.actors.streaming.layout import SINK, TEXT, VISION, TokenMeta
from corpusflow.actors.streaming.recall import ClusterRecall
from corpusflow.actors.streaming.window import StreamWindow


pytestmark = pytest.mark.usefixtures("one_torch_thread")


LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 8


def assert_contiguous(meta: TokenMeta, pos: torch.Tensor) -> None:
    """Segments follow each other without gaps from position 0; tokens inside a segment keep the
    offsets the model gave them (a frame's t/h/w grid, a text token at its segment start)."""
    start = 0
    for i in range(len(meta)):
        if meta.first[i]:
            seg_start = start
            start += int(meta.extent[i])
        assert torch.equal(pos[:, i], meta.local[:, i] + seg_start), f"token {i}: {pos[:, i]} vs base {seg_start}"
    assert bool((torch.diff(meta.order) > 0).all()), "tokens out of stream order"


def _rope(pos: torch.Tensor):
    inv = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
    freqs = pos[0].float()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def _second(t: int, order: int, segment: int, sink_left: int, vision: int = 6, text: int = 5) -> TokenMeta:
    """One synthetic stream second: 2 prompt tokens, a frame span (start, 2x2 grid... , end), 3 text."""
    grid = vision - 2
    local = [[0, 0, 0]] * 2 + [[0, 0, 0]] + [[1, 1 + i // 2, 1 + i % 2] for i in range(grid)] + [[0, 0, 0]]
    local += [[0, 0, 0]] * (text - 2)
    n = len(local)
    is_vis = torch.tensor([False] * 2 + [True] * vision + [False] * (text - 2))
    first = ~is_vis
    first[2] = True
    frame_extent = 2 + 2  # start + max(h, w) + end, as get_rope_index advances
    local_t = torch.tensor(local).T.clone()
    local_t[:, 2 + vision - 1] = frame_extent - 1  # vision_end sits after the grid
    seg_ids = torch.cumsum(first.long(), 0) - 1
    text_rank = torch.cumsum((~is_vis).long(), 0) - 1
    kind = torch.where(is_vis, VISION, torch.where(text_rank < sink_left, SINK, TEXT)).to(torch.int8)
    return TokenMeta(local_t, torch.where(is_vis, frame_extent, 1), first, kind,
                     torch.full((n,), float(t), dtype=torch.float64), order + torch.arange(n), segment + seg_ids)


def test_window_stays_bounded_over_10000_seconds():
    window_s, text_window, sinks, per_frame = 16.0, 40, 12, 6
    bound = sinks + text_window + 17 * per_frame + 11
    w = StreamWindow(LAYERS, KV_HEADS, HEAD_DIM, torch.float32, "cpu", _rope, window_s, 16 * per_frame,
                     text_window, bound_tokens=bound)
    recall = ClusterRecall(LAYERS, "cpu", token_budget=64, gpu_bytes=1 << 20, host_bytes=200_000,
                           boundary=3.0, max_frames=8)
    order = segment = 0
    sink_left = sinks
    sizes, positions, mem = [], [], set()
    for t in range(10_000):
        meta = _second(t, order, segment, sink_left)
        w.plan(meta)
        for layer in range(LAYERS):
            k = torch.randn(KV_HEADS, len(meta), HEAD_DIM)
            w.write(layer, k, torch.randn_like(k), k)
        w.commit()
        order, segment = order + len(meta), int(meta.segment.max()) + 1
        sink_left -= int((meta.kind == SINK).sum())
        gone = w.evict(float(t))
        for frame in gone.frames:
            recall.add_frame(*frame)
        if gone.text is not None:
            recall.add_text(*gone.text)
        sizes.append(len(w))
        positions.append(w.next_position)
        if t > 100:
            mem.add(w.memory_bytes())
        if t % 997 == 0 or t < 40:
            assert_contiguous(w.meta, w.positions())
    assert max(sizes) <= bound and w.capacity <= bound
    assert len(mem) == 1, "device memory must be flat once the window is full"
    assert max(positions[100:]) == min(positions[100:]), "positions must not grow with stream time"
    assert recall.host_bytes() <= 200_000, "host memory for evicted blocks is capped too"
    frames = sorted(set(w.meta.time[w.meta.kind == VISION].tolist()))
    assert frames == [float(t) for t in range(10_000 - 16, 10_000)], "exactly the last 16 s of vision"
    assert int((w.meta.kind == SINK).sum()) == sinks and float(w.meta.time[0]) == 0.0, "sinks are never evicted"
    assert int((w.meta.kind == TEXT).sum()) == text_window


@pytest.fixture(scope="module")
def tiny(model_cache):
    return load_streaming_model("tiny-random", model_cache)


def _frames(rng: np.random.Generator, k: int = 2) -> np.ndarray:
    return rng.integers(0, 255, (k, 56, 56, 3), dtype=np.uint8)


def test_positions_contiguous_after_every_eviction_with_the_model(tiny):
    model, processor = tiny
    cfg = StreamConfig(fps=2, frame_pixels=56 * 56, vision_window_s=3, sink_tokens=24, text_window=16,
                       commentary_tokens=3, recall="cluster")
    s = StreamSession(model, processor, cfg)
    rng = np.random.default_rng(0)
    for t in range(12):
        s.push_chunk(_frames(rng), float(t))
        assert_contiguous(s.window.meta, s.window.positions())
        report = s.memory_report()
        assert report["window_tokens"] <= report["capacity_tokens"] <= report["bound_tokens"]
        assert s.window_frames() == [float(x) for x in range(max(0, t - 2), t + 1)]
    report = s.memory_report()
    assert report["recall_units"] >= 1 and report["recall_host_bytes"] > 0
    assert report["recall_host_reserved_bytes"] >= report["recall_host_bytes"]
    assert s.memory_bytes() == report["window_bytes"] + report["recall_device_bytes"]


def test_without_eviction_outputs_equal_full_attention(tiny):
    """Windows larger than the stream: every logit the session decides on equals the model's own
    full-attention forward over the same token sequence, positions from its own get_rope_index."""
    model, processor = tiny
    cfg = StreamConfig(fps=2, frame_pixels=56 * 56, vision_window_s=1e6, sink_tokens=10**6,
                       text_window=10**6, commentary_tokens=4, recall="none")
    s = StreamSession(model, processor, cfg)
    pieces, decided = [], []
    run, greedy = s._run, s._greedy
    s._run = lambda piece, stream: (pieces.append(piece), run(piece, stream))[1]
    s._greedy = lambda logits: (decided.append(logits.clone()), greedy(logits))[1]
    rng = np.random.default_rng(1)
    for t in range(4):
        s.push_chunk(_frames(rng), float(t))
    pieces.insert(0, s.encoder.text(f"<|im_start|>system\n{cfg.system_prompt}<|im_end|>\n"))
    assert s.recall is None and len(s.window) == sum(len(p) for p in pieces)

    ids = torch.cat([p.input_ids for p in pieces], 1)
    videos = [p.vision for p in pieces if p.vision]
    types = (ids == processor.video_token_id).int() * 2
    with torch.inference_mode():
        full = model(input_ids=ids, mm_token_type_ids=types, use_cache=False,
                     pixel_values_videos=torch.cat([v["pixel_values_videos"] for v in videos]),
                     video_grid_thw=torch.cat([v["video_grid_thw"] for v in videos]),
                     second_per_grid_ts=torch.cat([v["second_per_grid_ts"] for v in videos])).logits[0]
    ends = torch.cumsum(torch.tensor([len(p) for p in pieces]), 0) - 1
    assert len(decided) == len(pieces) - 1  # every piece after the system prompt led to a decision
    for logits, end in zip(decided, ends[1:]):
        ref = full[end]
        torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
        banned = list(s.tokens.vision_only)
        ref, logits = ref.clone(), logits.clone()
        ref[banned] = logits[banned] = float("-inf")
        assert int(ref.argmax()) == int(logits.argmax())
