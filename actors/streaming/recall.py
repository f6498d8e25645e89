"""Recall of evicted vision memory: host-resident blocks scored per layer against a question.

Two strategies behind one interface. :class:`FrameRecall` is the ReKV baseline: one block per frame,
its mean key as representative, top blocks per layer. :class:`ClusterRecall` is Mosaic-style: runs of
consecutive frames whose keys are alike form one cluster, the text spoken/written while they were on
screen joins it, and a cluster moves as one contiguous block — fewer, larger copies and fewer
representatives to score. Blocks selected for a question are copied to the device on a side CUDA
stream into a small LRU of recently used blocks; on CPU the copy is a no-op.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import torch

from actors.streaming.layout import TokenMeta


@dataclass(eq=False)
class Unit:
    """One retrievable block: a frame, or a cluster of frames with their co-occurring text."""

    uid: int
    parts: list[tuple[torch.Tensor, TokenMeta]]  # host kv (layers, 2, kv_heads, n, head_dim), meta
    frames: list[float] = field(default_factory=list)  # stream seconds of its frames
    key_sum: torch.Tensor | None = None  # device (layers, kv_heads, head_dim) sum of its frames' mean keys
    version: int = 0  # bumps whenever parts change, so stale device copies are never reused
    device_meta: TokenMeta | None = None  # metadata of the packed block on the device, once recalled

    @property
    def tokens(self) -> int:
        return sum(len(m) for _, m in self.parts)

    @property
    def host_bytes(self) -> int:
        return sum(kv.numel() * kv.element_size() for kv, _ in self.parts)

    def pack(self, pin: bool) -> tuple[torch.Tensor, TokenMeta]:
        """One contiguous host block in stream order (merging parts added since the last pack)."""
        if len(self.parts) > 1:
            kv = torch.cat([p[0] for p in self.parts], dim=3)
            meta = TokenMeta.cat([p[1] for p in self.parts])
            order = torch.argsort(meta.order)
            kv, meta = kv[:, :, :, order].contiguous(), meta.select(order)
            self.parts = [(kv.pin_memory() if pin else kv, meta)]
            self.device_meta = None
        return self.parts[0]


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
        self._host_bytes = 0
        self._next_uid = 0
        self._lru: OrderedDict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lru_bytes = 0
        self._reps: torch.Tensor | None = None  # (units, layers, kv_heads, head_dim), rebuilt when stale
        self._sizes: torch.Tensor | None = None  # (units,) tokens per unit, rebuilt with _reps
        self.cuda = self.device.type == "cuda"
        self._side = torch.cuda.Stream(self.device) if self.cuda else None
        self.copies = 0  # host→device block copies issued (for benchmarks)

    # -- filling ---------------------------------------------------------------------------------
    def add_frame(self, kv: torch.Tensor, meta: TokenMeta, mean_key: torch.Tensor) -> None:
        self._new_unit(kv, meta, mean_key)
        self._trim()

    def add_text(self, kv: torch.Tensor, meta: TokenMeta) -> None:
        """ReKV keeps vision only."""

    def _new_unit(self, kv: torch.Tensor, meta: TokenMeta, mean_key: torch.Tensor) -> Unit:
        unit = Unit(self._next_uid, [(kv, meta)], [float(meta.time[0])], mean_key.clone())
        self._next_uid += 1
        self.units.append(unit)
        self._host_bytes += unit.host_bytes
        self._reps = None
        return unit

    def _trim(self) -> None:
        while self.units and self._host_bytes > self.host_bytes_cap:
            self._host_bytes -= self.units.pop(0).host_bytes
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
            k, v = self._device_block(unit, layer)
            keys.append(k)
            values.append(v)
            if unit.device_meta is None:
                unit.device_meta = unit.pack(self.cuda)[1].to(self.device)
            metas.append(unit.device_meta)
        if self._side is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._side)
        return Recalled(torch.cat(keys, 1), torch.cat(values, 1), TokenMeta.cat(metas),
                        [self.units[i].uid for i in picked])

    def _device_block(self, unit: Unit, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (unit.uid, unit.version, layer)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        kv, _ = unit.pack(self.cuda)
        src = kv[layer]  # (2, kv_heads, n, head_dim), contiguous in the packed block
        if self._side is None:
            dev = src.to(self.device)
        else:
            self._side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side):
                dev = src.to(self.device, non_blocking=True)
            dev.record_stream(torch.cuda.current_stream(self.device))
        self.copies += 1
        pair = (dev[0], dev[1])
        self._lru[key] = pair
        self._lru_bytes += dev.numel() * dev.element_size()
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
        return self._host_bytes

    def device_bytes(self) -> int:
        reps = 0 if self._reps is None else self._reps.numel() * self._reps.element_size()
        sums = sum(u.key_sum.numel() * u.key_sum.element_size() for u in self.units)
        metas = sum(len(u.device_meta) * 58 for u in self.units if u.device_meta is not None)  # TokenMeta row
        return self._lru_bytes + reps + sums + metas


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
        self._pending: list[tuple[torch.Tensor, TokenMeta]] = []
        self._text_time = float("-inf")  # newest text received: clusters before it are complete

    def add_frame(self, kv: torch.Tensor, meta: TokenMeta, mean_key: torch.Tensor) -> None:
        flat = mean_key.flatten().float()
        cut = True
        if self._previous is not None:
            jump = float(torch.linalg.vector_norm(flat - self._previous))
            typical = sorted(self._jumps)[len(self._jumps) // 2] if len(self._jumps) >= 3 else float("inf")
            cut = jump > self.boundary * typical
            self._jumps.append(jump)
        self._previous = flat
        unit = self._open
        if not cut and unit is not None and unit is self.units[-1] and len(unit.frames) < self.max_frames:
            unit.parts.append((kv, meta))
            self._host_bytes += kv.numel() * kv.element_size()
            unit.frames.append(float(meta.time[0]))
            unit.key_sum += mean_key
            unit.version += 1
            self._reps = None
        else:
            self._open = self._new_unit(kv, meta, mean_key)
        self._flush_pending()
        self._pack_settled()
        self._trim()

    def add_text(self, kv: torch.Tensor, meta: TokenMeta) -> None:
        self._pending.append((kv, meta))
        self._text_time = max(self._text_time, float(meta.time.max()))
        self._flush_pending()
        self._pack_settled()

    def _pack_settled(self) -> None:
        """Pack clusters no frame or text can join any more into one contiguous block now, so a
        question never pays for it."""
        for unit in reversed(self.units[:-1]):
            if unit.frames[-1] >= self._text_time:
                continue
            if len(unit.parts) == 1:
                break
            unit.pack(self.cuda)

    def _flush_pending(self) -> None:
        """Attach waiting text to the cluster on screen at its time, once that frame has arrived."""
        if not self.units or not self._pending:
            return
        newest = self.units[-1].frames[-1]
        keep: list[tuple[torch.Tensor, TokenMeta]] = []
        for kv, meta in self._pending:
            if float(meta.time[0]) > newest:  # blocks are time-sorted: nothing in it is ready
                keep.append((kv, meta))
                continue
            for t in meta.time.unique().tolist():
                sel = torch.nonzero(meta.time == t).squeeze(1)
                if t > newest:
                    keep.append((kv[:, :, :, sel], meta.select(sel)))
                    continue
                unit = self._owner(t)
                unit.parts.append((kv[:, :, :, sel], meta.select(sel)))
                unit.version += 1
                self._reps = None
                self._host_bytes += unit.parts[-1][0].numel() * kv.element_size()
        self._pending = keep

    def _owner(self, t: float) -> Unit:
        """The cluster on screen at second ``t`` (the newest one starting at or before it)."""
        for unit in reversed(self.units):
            if unit.frames[0] <= t:
                return unit
        return self.units[0]
