"""Job cost and device time, live in Prometheus while the job runs.

The job's commit step hands each committed batch of ``metrics/`` rows to :func:`record`, which adds them
to Ray's metrics API (``ray.util.metrics``); Ray's metrics agent exports them on every node's Prometheus
endpoint (scraped with infra/prometheus/prometheus.yml, shown by infra/grafana/corpusflow.json). Ray
prefixes the names with ``ray_``: ``corpusflow_cost_usd`` is scraped as ``ray_corpusflow_cost_usd_total``.

Only counters: a node's metrics agent keeps a counter's total after the worker that counted it has
exited (the committer actor ends with the job), while it drops a gauge within two report intervals.
The price applied is therefore read back as cost over device time, not exported as a gauge.
"""
from __future__ import annotations

import functools
from collections import defaultdict

import pyarrow as pa

# "job_id", not "job": Prometheus keeps "job" for the scrape job and would rename ours to "exported_job".
TAGS = ("job_id", "stage", "accelerator", "kind")

# name -> (metrics/ column summed into it, description)
COUNTERS = {
    "corpusflow_cost_usd": ("cost_usd", "US$ of device time: device seconds x the accelerator's hourly price"),
    "corpusflow_device_seconds": ("device_s", "seconds an accelerator (GPU, else a CPU core) was held"),
    "corpusflow_wall_seconds": ("wall_s", "stage wall-clock seconds"),
    "corpusflow_media_seconds": ("media_s", "seconds of video/audio processed"),
    "corpusflow_pages": ("pages", "PDF pages processed"),
}


@functools.lru_cache(maxsize=1)
def _metrics():
    """Metric objects, created once per process (Ray registers each name once)."""
    from ray.util.metrics import Counter

    counters = {name: Counter(name, description=desc, tag_keys=TAGS) for name, (_, desc) in COUNTERS.items()}
    counters["corpusflow_stage_runs"] = Counter(
        "corpusflow_stage_runs", description="assets a stage finished (ok or failed)", tag_keys=TAGS)
    return counters


def record(rows: pa.Table, job_id: str) -> None:
    """Add a committed batch of ``metrics/`` rows to the job's live counters.

    Rows are summed per (stage, accelerator, kind) first, so a batch costs a handful of metric updates.
    """
    counters = _metrics()
    sums: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    cols = [c for c, _ in COUNTERS.values()]
    for r in rows.select(["stage", "accelerator", "kind", *cols]).to_pylist():
        agg = sums[r["stage"], r["accelerator"], r["kind"]]
        agg["runs"] += 1
        for c in cols:
            agg[c] += r[c] or 0.0
    for (stage, acc, kind), agg in sums.items():
        tags = {"job_id": job_id, "stage": stage, "accelerator": acc, "kind": kind}
        counters["corpusflow_stage_runs"].inc(agg["runs"], tags=tags)
        for name, (col, _) in COUNTERS.items():
            if agg[col] > 0:
                counters[name].inc(float(agg[col]), tags=tags)
