"""A stage for tests/test_serve_cancellation.py: slow, and it counts how many of its calls overlap.

Loaded by import path inside a Serve replica, as the real stages are.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from corpusflow.contracts.stage import Batch, StageContract


class Overlap:
    """Each call takes 0.3 s and answers with the most calls that were ever running at once."""

    contract = StageContract(name="probe", reads=("uri",), writes={"max_concurrency": "int64"})

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
        return {**batch, "max_concurrency": np.asarray([self.most])}
