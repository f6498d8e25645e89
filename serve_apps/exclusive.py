"""Blocking work that must run one call at a time on a replica (a model, a non-re-entrant stage).

Why not ``async with asyncio.Lock(): await asyncio.to_thread(work)``: when the awaiting request is
cancelled (the client left, the deadline passed), the ``async with`` releases the lock at once while
the thread runs on, so the next call starts beside it: concurrent generate calls on one model. Here
the calls go to one worker thread, so the next starts only when the previous one has really ended;
a cancelled call that has not started yet is dropped instead of running for nobody.
"""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Exclusive:
    """``await exclusive.run(fn, *args)`` runs ``fn`` on the one worker thread, after every earlier call.

    ``workers`` above one lets that many calls run at once (a stage whose engine takes concurrent
    calls into one running batch); a cancelled call still never runs beside more than that.
    """

    def __init__(self, name: str, workers: int = 1):
        self._thread = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Cancelling the caller drops the call if it has not started, and otherwise lets it finish."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args))

    async def run_to_end(self, fn: Callable[..., T], *args: Any) -> T:
        """The same, but the call runs even when its caller is cancelled (releasing memory must happen)."""
        return await asyncio.shield(self.run(fn, *args))
