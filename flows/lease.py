"""Leases: two jobs on one OUT never process the same input at the same time.

Once identify has hashed a file, the job takes a lease on its content (under the job's config
fingerprint) by creating ``OUT/_jobs/claims/<fingerprint>/<asset_id>.<generation>`` holding its job
id, only if that name is free (contracts/storage.py:create_new: a hard link locally, a conditional PUT
on S3), so of two racing jobs exactly one wins. The lease lives as long as its holder: a job keeps its
mark in ``OUT/_jobs/running/`` fresh (:class:`Heartbeat`); a mark not rewritten for ``LEASE_S``, or one
of this host naming a process that is gone, is a dead job, and the next generation of the name may be
claimed. A job that meets a file leased by a live job leaves it to that job (the row goes on as
"deferred", uncommitted) and, at its end, waits for that job to commit the content, then commits its
own ``assets`` row pointing at it; if the holder dies first, it processes the file itself. The same
bytes at two URIs of one job are processed once the same way: the second URI waits for the first.

One conditional write per file, none read while nobody competes. Leases of finished jobs cost
nothing (a committed file is dropped as done before any lease is taken); ``compact`` removes them.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Callable, Optional

import numpy as np

from corpusflow.contracts import storage
from corpusflow.contracts.stage import Batch
from corpusflow.flows.tables import claims_root, committed, keys_of, running_mark

# A mark rewritten every HEARTBEAT_S; not rewritten for LEASE_S, its job is dead. The ratio leaves a
# busy driver or a slow store several missed beats before another job takes over.
HEARTBEAT_S = 10.0
LEASE_S = 90.0
# The error_stage of a row left to the job that leases it: carried past the stages, never committed.
LEASED = "lease"


class Heartbeat:
    """``with Heartbeat(out, job_id):`` marks the job as running on OUT and keeps the mark fresh."""

    def __init__(self, out: str, job_id: str):
        self.out, self.job_id = out, job_id
        self._text = json.dumps({"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid()})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="corpusflow-heartbeat", daemon=True)

    def _write(self) -> None:
        storage.write_json(self._text, running_mark(self.out, self.job_id))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed beat is retried; LEASE_S allows several
                pass

    def __enter__(self) -> "Heartbeat":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        storage.delete(running_mark(self.out, self.job_id))


def alive(out: str, job_id: str) -> bool:
    """Whether ``job_id`` is running on OUT: its mark is fresh and, on this host, its process exists."""
    uri = running_mark(out, job_id)
    try:
        text, age = storage.read_text(uri), storage.age_s(uri)
    except FileNotFoundError:
        return False
    if age > LEASE_S:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return True  # a mark of an older corpusflow: trust its age alone
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


# What take_lease says of a file that a job which has since ended committed: nothing left to do.
COMMITTED = "committed"


def take_lease(out: str, fingerprint: str, uri: str, asset_id: str, job_id: str,
               is_alive: Callable[[str], bool], is_committed: Callable[[str, str], bool]) -> Optional[str]:
    """Lease ``asset_id`` for ``uri`` of ``job_id``. None once this row holds it; else what holds it,
    as "<job> <uri>": another live job, or this job for the same bytes at another URI (processed once,
    shared by both); or COMMITTED when a job that has ended left ``uri`` committed."""
    generation = 0
    while True:
        name = storage.join(claims_root(out), fingerprint, f"{asset_id}.{generation}")
        if storage.create_new(name, f"{job_id} {uri}"):
            return None
        owner = storage.read_text(name).strip()
        owner_job = owner.split(" ", 1)[0]
        if owner == f"{job_id} {uri}":
            return None  # a retried task of this job: still ours
        if owner_job == job_id or is_alive(owner_job):
            return owner
        if is_committed(uri, asset_id):
            return COMMITTED
        generation += 1  # its holder died before committing: the next generation is free to claim


def lease_rows(out: str, fingerprint: str, job_id: str, retry_errors: bool = False) -> Callable[[Batch], Batch]:
    """A Ray Data map: lease each row's content for this job. A row another live job holds goes on
    marked ``LEASED`` (the stages pass it by, the committer leaves it out); one that an ended job
    committed meanwhile is dropped, as done (with ``retry_errors``, a retryable failure is not done:
    the job is there to redo it)."""
    def lease(batch: Batch) -> Batch:
        verdicts: dict[str, bool] = {}
        done: list[set] = []

        def is_alive(job: str) -> bool:
            if job not in verdicts:
                verdicts[job] = alive(out, job)
            return verdicts[job]

        def is_committed(uri: str, asset_id: str) -> bool:
            if not done:  # read once per batch, and only when a lease holder has ended
                done.append(keys_of(committed(out, fingerprint, retry_errors)))
            return (uri, asset_id) in done[0]

        stages, errors = list(batch["error_stage"]), list(batch["error"])
        keep = np.ones(len(stages), dtype=bool)
        for i in range(len(stages)):
            if errors[i] or batch["kind"][i] == "other":
                continue  # nothing expensive to do for it: both jobs may write its row
            owner = take_lease(out, fingerprint, str(batch["uri"][i]), str(batch["asset_id"][i]), job_id,
                               is_alive, is_committed)
            if owner == COMMITTED:
                keep[i] = False
            elif owner is not None:
                job, _, first = owner.partition(" ")
                stages[i], errors[i] = LEASED, f"job {job} is processing these bytes (as {first})"
        # Rebuilt rather than assigned in place: a fixed-width string column would cut the text.
        batch["error_stage"], batch["error"] = np.asarray(stages, dtype=object), np.asarray(errors, dtype=object)
        return {k: v[keep] for k, v in batch.items()}
    return lease


def holder_of(error: str) -> str:
    """The job named by a deferred row's error (see :func:`lease_rows`)."""
    return error.split()[1]


def leased(batch: Batch) -> np.ndarray:
    """Which rows of a batch are left to another job."""
    return np.asarray([s == LEASED for s in batch["error_stage"]], dtype=bool)
