"""``corpusflow rehearse``: a cluster.yaml's node types on this machine under Ray's autoscaler, with the job on them.

Before paying for p5 nodes: each worker type of the cluster-launcher YAML becomes a node type of Ray's
fake multi-node provider (real raylets started and stopped by Ray's real autoscaler), its CPUs scaled
down by one divisor so the largest type fits this machine (at least one CPU each), its GPUs, custom
resources (``accelerator_type:*``) and labels as declared (at least two CPUs each, so that a GPU type
keeps a CPU free beside its GPU actors): GPUs are logical here, and the models of a
tiny profile run on the CPU while Ray accounts the GPUs. The head keeps the resources the YAML gives it
(no CPUs: no work there). Every worker type starts from zero nodes, so the job itself makes the
autoscaler start them.

Each stage gets the resources of its first target in the placement (contracts/placement.py) whose
accelerator type the cluster has, its CPUs scaled by the same divisor (at least one for a CPU stage and
half of one beside a GPU, or what it asked when less); engine options and stage environments of a target stay with the real GPUs and image.
The report says where each stage's tasks and actors ran (Ray's state API: the node of each task), how
many nodes of each type the autoscaler started and stopped (its idle timeout shortened), how long the
first node of each type took, and the job's own summary.

Ray's ``ray.cluster_utils.AutoscalingCluster`` starts with ``ray stop --force``, which stops every Ray
on the machine, and reads an example config its wheel does not ship; the head is started here with
``ray.cluster_utils.Cluster`` and the same autoscaler config instead, on a free port.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from corpusflow.actors.node_types import shapes_of_config
from corpusflow.contracts import storage
from corpusflow.contracts.base import read_mapping
from corpusflow.contracts.capacity import InfeasibleError, NodeShape
from corpusflow.contracts.config import ConfigError, JobConfig, Resources
from corpusflow.contracts.placement import DEFAULT_PLACEMENT, Placement
from corpusflow.contracts.registry import STAGES
from corpusflow.flows.capacity import check_job

# The label each rehearsal node carries: which node type of the YAML it stands for.
NODE_TYPE_LABEL = "corpusflow/node-type"
# Object store of each rehearsal node: the tiny corpora a rehearsal runs need little, and every
# raylet would otherwise claim 30% of this machine's memory.
OBJECT_STORE_BYTES = 256 << 20
# Scaled down, a GPU type still needs CPUs beside its GPU actors: Ray puts CPU tasks and the committer on
# any node with a free CPU, and a GPU actor that asked for the node's only CPU would wait behind them.
MIN_NODE_CPUS = 2
GPU_STAGE_MIN_CPUS = 0.5


@dataclass
class TypeReport:
    cpus: float
    rehearsal_cpus: float
    gpus: float
    started: int = 0
    stopped: int = 0
    first_node_s: Optional[float] = None


@dataclass
class Rehearsal:
    cluster: str
    divisor: float
    types: dict[str, TypeReport]
    stages: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> node type -> tasks run there
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"rehearsal of {self.cluster} (CPUs / {self.divisor:g})", "",
                 f"{'stage':9s} {'asks per task/actor':34s} ran on (tasks)"]
        for stage, where in self.stages.items():
            res = self.resources.get(stage, {})
            ask = f"CPU {res.get('num_cpus', 0):g}" + (f", GPU {res['num_gpus']:g}" if res.get("num_gpus") else "") \
                + (f", {res['accelerator_type']}" if res.get("accelerator_type") else "")
            ran = ", ".join(f"{t} ({n})" for t, n in sorted(where.items())) or "did not run"
            lines.append(f"{stage:9s} {ask:34s} {ran}")
        lines += ["", f"{'node type':12s} {'CPUs':>10s} {'GPUs':>5s} {'started':>8s} {'stopped':>8s} {'first node after':>17s}"]
        for name, t in self.types.items():
            first = f"{t.first_node_s:.1f} s" if t.first_node_s is not None else "-"
            lines.append(f"{name:12s} {f'{t.cpus:g}->{t.rehearsal_cpus:g}':>10s} {t.gpus:5g} {t.started:8d} {t.stopped:8d} {first:>17s}")
        return "\n".join(lines)


def scale_cluster(cluster: Mapping[str, Any], cores: int, max_nodes: int) -> tuple[dict[str, Any], float]:
    """The autoscaler config of the rehearsal (worker types from zero, at most ``max_nodes`` each) and the divisor."""
    head = cluster.get("head_node_type")
    types = cluster["available_node_types"]
    divisor = max(1.0, max(float(nt.get("resources", {}).get("CPU", 0)) for nt in types.values()) / cores)
    nodes: dict[str, Any] = {}
    for name, nt in types.items():
        res = dict(nt.get("resources") or {})
        if name == head:
            continue
        res["CPU"] = max(MIN_NODE_CPUS, round(float(res.get("CPU", 0)) / divisor))
        res["object_store_memory"] = OBJECT_STORE_BYTES
        nodes[name] = {"resources": res, "labels": {**(nt.get("labels") or {}), NODE_TYPE_LABEL: name},
                       "node_config": {}, "min_workers": 0, "max_workers": min(int(nt.get("max_workers", 1)), max_nodes)}
    head_res = dict(types[head].get("resources") or {}) if head in types else {"CPU": 0}
    nodes["ray.head.default"] = {"resources": head_res, "node_config": {}, "max_workers": 0}
    return {"cluster_name": f"rehearse-{cluster.get('cluster_name', 'cluster')}",
            "max_workers": sum(n["max_workers"] for n in nodes.values()), "upscaling_speed": 1.0,
            # As Ray's own fake-cluster config: raylets are told apart by node id, and nothing is installed on them.
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "auth": {"ssh_user": "ubuntu"}, "head_node_type": "ray.head.default", "available_node_types": nodes,
            "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": []}, divisor


def placed_resources(base: Resources, placement: Placement, shapes: list[NodeShape], divisor: float) -> Resources:
    """Each stage on its first placement target whose accelerator type a node type offers (CPUs scaled)."""
    offered = {k.split(":", 1)[1] for s in shapes for k in s.resources if k.startswith("accelerator_type:")}
    if any(s.resources.get("CPU") for s in shapes):
        offered.add("cpu")
    updates = {}
    for spec in STAGES:
        sp = placement.stages.get(spec.name)
        if sp is None:
            continue
        acc = next((a for a in sp.allowed() if a in offered), None)
        if acc is None:
            raise InfeasibleError(f"stage {spec.name} may run on {', '.join(sp.allowed())} (placement), "
                                  f"which no node type offers ({', '.join(sorted(offered))})")
        t = placement.target(spec.name, acc)
        assert t is not None
        res = base.of(spec.name)
        updates[spec.name] = type(res).model_validate({
            **res.model_dump(), "num_gpus": t.num_gpus,
            "num_cpus": max(t.num_cpus / divisor, min(t.num_cpus, GPU_STAGE_MIN_CPUS if t.num_gpus else 1.0)),
            "accelerator_type": None if acc == "cpu" else acc, "batch_size": t.batch_size or res.batch_size,
            "share_gpu_with": t.share_gpu_with})
    return Resources.model_validate({**dict(base), **updates})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Watcher(threading.Thread):
    """Which nodes of each type came and went, polled from the GCS while the job runs and the cluster idles."""

    def __init__(self, report: Rehearsal, t0: float, dashboard: str):
        super().__init__(daemon=True)
        self.report, self.t0, self.dashboard, self.stop = report, t0, dashboard, threading.Event()
        self.seen: dict[str, str] = {}  # node id -> type, of every worker node seen alive
        self.dead: set[str] = set()

    def poll(self) -> int:
        """Worker nodes alive now (Ray's state API over HTTP: no driver needs to stay connected)."""
        from ray.util.state import list_nodes

        alive = 0
        for n in list_nodes(address=self.dashboard, limit=10_000, raise_on_missing_output=False):
            kind = (n.labels or {}).get(NODE_TYPE_LABEL)
            if kind is None or kind not in self.report.types:
                continue
            t, nid, up = self.report.types[kind], n.node_id, n.state == "ALIVE"
            if up and nid not in self.seen:
                self.seen[nid] = kind
                t.started += 1
                if t.first_node_s is None:
                    t.first_node_s = round(time.time() - self.t0, 1)
            elif not up and nid in self.seen and nid not in self.dead:
                self.dead.add(nid)
                t.stopped += 1
            alive += up
        return alive

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()


def _stage_nodes(watcher: _Watcher) -> dict[str, dict[str, int]]:
    """Stage -> node type -> tasks of the stage that ran there, from Ray's task records."""
    from ray.util.state import list_tasks

    from corpusflow.flows.job import _Committer

    marks = {s.name: f"({(s.cls or _Committer.__name__).rsplit('.', 1)[-1]})" for s in STAGES}
    out: dict[str, Counter] = {s.name: Counter() for s in STAGES}
    for task in list_tasks(address=watcher.dashboard, limit=10_000, raise_on_missing_output=False):
        kind = watcher.seen.get(task.node_id or "")
        if kind is None:
            continue
        for stage, mark in marks.items():
            if mark in (task.name or ""):
                out[stage][kind] += 1
    return {s: dict(c) for s, c in out.items()}


def _kill_leftovers(gcs_address: str) -> None:
    """Raylets the autoscaler started and had not stopped yet, and their workers: ours by their GCS address."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(gcs_address in arg for arg in p.info["cmdline"] or []) and p.pid != os.getpid():
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def rehearse(cluster_yaml: str, config: JobConfig, placement: Placement, max_nodes: int = 1,
             idle_timeout_s: float = 10.0, cores: Optional[int] = None,
             progress=lambda s: print(s, file=sys.stderr, flush=True)) -> Rehearsal:
    cluster = read_mapping(cluster_yaml, "cluster config")
    autoscaling, divisor = scale_cluster(cluster, cores or max(os.cpu_count() or 1, 2), max_nodes)
    autoscaling["idle_timeout_minutes"] = idle_timeout_s / 60
    shapes = shapes_of_config(autoscaling)
    source = f"node types of {cluster_yaml}, CPUs / {divisor:g}"
    resources = placed_resources(config.resources, placement, [s for s in shapes if s.name != "ray.head.default"], divisor)
    config = config.model_copy(update={"resources": resources})
    check_job(config, shapes, source)  # before any raylet starts
    types = {name: TypeReport(cpus=float(nt.get("resources", {}).get("CPU", 0)),
                              rehearsal_cpus=float(autoscaling["available_node_types"][name]["resources"]["CPU"]),
                              gpus=float(nt.get("resources", {}).get("GPU", 0)))
             for name, nt in cluster["available_node_types"].items() if name in autoscaling["available_node_types"]}
    report = Rehearsal(cluster=cluster_yaml, divisor=divisor, types=types,
                       resources={n: r.model_dump(include={"num_cpus", "num_gpus", "accelerator_type"}) for n, r in resources})

    import ray
    from ray.cluster_utils import Cluster

    from corpusflow.flows import gpu_bundles
    from corpusflow.flows.job import init_ray, run_job

    port = _free_port()
    gcs = f"{ray.util.get_node_ip_address()}:{port}"
    autoscaling["provider"]["gcs_address"] = gcs
    work = tempfile.mkdtemp(prefix="corpusflow-rehearse-")
    config_path = os.path.join(work, "autoscaler.json")
    with open(config_path, "w") as f:
        json.dump(autoscaling, f)
    # The autoscaler's monitor, started with the head, inherits these: the fake provider's switch and a
    # one-second update interval instead of five.
    os.environ.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    head_cpus = autoscaling["available_node_types"]["ray.head.default"]["resources"].get("CPU", 0)
    progress(f"corpusflow rehearse: head on {gcs}; node types {', '.join(types)} start from zero")
    head: Optional[Cluster] = None
    dashboard_port = _free_port()
    watcher: Optional[_Watcher] = None
    try:
        # The dashboard serves Ray's state API, which says where each task ran.
        head = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "gcs_server_port": port, "autoscaling_config": config_path,
            "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": True, "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": _free_port(),
            "dashboard_host": "127.0.0.1"})
        init_ray(head.address)
        watcher = _Watcher(report, time.time(), f"http://127.0.0.1:{dashboard_port}")
        watcher.start()
        summary = run_job(config, address=head.address, capacity=(shapes, source))
        report.summary = asdict(summary)
        gpu_bundles.release()
        time.sleep(2)  # task records reach the GCS within a second of the tasks' end
        report.stages = _stage_nodes(watcher)
        # The driver leaves before the nodes go: it would print each stopped raylet as an unexpected death.
        ray.shutdown()
        progress(f"corpusflow rehearse: job done; waiting up to {idle_timeout_s + 60:.0f} s for the autoscaler to stop idle nodes")
        deadline = time.time() + idle_timeout_s + 60
        while watcher.poll() and time.time() < deadline:
            time.sleep(1)
    finally:
        if watcher is not None:
            watcher.stop.set()
        ray.shutdown()
        if head is not None:
            head.shutdown()
        _kill_leftovers(gcs)
        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="corpusflow rehearse", description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", help="local folder or s3://bucket/prefix")
    ap.add_argument("--cluster", required=True, help="Ray cluster-launcher YAML (cluster.yaml)")
    ap.add_argument("--out", required=True, help="local folder or s3://bucket/prefix for the tables")
    ap.add_argument("--models", help="models profile (tiny-random runs the GPU stages on the CPU)")
    ap.add_argument("--config", help="job config YAML (its resources are replaced by the placement's)")
    ap.add_argument("--placement", help="placement YAML (default: corpusflow.contracts.placement.DEFAULT_PLACEMENT)")
    ap.add_argument("--max-nodes", type=int, default=1,
                    help="nodes of each type the autoscaler may start (default 1: one machine runs them all)")
    ap.add_argument("--idle-timeout-s", type=float, default=10.0, help="autoscaler idle timeout for the rehearsal (default 10)")
    args = ap.parse_args(argv)
    try:
        config = JobConfig.build(args.config, corpus=args.corpus, out=args.out, models=args.models)
        placement = Placement.load(args.placement) if args.placement else DEFAULT_PLACEMENT
        report = rehearse(args.cluster, config, placement, max_nodes=args.max_nodes, idle_timeout_s=args.idle_timeout_s)
    except (ConfigError, InfeasibleError) as e:
        print(f"corpusflow rehearse: {e}", file=sys.stderr)
        return 2
    text = report.to_text()
    print(text)
    print()
    from corpusflow.flows.job import JobSummary

    print(JobSummary(**report.summary).to_text())
    path = storage.join(config.out, "_jobs", f"{report.summary['job_id']}.rehearsal.json")
    storage.write_json(json.dumps(asdict(report), indent=1), path)
    print(f"\n(written to {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
