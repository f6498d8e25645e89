"""Recall of evicted memory: a question about a planted frame brings back the block holding it,
for Mosaic-style clusters and the ReKV-style frame baseline; co-occurring text rides along; a
question leaves the stream untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from corpusflow.actors.streaming import SessionClosed, StreamConfig, StreamSession, load_streaming_model
from corpusflow.actors.streaming.layout import TEXT, VISION, TokenMeta
from corpusflow.actors.streaming.recall import ClusterRecall, FrameRecall
from tests.test_streaming_cache import assert_contiguous


pytestmark = pytest.mark.usefixtures("one_torch_thread")


LAYERS, KV_HEADS, HEAD_DIM, TOKENS = 3, 2, 16, 6
PLANTED = (37, 121)


def _block(t: float, keys: torch.Tensor, kind: int = VISION, order: int = 0):
    """Host KV (layers, 2, kv_heads, n, head_dim) + metadata for n tokens at second t."""
    n = keys.shape[2]
    kv = torch.stack([keys, torch.randn_like(keys)], dim=1)
    meta = TokenMeta(torch.zeros(3, n, dtype=torch.long), torch.ones(n, dtype=torch.long),
                     torch.ones(n, dtype=torch.bool), torch.full((n,), kind, dtype=torch.int8),
                     torch.full((n,), float(t), dtype=torch.float64), order + torch.arange(n),
                     torch.full((n,), int(t), dtype=torch.long))
    return kv, meta


def _planted_stream(recall: FrameRecall, seed: int = 0) -> torch.Tensor:
    """200 s in 10 scenes of alike frames, all sharing a large key bias; two planted frames carry a
    distinctive direction. Returns that direction per layer (what a question about them asks for)."""
    g = torch.Generator().manual_seed(seed)
    bias = 4 * torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM, generator=g)
    planted = torch.nn.functional.normalize(torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM, generator=g), dim=-1)
    scene = torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM, generator=g)
    for t in range(200):
        if t % 20 == 0:
            scene = torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM, generator=g)
        keys = bias + scene + 0.05 * torch.randn(LAYERS, KV_HEADS, TOKENS, HEAD_DIM, generator=g)
        if t in PLANTED:
            keys = keys + 6 * planted
        kv, meta = _block(t, keys, order=t * 100)
        recall.add_frame(kv, meta, kv[:, 0].float().mean(2))
    return planted[:, :, 0]


@pytest.mark.parametrize("kind", ["cluster", "frame"])
def test_question_about_planted_frame_recalls_its_block(kind):
    common = dict(layers=LAYERS, device="cpu", token_budget=4 * TOKENS, gpu_bytes=1 << 20, host_bytes=1 << 30)
    recall = (ClusterRecall(**common, boundary=3.0, max_frames=16) if kind == "cluster"
              else FrameRecall(**common))
    direction = _planted_stream(recall)
    for layer in range(LAYERS):
        picked = recall.select(layer, direction[layer])
        assert sum(recall.units[i].tokens for i in picked) <= 4 * TOKENS, "the token budget holds"
        got = recall.fetch(layer, picked)
        frames = recall.frames_of(got.units)
        assert set(PLANTED) <= set(frames), f"layer {layer}: recalled {frames}"
        assert got.keys.shape == (KV_HEADS, got.meta.order.shape[0], HEAD_DIM)
        assert bool((torch.diff(got.meta.order) > 0).all()), "recalled blocks come back in stream order"
    if kind == "cluster":
        assert len(recall.units) < 40, "alike frames share clusters"
        planted_units = [u for u in recall.units if set(u.frames) & set(PLANTED)]
        assert all(len(u.frames) == 1 for u in planted_units), "a distinctive frame starts its own cluster"
    else:
        assert len(recall.units) == 200


def test_text_joins_the_cluster_on_screen_and_waits_for_its_frame():
    recall = ClusterRecall(LAYERS, "cpu", token_budget=64, gpu_bytes=1 << 20, host_bytes=1 << 30,
                           boundary=3.0, max_frames=4)
    base = torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM)
    for t in range(3):
        kv, meta = _block(t, base + 0.01 * torch.randn(LAYERS, KV_HEADS, TOKENS, HEAD_DIM), order=t * 100)
        recall.add_frame(kv, meta, kv[:, 0].float().mean(2))
    kv, meta = _block(1, torch.randn(LAYERS, KV_HEADS, 2, HEAD_DIM), kind=TEXT, order=150)
    recall.add_text(kv, meta)
    early = _block(5, torch.randn(LAYERS, KV_HEADS, 2, HEAD_DIM), kind=TEXT, order=550)
    recall.add_text(*early)
    assert recall.units[0].tokens == 3 * TOKENS + 2, "text of second 1 joined the cluster showing it"
    kv, meta = _block(5, base + 0.01 * torch.randn(LAYERS, KV_HEADS, TOKENS, HEAD_DIM), order=500)
    recall.add_frame(kv, meta, kv[:, 0].float().mean(2))
    assert sum(u.tokens for u in recall.units) == 4 * TOKENS + 4, "text waited for its frame"
    got = recall.fetch(0, [len(recall.units) - 1])
    assert got.keys.shape[1] == got.values.shape[1] == len(got.meta) == recall.units[-1].tokens
    assert bool((torch.diff(got.meta.order) > 0).all()), "a cluster's frames and text come back in stream order"


def test_host_memory_for_evicted_blocks_is_capped():
    one = LAYERS * 2 * KV_HEADS * TOKENS * HEAD_DIM * 4
    recall = FrameRecall(LAYERS, "cpu", token_budget=64, gpu_bytes=1 << 20, host_bytes=10 * one)
    _planted_stream(recall)
    assert recall.host_bytes() <= 10 * one and [u.frames[0] for u in recall.units] == list(range(190, 200))


@pytest.fixture(scope="module")
def tiny(model_cache):
    return load_streaming_model("tiny-random", model_cache)


@pytest.mark.parametrize("kind", ["cluster", "frame"])
def test_session_answers_from_recalled_memory_and_frees_it(tiny, kind):
    model, processor = tiny
    cfg = StreamConfig(fps=2, frame_pixels=56 * 56, vision_window_s=3, sink_tokens=24, text_window=16,
                       commentary_tokens=2, answer_tokens=3, recall=kind, recall_tokens=60)
    s = StreamSession(model, processor, cfg)
    rng = np.random.default_rng(0)
    for t in range(10):
        frames = np.full((2, 56, 56, 3), 255 if t == 4 else 40, np.uint8)
        frames[..., t % 3] += rng.integers(0, 20, (2, 56, 56), dtype=np.uint8)
        s.push_chunk(frames, float(t))
    before = (len(s.window), s.window.next_position, s.memory_report()["recall_host_bytes"])
    questions = []
    run = s._run
    s._run = lambda piece, stream: (questions.append(stream), run(piece, stream))[1]
    answer = s.ask("When did the screen turn white?")
    s._run = run
    for layer in questions[0].layers:  # sinks + recalled + recent, laid out contiguously
        assert_contiguous(layer["meta"], layer["pos"])
    assert answer.recalled and set(answer.recalled) <= set(range(7)), "recall draws on evicted frames only"
    assert answer.timestamps and set(answer.timestamps) <= set(answer.recalled)
    assert isinstance(answer.text, str)
    assert (len(s.window), s.window.next_position, s.memory_report()["recall_host_bytes"]) == before
    assert s.recall.copies > 0 and s.memory_report()["recall_device_bytes"] > 0
    s.push_chunk(np.zeros((1, 56, 56, 3), np.uint8), 10.0)  # the stream goes on after a question
    s.close()
    with pytest.raises(SessionClosed):
        s.push_chunk(np.zeros((2, 56, 56, 3), np.uint8), 11.0)


def _stream_with_text(recall: FrameRecall, seconds: int, each=lambda t: None,
                      device: str = "cpu") -> dict[int, torch.Tensor]:
    """Frames in 20-s scenes, and each second's 1-3 text tokens evicted 4 s after its frame, as a
    session does (KV on ``device``, metadata on the host); ``each(t)`` after every second. Returns
    every token's KV (layers, 2, kv_heads, head_dim) by its stream order."""
    g = torch.Generator().manual_seed(0)
    bias = 4 * torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM, generator=g)
    by_order: dict[int, torch.Tensor] = {}

    def keep(kv: torch.Tensor, meta: TokenMeta) -> None:
        for i, o in enumerate(meta.order.tolist()):
            by_order[o] = kv[:, :, :, i].clone()

    for t in range(seconds):
        if t % 20 == 0:
            scene = torch.randn(LAYERS, KV_HEADS, 1, HEAD_DIM, generator=g)
        kv, meta = _block(t, bias + scene + 0.05 * torch.randn(LAYERS, KV_HEADS, TOKENS, HEAD_DIM, generator=g),
                          order=t * 100)
        keep(kv, meta)
        kv = kv.to(device)
        recall.add_frame(kv, meta, kv[:, 0].float().mean(2))
        if t >= 4:
            text = _block(t - 4, torch.randn(LAYERS, KV_HEADS, 1 + t % 3, HEAD_DIM, generator=g), kind=TEXT,
                          order=(t - 4) * 100 + 50)
            keep(*text)
            recall.add_text(text[0].to(device), text[1])
        each(t)
    return by_order


@pytest.mark.parametrize("kind", ["cluster", "frame"])
def test_host_memory_stays_within_the_cap_and_stops_growing_once_it_is_reached(kind):
    """Over a long stream the evicted rows never exceed offload_bytes, the host memory held for them
    stays within a few percent of it, and once the cap is reached old memory is reused: no further
    host allocation (on CUDA: no page-locking on the step path)."""
    one = LAYERS * 2 * KV_HEADS * TOKENS * HEAD_DIM * 4
    cap = 300 * one
    common = dict(layers=LAYERS, device="cpu", token_budget=64, gpu_bytes=1 << 20, host_bytes=cap)
    recall = ClusterRecall(**common, boundary=3.0, max_frames=16) if kind == "cluster" else FrameRecall(**common)
    used, reserved = [], []
    _stream_with_text(recall, 2000, lambda t: (used.append(recall.host_bytes()),
                                               reserved.append(recall.host_reserved_bytes())))
    full = next(t for t, u in enumerate(used) if u > 0.9 * cap)
    assert max(used) <= cap and min(used[full:]) > 0.9 * cap, "the cap holds, and is used"
    assert max(reserved) <= 1.1 * cap, "partly used slabs are a small share of the cap"
    assert reserved[-1] == reserved[full + 100], "no host allocation once the cap has been reached"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_recalled_blocks_hold_exactly_the_evicted_kv_in_stream_order(device):
    """Clusters whose frames and text span several slabs, after the oldest were dropped for the cap:
    every recalled layer is the evicted KV itself, token by token, in stream order; on CUDA the host
    rows it is copied from are pinned (asynchronous copies)."""
    one = LAYERS * 2 * KV_HEADS * TOKENS * HEAD_DIM * 4
    recall = ClusterRecall(LAYERS, device, token_budget=10**6, gpu_bytes=1 << 30, host_bytes=150 * one,
                           boundary=3.0, max_frames=16)
    by_order = _stream_with_text(recall, 200, device=device)
    assert recall.units[0].frames[0] > 0, "the oldest clusters were dropped"
    assert any(u.text.tokens and len(u.vision.extents) > 1 for u in recall.units), "clusters span slabs"
    assert recall.units[0].extents[0].layer(0).is_pinned() == (device == "cuda")
    for layer in range(LAYERS):
        got = recall.fetch(layer, list(range(len(recall.units))))
        assert bool((torch.diff(got.meta.order) > 0).all())
        want = torch.stack([by_order[o][layer] for o in got.meta.order.tolist()], dim=2)  # (2, kv_heads, n, d)
        assert torch.equal(got.keys.cpu(), want[0]) and torch.equal(got.values.cpu(), want[1])
