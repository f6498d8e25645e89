"""The cost dashboard across nodes: a real Prometheus discovers every Ray node as Ray writes it, scrapes a
multi-node job, and every panel of infra/grafana/corpusflow.json answers with the job's own figures.

Prometheus is Debian's binary, started here on 127.0.0.1 with the scrape config of
infra/prometheus/prometheus.yml (its file-based discovery pointed at this cluster's session directory,
since other Ray clusters may share this machine's /tmp/ray). The cluster is ``ray.cluster_utils.Cluster``:
a head without CPUs and two GPU nodes of different accelerator types (logical GPUs: the tiny-random
models run on the CPU while Ray accounts GPUs by type). At the end the node that recorded the job's
counters is killed, as a spot reclaim would, and the cost so far must not drop.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from corpusflow.flows.cli import main
from tests import media
from tests.readers import duckdb_read
from tests.local_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRAPE_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "corpusflow.json"
SCRAPE_S = 1  # scrape interval of the test's Prometheus
# What the rate panels' $__rate_interval becomes in Grafana: 4 scrape intervals at the least.
RATE_INTERVAL = f"{4 * SCRAPE_S}s"
# GPU node → (accelerator type, logical CPUs). The head has none, as on a real cluster: every task and
# actor, the committer that records the live metrics included, runs on another node than the driver's.
NODES = {"a10g": ("A10G", 3), "h100": ("H100", 2)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                       reason="Debian's prometheus package (prometheus, promtool) is not installed"),
]


def test_promtool_accepts_the_scrape_config() -> None:
    done = subprocess.run(["promtool", "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def cluster():
    """A head (with the dashboard, which writes the discovery file) and one GPU node per accelerator type."""
    import ray
    from ray.cluster_utils import Cluster

    before = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # workers export every second, not every 10
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
        metrics_export_port=free_port()))
    try:
        for acc, cpus in NODES.values():
            c.add_node(num_cpus=cpus, num_gpus=1, resources={f"accelerator_type:{acc}": 1},
                       metrics_export_port=free_port())
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if before is None:
            os.environ.pop("RAY_metrics_report_interval_ms", None)
        else:
            os.environ["RAY_metrics_report_interval_ms"] = before


@pytest.fixture(scope="module")
def prometheus(cluster, tmp_path_factory):
    """Debian's Prometheus with the production scrape job that reads Ray's discovery file."""
    discovery = Path(cluster.head_node.get_session_dir_path()) / "prom_metrics_service_discovery.json"
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (ray_job,) = [j for j in config["scrape_configs"] if j.get("file_sd_configs")]
    assert [Path(f).name for sd in ray_job["file_sd_configs"] for f in sd["files"]] == [discovery.name]
    for sd in ray_job["file_sd_configs"]:
        sd["files"] = [str(discovery)]
    config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
    config["scrape_configs"] = [ray_job]
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / "log", "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # every node of the cluster is a target, and each answers
            try:
                targets = json.load(urllib.request.urlopen(f"{url}/api/v1/targets", timeout=5))["data"]["activeTargets"]
            except OSError:
                targets = []
            up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
            nodes = {f"{n.node_ip_address}:{n.metrics_export_port}" for n in cluster.list_all_nodes()}
            if nodes <= up:
                break
            assert time.monotonic() < deadline, (f"Prometheus did not scrape every node: up {up}, nodes {nodes}",
                                                 (work / "log").read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _query(url: str, expr: str, at: float | None = None) -> list[dict]:
    q = {"query": expr, **({"time": f"{at:.3f}"} if at else {})}
    body = json.load(urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode(q)}", timeout=10))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _panels(job_id: str, range_s: float) -> list[tuple[str, str]]:
    """(panel title, query) for every target of the dashboard, its variables as Grafana fills them for
    one selected job and a time range of ``range_s`` seconds."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    subst = {"$__rate_interval": RATE_INTERVAL, "$__range": f"{int(range_s) + 1}s", "$job_id": job_id}
    out = []
    for p in panels:
        for t in p.get("targets", []):
            expr = t["expr"]
            for k, v in subst.items():
                expr = expr.replace(k, v)
            assert "$" not in expr, (p["title"], expr)
            out.append((p["title"], expr))
    return out


@pytest.fixture(scope="module")
def job(cluster, prometheus, tmp_path_factory, model_cache):
    """One video (decode, ASR on the A10G node, frames, VLM on the H100 node) and one PDF, through the CLI."""
    corpus = tmp_path_factory.mktemp("corpus")
    media.make_video(corpus / "lecture.mp4", seconds=4.0, audio=True)
    media.make_pdf(corpus / "label.pdf", pages=2, images=0)
    work = tmp_path_factory.mktemp("job")
    config = work / "job.yaml"
    config.write_text(yaml.safe_dump({
        "model_cache": model_cache, "video": {"fps": 1.0, "frame_size": 112}, "index": {"enabled": False},
        "resources": {"asr": {"num_gpus": 1, "accelerator_type": "A10G", "num_cpus": 1, "batch_size": 1},
                      "vlm": {"num_gpus": 1, "accelerator_type": "H100", "num_cpus": 1, "batch_size": 1}}}))
    start = time.time()
    assert main(["run", str(corpus), "--out", str(work / "out"), "--config", str(config), "--models", "tiny-random",
                 "--address", cluster.address]) == 0
    return work / "out", start


# The figure each panel shows, from the job's metrics/ table (DuckDB over the table ``m``): label
# columns named as the panel's labels, then the value.
TABLE_FIGURES = {
    "Job cost so far": "SELECT sum(cost_usd) FROM m",
    "Media hours processed": "SELECT sum(media_s) / 3600 FROM m WHERE stage = 'decode'",
    "Cost by stage": "SELECT stage, sum(cost_usd) FROM m GROUP BY stage",
    "US$ per media-hour by kind and accelerator type": """
        SELECT m.kind, accelerator, sum(cost_usd) / any_value(h.hours) FROM m
        JOIN (SELECT kind, sum(media_s) / 3600 AS hours FROM m WHERE stage = 'decode' GROUP BY kind) h ON m.kind = h.kind
        GROUP BY m.kind, accelerator""",
    "Device hours by stage and accelerator type": "SELECT stage, accelerator, sum(device_s) / 3600 FROM m GROUP BY ALL",
    "US$ per 1,000 PDF pages": """SELECT (SELECT sum(cost_usd) FROM m WHERE kind = 'pdf')
                                  / (SELECT sum(pages) FROM m WHERE stage = 'pdf') * 1000""",
    "Hourly price applied": "SELECT accelerator, max(usd_per_hour) FROM m GROUP BY accelerator",
}
# Rates answer too, but with a figure of their own: Prometheus counts no increase for a series' first
# sample, and each (stage, accelerator, kind) series of this small job is committed once.
RATE_PANELS = {"Spend rate", "Assets per minute by stage", "Spend rate by accelerator type",
               "Realtime factor (media seconds per second)"}
# The online API's panels (serve_apps/batch_metrics.py): a batch job has none of their series.
ONLINE_PANELS = {"Online batch size (mean)", "Online stage busy share"}


def _by_labels(result: list[dict], labels: list[str]) -> dict[tuple, float]:
    return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in result}


def test_every_panel_answers_with_the_jobs_own_figures(job, cluster, prometheus):
    import duckdb

    out, start = job
    m = duckdb_read(out / "metrics")  # noqa: F841 (read by the SQL below)
    (job_id,) = duckdb.sql("SELECT DISTINCT job_id FROM m").fetchall()[0]
    panels = _panels(job_id, time.time() - start + 60)  # a dashboard range that holds the whole job
    assert {t for t, _ in panels} == set(TABLE_FIGURES) | RATE_PANELS | ONLINE_PANELS  # a new panel needs a check

    expected = {}
    for title, sql in TABLE_FIGURES.items():
        rel = duckdb.sql(sql)
        expected[title] = (rel.columns[:-1], {tuple(r[:-1]): r[-1] for r in rel.fetchall()})
    queries = dict(panels)

    def answers(title: str, at: float | None = None) -> dict[tuple, float]:
        return _by_labels(_query(prometheus, queries[title], at), list(expected[title][0]))

    # Every commit has been scraped once the cost so far stops short of the table by no more than 5%.
    deadline = time.monotonic() + 60
    while answers("Job cost so far").get((), 0.0) < 0.95 * expected["Job cost so far"][1][()]:
        assert time.monotonic() < deadline, "Prometheus never showed the job's committed cost"
        time.sleep(SCRAPE_S)
    time.sleep(3 * SCRAPE_S)  # rates need two samples of a series in their window
    at = time.time()
    rows = []
    for title, (labels, figures) in expected.items():
        shown = answers(title, at)
        assert set(shown) == set(figures), (title, shown, figures)
        for key, want in figures.items():
            rows.append((title, key, shown[key], want))
            assert shown[key] == pytest.approx(want, rel=0.05), (title, key, queries[title])

    # Device time per accelerator type: each GPU node's type shows its own stage's hours.
    hours = answers("Device hours by stage and accelerator type", at)
    per_type = {acc: sum(v for (_, a), v in hours.items() if a == acc) for acc in {a for _, a in hours}}
    assert per_type["A10G"] > 0 and per_type["H100"] > 0, per_type
    assert hours[("asr", "A10G")] > 0 and hours[("vlm", "H100")] > 0, hours

    for title in RATE_PANELS:
        rates = _query(prometheus, queries[title], at)
        assert rates and all(float(r["value"][1]) >= 0 for r in rates), (title, queries[title], rates)
        rows.append((title, "at the end (the job's commits are over)", max(float(r["value"][1]) for r in rates), None))
    for title in ONLINE_PANELS:
        assert _query(prometheus, queries[title], at) == []  # a valid query; the online API feeds it

    # The job's series came from a node other than the driver's (the head has no CPUs for the committer).
    head = f"{cluster.head_node.node_ip_address}:{cluster.head_node.metrics_export_port}"
    sources = {r["metric"]["instance"] for r in _query(
        prometheus, f'count by (instance) (ray_corpusflow_cost_usd_total{{job_id="{job_id}"}})', at)}
    assert sources and head not in sources, sources

    # That node is lost (a spot reclaim): its counters go with it, yet the cost so far stays.
    (node,) = [n for n in cluster.worker_nodes if f"{n.node_ip_address}:{n.metrics_export_port}" in sources]
    cluster.remove_node(node, allow_graceful=False)
    cost_now = f'sum(ray_corpusflow_cost_usd_total{{job_id="{job_id}"}})'
    deadline = time.monotonic() + 60
    while _query(prometheus, cost_now):  # the failed scrapes mark the node's series stale
        assert time.monotonic() < deadline, "the lost node's series never went stale"
        time.sleep(SCRAPE_S)
    queries = dict(_panels(job_id, time.time() - start + 60))
    want = expected["Job cost so far"][1][()]
    shown = answers("Job cost so far").get((), 0.0)
    rows.append(("Job cost so far", "after the committer's node was lost", shown, want))
    assert shown == pytest.approx(want, rel=0.05)
    for title, key, shown, want in rows:
        ratio = f"{shown / want:.4f}" if want else "-"
        print(f"| {title} | {', '.join(key) if isinstance(key, tuple) else key} | {shown:.6g} | "
              f"{'-' if want is None else f'{want:.6g}'} | {ratio} |")
