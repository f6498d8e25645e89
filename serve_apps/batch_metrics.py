"""How the online batches really form: size and stage seconds of every gathered call, in Prometheus.

``BatchedStageServer`` records each gathered call here, and ``StageServer`` each one-request
call (decode, PDF: size 1), through Ray's metrics API, so the
series come from every replica on every node: Ray's metrics agent serves them on each node's
Prometheus endpoint (``--metrics-export-port``, scraped by infra/prometheus/prometheus.yml), not on
the app's ``/metrics``, which shows only the ingress replica's own request series. Ray prefixes the
names with ``ray_``: ``corpusflow_batch_size`` is scraped as ``ray_corpusflow_batch_size_bucket`` etc.

Ray exports a histogram's ``_sum`` as bucket midpoints times counts, not the observed values. So the
size buckets are centred on whole sizes (exact sums up to 16), and the seconds, whose buckets are
wide, also go into a counter: ``corpusflow_batch_busy_seconds`` is exact, and its rate is the share
of time the stage is busy.
"""
from __future__ import annotations

import functools

BATCH_SIZE = "corpusflow_batch_size"
BATCH_SECONDS = "corpusflow_batch_seconds"
BUSY_SECONDS = "corpusflow_batch_busy_seconds"
# One bucket per size up to 16, centred on it: (k - 0.5, k + 0.5] holds size k and has midpoint k.
SIZE_BUCKETS = [*(k + 0.5 for k in range(17)), 32, 64, 128]
SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]


@functools.lru_cache(maxsize=1)
def _metrics():
    """Metric objects, created once per process (Ray registers each name once)."""
    from ray.util.metrics import Counter, Histogram

    size = Histogram(BATCH_SIZE, description="requests gathered into one call of a batched stage",
                     boundaries=SIZE_BUCKETS, tag_keys=("stage",))
    seconds = Histogram(BATCH_SECONDS, description="seconds one gathered call of a batched stage took "
                        "(the stage's own work, not the wait for the replica)",
                        boundaries=SECONDS_BUCKETS, tag_keys=("stage",))
    busy = Counter(BUSY_SECONDS, description="seconds a batched stage spent in gathered calls (exact total)",
                   tag_keys=("stage",))
    return size, seconds, busy


def record(stage: str, size: int, seconds: float) -> None:
    """One call of ``stage`` (its contract name: ``decode``, ``pdf``, ``asr``, ``vlm``) on ``size`` requests."""
    hist_size, hist_seconds, busy = _metrics()
    tags = {"stage": stage}
    hist_size.observe(size, tags=tags)
    hist_seconds.observe(seconds, tags=tags)
    busy.inc(seconds, tags=tags)
