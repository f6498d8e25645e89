"""Accuracy with a standard error clustered by video: questions about one video are not independent
(a model that misreads a video tends to miss all its questions), so the error is computed over videos."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def clustered_mean(values: Sequence[float], clusters: Sequence[str]) -> tuple[float, float]:
    """Mean of ``values`` and its cluster-robust standard error (CR1: the sandwich estimator with the
    C/(C-1) small-sample factor); the error is NaN with fewer than two clusters."""
    y = np.asarray(values, dtype=np.float64)
    if not len(y):
        return float("nan"), float("nan")
    mean = float(y.mean())
    ids = np.unique(np.asarray(clusters), return_inverse=True)[1]
    c = int(ids.max()) + 1
    if c < 2:
        return mean, float("nan")
    sums = np.bincount(ids, weights=y - mean, minlength=c)
    return mean, float(np.sqrt(c / (c - 1) * np.sum(sums ** 2)) / len(y))
