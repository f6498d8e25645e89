"""Host memory for evicted KV: a few large slabs, allocated on first need and then recycled, from
which every evicted frame and text piece takes its rows.

Why: page-locking memory (``cudaHostAlloc``) is slow. Done once per evicted frame, and again to
re-pin each cluster whenever it was re-concatenated, it added tens of milliseconds to stream steps
until the host cap was reached and freed memory started being reused. Here pinned memory comes in
big pieces, the next piece is made on a worker thread before it is needed, and once the cap is
reached every slab is a recycled one: nothing is allocated any more.

Rows are laid out per layer, token-major — (layers, rows, 2, kv_heads, head_dim) — so the rows one
unit receives one after another (a cluster growing frame by frame) stay contiguous within every
layer, and recall copies one layer of a unit to the device in one piece per extent, from pinned
memory.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from corpusflow.actors.streaming.layout import TokenMeta

SLAB_BYTES = 128 << 20  # a power of two: torch's pinned allocator rounds every request up to one
SLABS_PER_CAP = 64  # smaller caps get smaller slabs, so partly used slabs stay a small share of the cap
SLAB_TOKENS = 4096  # and small models smaller ones (a 7B model reaches SLAB_BYTES first)


@dataclass(eq=False)
class Slab:
    rows: torch.Tensor  # (layers, n, 2, kv_heads, head_dim), a view of the slab's memory
    filled: int = 0  # rows handed out so far, in order
    live: int = 0  # rows handed out and not released yet


@dataclass(frozen=True, eq=False)
class Extent:
    """Rows [start, stop) of one slab: contiguous within every layer."""

    slab: Slab
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def layer(self, layer: int) -> torch.Tensor:
        """(n, 2, kv_heads, head_dim), contiguous."""
        return self.slab.rows[layer, self.start:self.stop]


def slice_rows(extents: list[Extent], start: int, stop: int) -> list[Extent]:
    """Rows [start, stop) of the rows that ``extents`` hold one after the other."""
    out, at = [], 0
    for e in extents:
        lo, hi = max(start, at), min(stop, at + len(e))
        if lo < hi:
            out.append(Extent(e.slab, e.start + lo - at, e.start + hi - at))
        at += len(e)
    return out


@dataclass
class Run:
    """What a unit holds in one line of slabs: its extents in row order and every row's metadata."""

    extents: list[Extent] = field(default_factory=list)
    metas: list[TokenMeta] = field(default_factory=list)

    def add(self, extents: list[Extent], meta: TokenMeta) -> None:
        """Append rows; rows written right after this run's last ones extend its last extent."""
        if self.extents and extents and self.extents[-1].slab is extents[0].slab \
                and self.extents[-1].stop == extents[0].start:
            extents = [Extent(extents[0].slab, self.extents.pop().start, extents[0].stop), *extents[1:]]
        self.extents += extents
        self.metas.append(meta)

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.extents)


class HostSlabs:
    """Rows of evicted KV in slabs of one size on the host, pinned when ``pin``. Each write goes to a
    named line ("vision", "text") that fills its current slab in order, so consecutive writes to a
    line are adjacent. A slab whose rows are all released is reused; a new one is allocated only
    when none is free — with ``pin``, on a worker thread, one slab ahead of need. Memory held stays
    within what the units hold, plus the unfilled and the already freed part of each line's oldest
    and newest slab, plus that one spare."""

    def __init__(self, cap_bytes: int, pin: bool):
        self.cap_bytes, self.pin = cap_bytes, pin
        self.slab_bytes = 0  # fixed by the first write: a slab holds at least one token
        self._token_bytes = 0  # one token's row over all layers, fixed by the first write
        self.used_bytes = 0  # bytes of rows written and not released
        self.slabs = 0  # slabs allocated so far (the spare included)
        self._view = None  # slab memory (uint8) -> rows view; set by the first write
        self._free: list[Slab] = []
        self._lines: dict[str, Slab] = {}
        self._spare: Future | None = None
        self._maker = ThreadPoolExecutor(1, thread_name_prefix="pinned-slabs") if pin else None

    def write(self, line: str, kv: torch.Tensor) -> list[Extent]:
        """Copy ``kv`` (layers, 2, kv_heads, n, head_dim) from any device into the next rows of
        ``line``. From a CUDA device the copy is asynchronous, ordered on the current stream (recall's
        side stream waits for that stream before copying rows back)."""
        rows = kv.permute(0, 3, 1, 2, 4).contiguous()  # (layers, n, 2, kv_heads, head_dim)
        if self._view is None:
            self._shape(rows)
        out, done, n = [], 0, rows.shape[1]
        while done < n:
            slab = self._lines.get(line)
            if slab is None or slab.filled == slab.rows.shape[1]:
                if slab is not None and slab.live == 0:
                    self._free.append(slab)
                slab = self._lines[line] = self._take()
            start = slab.filled
            take = min(n - done, slab.rows.shape[1] - start)
            for layer in range(rows.shape[0]):
                slab.rows[layer, start:start + take].copy_(rows[layer, done:done + take], non_blocking=True)
            slab.filled += take
            slab.live += take
            done += take
            out.append(Extent(slab, start, start + take))
        self.used_bytes += n * self._token_bytes
        return out

    def release(self, extents: list[Extent]) -> None:
        """Give rows back; a slab with no rows left is reused (from its start if a line is filling it)."""
        for e in extents:
            e.slab.live -= len(e)
            self.used_bytes -= len(e) * self._token_bytes
            if e.slab.live == 0:
                if any(e.slab is s for s in self._lines.values()):
                    e.slab.filled = 0
                else:
                    self._free.append(e.slab)

    def reserved_bytes(self) -> int:
        """Host memory held in slabs, in use or free."""
        return self.slabs * self.slab_bytes

    def _shape(self, rows: torch.Tensor) -> None:
        self._token_bytes = rows[:, 0].numel() * rows.element_size()
        self.slab_bytes = max(self._token_bytes, min(SLAB_BYTES, self.cap_bytes // SLABS_PER_CAP,
                                                     SLAB_TOKENS * self._token_bytes))
        per_slab = self.slab_bytes // self._token_bytes
        shape, dtype = (rows.shape[0], per_slab, *rows.shape[2:]), rows.dtype
        self._view = lambda mem: mem[:per_slab * self._token_bytes].view(dtype).view(shape)

    def _take(self) -> Slab:
        if self._free:
            slab = self._free.pop()
            slab.filled = 0
            return slab
        if self._spare is not None:
            mem, self._spare = self._spare.result(), None
        else:
            mem = self._make()
        if self._maker is not None:
            self._spare = self._maker.submit(self._make)
        return Slab(self._view(mem))

    def _make(self) -> torch.Tensor:
        """Runs on the worker thread only while the main thread is not making one itself."""
        self.slabs += 1
        return torch.empty(self.slab_bytes, dtype=torch.uint8, pin_memory=self.pin)
