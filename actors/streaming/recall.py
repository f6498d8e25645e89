"""Recall of evicted vision memory: host-resident blocks scored per layer against a question.

Two strategies behind one interface. :class:`FrameRecall` is the ReKV baseline: one block per frame,
its mean key as representative, top blocks per layer. :class:`ClusterRecall` is Mosaic-style: runs of
consecutive frames whose keys are alike form one cluster, the text spoken/written while they were on
screen joins it, and a cluster moves as one block — fewer, larger copies and fewer representatives
to score. A cluster's rows lie in host slabs (:mod:`corpusflow.actors.streaming.host_slabs`): its frames one
after another, its text likewise, so a layer of it comes back in a few contiguous copies. Blocks
selected for a question are copied to the device on a side CUDA stream, put in stream order there,
and kept in a small LRU of recently used blocks.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from corpusflow.actors.streaming.host_slabs import Extent, HostSlabs, Run, slice_rows
from corpusflow.actors.streaming.layout import TokenMeta


@dataclass(eq=False)
class Unit:
    """One retrievable block: a frame, or a cluster of frames with their co-occurring text."""

    uid: int
    vision: Run  # the frames' rows in the host slabs
    frames: list[float]  # stream seconds of its frames
    key_sum: torch.Tensor  # device (layers, kv_heads, head_dim) sum of its frames' mean keys
    text: Run = field(default_factory=Run)  # the co-occurring text's rows
    version: int = 0  # bumps whenever rows are added, so stale device copies are never reused
    _device: tuple[TokenMeta, torch.Tensor | None] | None = field(default=None, init=False, repr=False)

    @property
    def tokens(self) -> int:
        return self.vision.tokens + self.text.tokens

    @property
    def extents(self) -> list[Extent]:
        """Host rows in the order a device copy lays them out: frames, then text."""
        return self.vision.extents + self.text.extents

    def add(self, run: Run, extents: list[Extent], meta: TokenMeta) -> None:
        run.add(extents, meta)
        self.version += 1
        self._device = None

    def on_device(self, device: torch.device) -> tuple[TokenMeta, torch.Tensor | None]:
        """The unit's metadata in stream order on the device, and the permutation that puts its
        copied rows (frames, then text) in that order (None when they already are)."""
        if self._device is None:
            meta = TokenMeta.cat(self.vision.metas + self.text.metas)
            order = torch.argsort(meta.order)
            ordered = bool((torch.diff(meta.order) > 0).all())
            self._device = (meta.select(order).to(device), None if ordered else order.to(device))
        return self._device

    def device_bytes(self) -> int:
        if self._device is None:
            return 0
        meta, order = self._device
        return len(meta) * 58 + (0 if order is None else order.numel() * 8)  # a TokenMeta row is 58 bytes


@dataclass
class Recalled:
    """Per layer: the recalled tokens' pre-RoPE keys, values (kv_heads, n, head_dim) and metadata."""

    keys: torch.Tensor
    values: torch.Tensor
    meta: TokenMeta
    units: list[int]


class FrameRecall:
    """ReKV-style: every evicted frame is its own block; text that leaves the window is dropped."""

    def __init__(self, layers: int, device: torch.device, token_budget: int, gpu_bytes: int, host_bytes: int):
        self.layers, self.device = layers, torch.device(device)
        self.token_budget, self.gpu_bytes, self.host_bytes_cap = token_budget, gpu_bytes, host_bytes
        self.units: list[Unit] = []
        self.cuda = self.device.type == "cuda"
        self._host = HostSlabs(host_bytes, pin=self.cuda)  # async device copies need pinned memory
        self._next_uid = 0
        self._lru: OrderedDict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lru_bytes = 0
        self._reps: torch.Tensor | None = None  # (units, layers, kv_heads, head_dim), rebuilt when stale
        self._sizes: torch.Tensor | None = None  # (units,) tokens per unit, rebuilt with _reps
        self._side = torch.cuda.Stream(self.device) if self.cuda else None
        self.copies = 0  # host→device copies issued, one per extent of each recalled block (for benchmarks)

    # -- filling ---------------------------------------------------------------------------------
    def add_frame(self, kv: torch.Tensor, meta: TokenMeta, mean_key: torch.Tensor) -> None:
        """Keep an evicted frame: kv (layers, 2, kv_heads, n, head_dim) on its device, host meta,
        and its mean pre-RoPE key per layer and head (layers, kv_heads, head_dim)."""
        self._new_unit(self._host.write("vision", kv), meta, mean_key)
        self._trim()

    def add_text(self, kv: torch.Tensor, meta: TokenMeta) -> None:
        """ReKV keeps vision only."""

    def _new_unit(self, extents: list[Extent], meta: TokenMeta, mean_key: torch.Tensor) -> Unit:
        unit = Unit(self._next_uid, Run(extents, [meta]), [float(meta.time[0])], mean_key.clone())
        self._next_uid += 1
        self.units.append(unit)
        self._reps = None
        return unit

    def _trim(self) -> None:
        """Drop the oldest units while the host holds more than the cap."""
        while self.units and self._host.used_bytes > self.host_bytes_cap:
            self._host.release(self.units.pop(0).extents)
            self._reps = None

    # -- a question ------------------------------------------------------------------------------
    def select(self, layer: int, query: torch.Tensor) -> list[int]:
        """Indices into ``units`` (in stream order) whose representatives score highest against the
        question's mean query (kv_heads, head_dim) at this layer, within the token budget."""
        if not self.units or self.token_budget <= 0:
            return []
        reps = self.representatives()[:, layer]  # (units, kv_heads, head_dim)
        order = torch.argsort(torch.einsum("ukd,kd->u", reps, query.float()), descending=True)
        sizes = self._sizes[order]
        fits = int((torch.cumsum(sizes, 0) <= self.token_budget).sum())  # the best ones that fit, at once
        take = order[:fits].tolist()
        left, smallest = self.token_budget - int(sizes[:fits].sum()), int(sizes.min())
        for i, size in zip(order[fits:].tolist(), sizes[fits:].tolist()):  # then skip what does not fit
            if left < smallest:
                break
            if size <= left:
                take.append(i)
                left -= size
        return sorted(take)

    def representatives(self) -> torch.Tensor:
        if self._reps is None:
            self._reps = torch.stack([u.key_sum / len(u.frames) for u in self.units]).to(self.device)
            self._sizes = torch.tensor([u.tokens for u in self.units], device=self.device)
        return self._reps

    def fetch(self, layer: int, picked: list[int]) -> Recalled | None:
        """The picked units' KV for one layer on the device, concatenated in stream order."""
        if not picked:
            return None
        keys, values, metas = [], [], []
        for i in picked:
            unit = self.units[i]
            metas.append(unit.on_device(self.device)[0])
            k, v = self._device_block(unit, layer)
            keys.append(k)
            values.append(v)
        if self._side is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._side)
        return Recalled(torch.cat(keys, 1), torch.cat(values, 1), TokenMeta.cat(metas),
                        [self.units[i].uid for i in picked])

    def _device_block(self, unit: Unit, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (unit.uid, unit.version, layer)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        order = unit.on_device(self.device)[1]
        parts = [e.layer(layer) for e in unit.extents]  # host (n_i, 2, kv_heads, head_dim), pinned on CUDA
        current = torch.cuda.current_stream(self.device) if self._side is not None else None
        if self._side is not None:
            self._side.wait_stream(current)  # rows written to the host on the current stream have landed
        with torch.cuda.stream(self._side) if self._side is not None else nullcontext():
            rows = torch.empty((unit.tokens, *parts[0].shape[1:]), dtype=parts[0].dtype, device=self.device)
            at = 0
            for part in parts:
                rows[at:at + len(part)].copy_(part, non_blocking=True)
                at += len(part)
            if order is not None:
                rows = rows[order]
            block = rows.permute(1, 2, 0, 3).contiguous()  # (2, kv_heads, n, head_dim) in stream order
        if current is not None:
            block.record_stream(current)
        self.copies += len(parts)
        pair = (block[0], block[1])
        self._lru[key] = pair
        self._lru_bytes += block.numel() * block.element_size()
        while self._lru_bytes > self.gpu_bytes and len(self._lru) > 1:
            _, (k, v) = self._lru.popitem(last=False)
            self._lru_bytes -= 2 * k.numel() * k.element_size()
        return pair

    def drop_device_copies(self) -> None:
        """Empty the device LRU (the next question copies everything it needs again)."""
        self._lru.clear()
        self._lru_bytes = 0

    def frames_of(self, uids: list[int]) -> list[float]:
        by_uid = {u.uid: u for u in self.units}
        return sorted(t for uid in uids if uid in by_uid for t in by_uid[uid].frames)

    # -- memory ----------------------------------------------------------------------------------
    def host_bytes(self) -> int:
        """Host bytes of the evicted rows kept: at most the cap after every add (oldest units go first)."""
        return self._host.used_bytes

    def host_reserved_bytes(self) -> int:
        """Host memory held for them: slabs in use or free (pinned on CUDA)."""
        return self._host.reserved_bytes()

    def device_bytes(self) -> int:
        reps = 0 if self._reps is None else self._reps.numel() * self._reps.element_size()
        sums = sum(u.key_sum.numel() * u.key_sum.element_size() for u in self.units)
        return self._lru_bytes + reps + sums + sum(u.device_bytes() for u in self.units)


class ClusterRecall(FrameRecall):
    """Mosaic-style: a frame joins the open cluster unless its keys jump from the previous frame's by
    more than ``boundary`` times the stream's typical frame-to-frame change (a shot cut, a planted
    frame), or the cluster is full. Relative to the typical change, because all keys share a large
    common component that makes absolute similarities uninformative. Text evicted later joins the
    cluster that was on screen at its time (or waits for its frame to be evicted)."""

    def __init__(self, *args, boundary: float, max_frames: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.boundary, self.max_frames = boundary, max_frames
        self._open: Unit | None = None
        self._previous: torch.Tensor | None = None
        self._jumps: deque[float] = deque(maxlen=64)
        self._pending: list[tuple[list[Extent], TokenMeta]] = []  # text on the host, waiting for its frame

    def add_frame(self, kv: torch.Tensor, meta: TokenMeta, mean_key: torch.Tensor) -> None:
        flat = mean_key.flatten().float()
        cut = True
        if self._previous is not None:
            jump = float(torch.linalg.vector_norm(flat - self._previous))
            typical = sorted(self._jumps)[len(self._jumps) // 2] if len(self._jumps) >= 3 else float("inf")
            cut = jump > self.boundary * typical
            self._jumps.append(jump)
        self._previous = flat
        extents = self._host.write("vision", kv)
        unit = self._open
        if not cut and unit is not None and self.units and unit is self.units[-1] \
                and len(unit.frames) < self.max_frames:
            unit.add(unit.vision, extents, meta)
            unit.frames.append(float(meta.time[0]))
            unit.key_sum += mean_key
            self._reps = None
        else:
            self._open = self._new_unit(extents, meta, mean_key)
        self._flush_pending()
        self._trim()

    def add_text(self, kv: torch.Tensor, meta: TokenMeta) -> None:
        self._pending.append((self._host.write("text", kv), meta))
        self._flush_pending()
        self._trim()

    def _flush_pending(self) -> None:
        """Attach waiting text to the cluster on screen at its time, once that frame has arrived."""
        if not self.units or not self._pending:
            return
        newest = self.units[-1].frames[-1]
        keep: list[tuple[list[Extent], TokenMeta]] = []
        for extents, meta in self._pending:
            if float(meta.time[0]) > newest:  # blocks are time-sorted: nothing in it is ready
                keep.append((extents, meta))
                continue
            seconds, counts = torch.unique_consecutive(meta.time, return_counts=True)
            start = 0
            for t, n in zip(seconds.tolist(), counts.tolist()):
                rows, piece = slice_rows(extents, start, start + n), meta.select(torch.arange(start, start + n))
                start += n
                if t > newest:
                    keep.append((rows, piece))
                    continue
                unit = self._owner(t)
                unit.add(unit.text, rows, piece)
                self._reps = None
        self._pending = keep

    def _owner(self, t: float) -> Unit:
        """The cluster on screen at second ``t`` (the newest one starting at or before it)."""
        for unit in reversed(self.units):
            if unit.frames[0] <= t:
                return unit
        return self.units[0]
