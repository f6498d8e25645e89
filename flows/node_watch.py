"""A job stops once its cluster has lost more nodes than ``faults.max_nodes_lost``.

Ray recovers from a lost node by itself: it re-runs the tasks, restarts the actors and rebuilds the
blocks the node held. On a spot market that keeps taking the nodes a stage runs on, that recovery
never ends: each replacement actor comes with restarts of its own. The driver therefore watches the
cluster's nodes while the job runs and, past the bound, stops the job's stream from its own thread
(the main thread waits inside Ray Data's iterator; the exception is raised there, as
contracts/deadline.py raises time limits) with :class:`NodesLost`, naming what happened.

That wait is a lock wait for the next batch, which an exception raised from another thread does not
end: while every node that takes the stage is lost, no batch comes. A signal does end it, so the main
thread is also sent one, whose (empty) handler's first bytecode raises the pending exception.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

from corpusflow.contracts.deadline import raise_in

# How often the driver asks Ray which nodes are dead (one GCS call).
POLL_S = 2.0
# The signal that wakes the main thread out of its wait for a batch.
WAKE = signal.SIGUSR1


class NodesLost(RuntimeError):
    """The cluster kept losing the nodes the job ran on, past the job's bound."""


class _Stop(BaseException):
    """Raised into the driver's main thread: past every ``except Exception`` on the way out."""


def dead_nodes() -> set[str]:
    """The nodes Ray knows of that have died (removed, or their raylet lost)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}


class NodeWatch:
    """``with NodeWatch(limit):`` raises :class:`NodesLost` in the ``with`` body once more than ``limit``
    nodes have died since it began."""

    def __init__(self, limit: int, poll_s: float = POLL_S):
        self.limit, self.poll_s = limit, poll_s
        self.lost: set[str] = set()
        self._stop = threading.Event()
        self._fired = False
        self._lock = threading.Lock()
        self._target = threading.get_ident()
        self._thread: Optional[threading.Thread] = None
        self._wakes = self._target == threading.main_thread().ident  # signals reach only the main thread
        self._handler: Any = None  # the WAKE handler before ours, put back on exit

    def __enter__(self) -> "NodeWatch":
        self._before = dead_nodes()
        if self._wakes:
            self._handler = signal.signal(WAKE, lambda *_: None)
        self._thread = threading.Thread(target=self._watch, name="corpusflow-node-watch", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.lost = dead_nodes() - self._before
            except Exception:  # noqa: BLE001 - the GCS busy for a moment: ask again at the next poll
                continue
            if len(self.lost) > self.limit:
                with self._lock:
                    if not self._stop.is_set():
                        self._fired = True
                        raise_in(self._target, _Stop)
                        if self._wakes:
                            signal.pthread_kill(self._target, WAKE)
                return

    def __exit__(self, kind: Optional[type], *exc: object) -> None:
        with self._lock:
            self._stop.set()
            if self._fired and kind is not _Stop:
                raise_in(self._target, None)  # the body ended before it landed: withdraw it
        if self._wakes:
            signal.signal(WAKE, self._handler)
        if kind is _Stop:
            raise NodesLost(
                f"the cluster lost {len(self.lost)} nodes while this job ran, more than faults.max_nodes_lost "
                f"({self.limit}) allows: the job stops instead of going on while its nodes keep being taken. What "
                "is committed stays, and a re-run goes on from there; give the stages nodes that stay (on-demand "
                "capacity) or raise faults.max_nodes_lost") from None
