"""Stages for tests/test_serve_cancellation.py: slow, and they count how many of their calls overlap.

Loaded by import path inside a Serve replica, as the real stages are.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from corpusflow.contracts.stage import Batch, StageContract


class Overlap:
    """Each call takes 0.3 s; every row answers with the most calls ever running at once and its call's size."""

    contract = StageContract(name="probe", reads=("uri",), writes={"max_concurrency": "int64", "rows_in_call": "int64"})
    admits_concurrent_calls = False

    def __init__(self, config: object):
        self.running = self.most = 0
        self.guard = threading.Lock()

    def __call__(self, batch: Batch) -> Batch:
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.3)
        with self.guard:
            self.running -= 1
        n = len(batch["uri"])
        return {**batch, "max_concurrency": np.full(n, self.most), "rows_in_call": np.full(n, n)}


class ContinuousOverlap(Overlap):
    """The same probe, declaring an engine that batches continuously (as vLLM's async engine does)."""

    admits_concurrent_calls = True
