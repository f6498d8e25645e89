"""A time limit on the work of the calling thread, whichever thread that is.

Ray runs task stages on a worker's main thread but actor stages on another thread, so a SIGALRM
timer (main thread only) cannot serve both. Here a timer thread raises :class:`TimeLimit` inside the
limited thread (CPython's ``PyThreadState_SetAsyncExc``): it lands at the next Python bytecode, so a
loop over frames, pages or audio chunks stops within one step; a single C call that never returns is
not interrupted (the input limits, checked from headers before decoding, keep those bounded).
"""
from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class TimeLimit(BaseException):
    """Raised inside a thread whose work ran past its limit.

    A BaseException, so that the per-row ``except Exception`` of the stages does not swallow it: the
    caller that set the limit decides what it means.
    """


def raise_in(thread_id: int, exc: Optional[type]) -> None:
    """Raise ``exc`` in thread ``thread_id`` at its next bytecode (None: withdraw one not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


@contextmanager
def time_limit(seconds: Optional[float]) -> Iterator[None]:
    """Run the ``with`` body for at most ``seconds`` (None or 0: no limit), else raise TimeLimit in it."""
    if not seconds:
        yield
        return
    target = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def expire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                raise_in(target, TimeLimit)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["fired"]:
                # The body may have finished between the timer firing and the exception landing: clear
                # the pending exception so that it cannot strike the caller's later code.
                raise_in(target, None)
    if state["fired"]:
        raise TimeLimit(f"ran past its limit of {seconds:g} s")
