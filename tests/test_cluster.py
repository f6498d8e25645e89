"""The job on several Ray nodes: node types started from zero by Ray's real autoscaler (``corpusflow rehearse``),
``ray job submit --working-dir`` onto a two-node cluster, and stages (and the API's deployments) no node can
hold refused at once."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusflow.contracts.config import ConfigError, JobConfig
from corpusflow.flows.cli import main
from tests import media
from tests.readers import duckdb_read
from tests.local_cluster import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# Two worker types, both from zero: CPU nodes, and A10G nodes with two GPUs (ASR and the VLM, one each).
CLUSTER = """\
cluster_name: two-types
max_workers: 3
head_node_type: head
available_node_types:
  head:
    resources: {CPU: 0}
    node_config: {}
  cpu_worker:
    min_workers: 0
    max_workers: 1
    resources: {CPU: 8}
    labels: {corpusflow/accelerator: cpu}
    node_config: {}
  a10g_worker:
    min_workers: 0
    max_workers: 1
    resources: {CPU: 16, GPU: 2, "accelerator_type:A10G": 1}
    labels: {corpusflow/accelerator: A10G}
    node_config: {}
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    media.make_video(root / "clip.mp4", seconds=3.0, audio=True)
    media.make_pdf(root / "doc.pdf", pages=2)
    return root


def _job_config(tmp_path: Path, model_cache: str, extra: str = "") -> str:
    f = tmp_path / "job.yaml"
    f.write_text(f"models: tiny-random\nmodel_cache: {model_cache}\nvideo:\n  fps: 1.0\n  frame_size: 56\n"
                 f"index:\n  enabled: false\n{extra}")
    return str(f)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_rehearse_starts_each_node_type_from_zero_and_runs_stages_where_the_placement_says(corpus, tmp_path, model_cache):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "corpusflow", "rehearse", "--cluster", str(cluster), str(corpus),
                           "--out", str(out), "--models", "tiny-random", "--config", _job_config(tmp_path, model_cache),
                           "--idle-timeout-s", "10"], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ran on (tasks)" in proc.stdout and "a10g_worker" in proc.stdout
    report = json.loads(Path(glob.glob(str(out / "_jobs" / "*.rehearsal.json"))[0]).read_text())
    stages = report["stages"]
    # The GPU stages only where the A10Gs are; the listing's CPU work on some node (none runs on the head).
    assert set(stages["asr"]) == {"a10g_worker"} and set(stages["vlm"]) == {"a10g_worker"}
    for stage in ("identify", "decode", "pdf", "frames", "commit"):
        assert stages[stage] and set(stages[stage]) <= {"cpu_worker", "a10g_worker"}, (stage, stages)
    for name in ("cpu_worker", "a10g_worker"):
        t = report["types"][name]
        # Started from zero as the job asked (again, if an idle node was stopped while the next stage waited).
        assert t["started"] >= 1 and t["first_node_s"] is not None, report["types"]
        assert t["stopped"] == t["started"], f"{name}: the autoscaler left idle nodes running"
    assert report["resources"]["asr"]["accelerator_type"] == "A10G" and report["resources"]["asr"]["num_gpus"] == 1
    assets = duckdb_read(out / "assets").to_pylist()
    assert sorted((r["kind"], r["status"]) for r in assets) == [("pdf", "ok"), ("video", "ok")]
    assert duckdb_read(out / "summaries").num_rows == 1  # the VLM's row, from the A10G node


def test_ray_job_submit_ships_the_package_to_the_worker_node(corpus, tmp_path, model_cache, monkeypatch):
    """The README's command onto a head without CPUs and one worker node: every stage runs on the worker,
    importing the package from the shipped working dir."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.delenv("PYTHONPATH", raising=False)  # workers may only find the package where Ray puts it
    dashboard = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": dashboard, "dashboard_host": "127.0.0.1",
        "dashboard_agent_listen_port": free_port(),  # Ray's fixed default (52365) may be another cluster's
        "object_store_memory": 200 << 20})
    try:
        cluster.add_node(num_cpus=6, resources={"worker_node": 1}, object_store_memory=200 << 20,
                         dashboard_agent_listen_port=free_port())
        out = tmp_path / "out"
        probe = ("import ray, corpusflow.flows; ray.init(); "
                 "f = ray.remote(resources={'worker_node': 1})(lambda: __import__('corpusflow.flows').flows.__file__); "
                 "print('worker imports', ray.get(f.remote()))")
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
               "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"excludes": [".venv", "out", ".git"]}), "--",
               "sh", "-c", f"{sys.executable} -m corpusflow run {corpus} --out {out} --config {_job_config(tmp_path, model_cache)}"
               f" && {sys.executable} -c \"{probe}\""]
        t0 = time.time()
        while True:  # the head's job agent registers a little after the dashboard answers
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
            if "No available agent" not in proc.stderr or time.time() - t0 > 60:
                break
            time.sleep(2)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert "succeeded" in proc.stdout, proc.stdout[-3000:]
        shipped = [line for line in proc.stdout.splitlines() if line.startswith("worker imports")]
        assert shipped and "working_dir_files" in shipped[0] and str(ROOT) not in shipped[0], shipped
        assert sorted(duckdb_read(out / "assets").column("status").to_pylist()) == ["ok", "ok"], time.time() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_stage_no_node_can_hold_fails_at_once_with_a_sentence(corpus, tmp_path, model_cache, capsys):
    out = tmp_path / "out"
    cfg = _job_config(tmp_path, model_cache, "resources:\n  vlm: {num_gpus: 1, accelerator_type: A100, batch_size: 1}\n")
    t0 = time.time()
    try:
        rc = main(["run", str(corpus), "--out", str(out), "--config", cfg])
    finally:
        import ray

        ray.shutdown()
    err = capsys.readouterr().err
    assert rc == 2 and time.time() - t0 < 60
    sentence = next(line for line in err.splitlines() if "no node of the cluster can ever offer" in line)
    assert "stage vlm asks {CPU 1, GPU 1, accelerator_type A100}" in sentence and "CPU" in sentence.split("(", 1)[1]
    assert not (out / "assets").exists()  # nothing committed, nothing leased


def test_a_deployment_no_node_can_hold_fails_at_once_with_a_sentence(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"models: tiny-random\nport: {free_port()}\n"
                   "deployments:\n  vlm: {num_gpus: 1, accelerator_type: A100}\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "corpusflow", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.time() - t0 < 30  # Serve would wait for the replica for ever
    sentence = next(line for line in proc.stderr.splitlines() if "no node of the cluster can ever offer" in line)
    assert sentence.startswith("corpusflow serve: deployment vlm asks {CPU 1, GPU 1, accelerator_type A100} per "
                               "replica, which no node of the cluster can ever offer (the local Ray's node: node ")
    assert "corpusflow API at" not in proc.stdout


def test_rehearse_refuses_a_placement_no_node_type_offers_before_any_node_starts(corpus, tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    placement = tmp_path / "placement.yaml"
    placement.write_text("stages:\n  vlm: {targets: {H100: {num_cpus: 8, num_gpus: 1}}}\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "corpusflow", "rehearse", "--cluster", str(cluster), str(corpus),
                           "--out", str(tmp_path / "out"), "--placement", str(placement)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stage vlm may run on H100 (placement), which no node type offers (A10G, cpu)" in proc.stderr
    assert time.time() - t0 < 30 and not (tmp_path / "out").exists()


def test_gpu_stages_get_the_batch_size_ray_needs_and_impossible_gpu_counts_are_refused(tmp_path):
    config = JobConfig.build(corpus=str(tmp_path / "c"), out=str(tmp_path / "o"), **{"resources.vlm.num_gpus": 1})
    assert config.resources.vlm.batch_size == 1  # Ray refuses map_batches on GPUs without one
    kept = JobConfig.build(corpus=str(tmp_path / "c"), out=str(tmp_path / "o"),
                           **{"resources.asr.num_gpus": 0.5, "resources.asr.batch_size": 4})
    assert kept.resources.asr.batch_size == 4
    with pytest.raises(ConfigError, match=r"resources\.vlm.*num_gpus: 1\.5 is not possible"):
        JobConfig.build(corpus=str(tmp_path / "c"), out=str(tmp_path / "o"), **{"resources.vlm.num_gpus": 1.5})
    with pytest.raises(ConfigError, match=r"resources\.asr.*ray_options\.resources"):
        JobConfig.build(corpus=str(tmp_path / "c"), out=str(tmp_path / "o"), **{"resources.asr.ray_options": {"resources": {"GPU": 1}}})


def test_serve_deploy_refuses_a_label_no_live_node_carries_on_a_cluster_without_autoscaler():
    import ray

    from corpusflow.contracts.capacity import InfeasibleError
    from corpusflow.serve_apps.app import app_builder

    ray.init(address="local", num_cpus=2, include_dashboard=False)  # what `ray start --head` gives: no autoscaler
    try:
        t0 = time.time()
        with pytest.raises(InfeasibleError) as e:  # as Serve's controller builds serve_apps/config.yaml's app
            app_builder({"models": "tiny-random", "deployments": {"pdf": {"label_selector": {"corpusflow/accelerator": "cpu"}}}})
        assert time.time() - t0 < 15
    finally:
        ray.shutdown()
    assert str(e.value).startswith("deployment pdf asks {CPU 1} per replica on a node labelled {corpusflow/accelerator: "
                                   "cpu}, which no node of the cluster can ever offer (live nodes, no autoscaler: node ")
