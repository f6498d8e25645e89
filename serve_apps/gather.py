"""Online batching that forms each batch when the stage becomes free, from everything waiting.

Why not ``@serve.batch``: Ray Serve's batch queue closes a batch ``batch_wait_timeout_s`` after its
first request arrives and only then waits for the stage (``max_concurrent_batches``; Ray 2.60, since
ray-project/ray#53096). Under load the stage is busy, so batch after batch closes with the one or
two requests that arrived in that short window and queues behind the running one: measured with 16
clients on a saturated VLM, 1.1 requests per call. Here a single worker takes the next batch only
after the previous call returned, so the requests that arrived meanwhile go in together (up to
``max_batch_size``); an idle stage still waits ``batch_wait_timeout_s`` for company, as
``@serve.batch`` does.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Optional, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Gatherer(Generic[Item, Result]):
    """``await gatherer.submit(item)`` runs ``call`` on a list of items that waited together and
    returns this item's result; ``call`` must return one result per item, in order."""

    def __init__(self, call: Callable[[list[Item]], Awaitable[list[Result]]], max_batch_size: int,
                 batch_wait_timeout_s: float):
        if max_batch_size < 1 or batch_wait_timeout_s < 0:
            raise ValueError("max_batch_size must be ≥ 1 and batch_wait_timeout_s ≥ 0")
        self.call, self.max_batch_size, self.wait_s = call, max_batch_size, batch_wait_timeout_s
        self._queue: Optional[asyncio.Queue] = None
        self._worker: Optional[asyncio.Task] = None

    async def submit(self, item: Item) -> Result:
        if self._worker is None:  # created on the event loop that serves the requests
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        waiting: _Waiting = _Waiting(item)
        self._queue.put_nowait(waiting)
        return await waiting.future

    async def _next_batch(self) -> list[_Waiting]:
        """The oldest waiting request, plus those that arrive within the wait, plus all queued, up to the max."""
        queue = self._queue
        batch = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [w for w in batch if not w.future.done()]  # a cancelled request (client gone) is dropped

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await self.call([w.item for w in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batched call returned {len(results)} results for {len(batch)} requests")
            except Exception as e:  # noqa: BLE001 - the callers get the error; the worker serves the next batch
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            for w, r in zip(batch, results):
                if not w.future.done():
                    w.future.set_result(r)
