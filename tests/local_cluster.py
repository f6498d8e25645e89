"""A multi-node Ray cluster of cluster.yaml's node types on this machine, for tests.

Real raylets (``ray.cluster_utils.Cluster``) under Ray's real autoscaler over the fake multi-node
provider, which starts and stops raylets for the node types it is given. Nodes the test adds itself
can be killed with ``remove_node(node, allow_graceful=False)`` (a spot reclaim); nodes the autoscaler
adds live in its own process. With ``redis`` the head's GCS keeps its tables in an external
redis-server (GCS fault tolerance), so the GCS can be killed and started again.

Every server here binds a free port: other Ray clusters may run on the machine at the same time, so
nothing here may stop a process it did not start (never ``ray stop``).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import psutil
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
# The autoscaler's head type, as the fake multi-node provider names it.
HEAD_TYPE = "ray.head.default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_types(cluster_yaml: Path = CLUSTER_YAML, max_workers: int = 2) -> dict[str, dict[str, Any]]:
    """cluster.yaml's GPU worker types, scaled down to one GPU and one CPU per node, keeping their
    ``accelerator_type:*`` resources and labels, and its CPU type with 4 CPUs.

    One CPU per GPU node is what its GPU stage's replica asks, so CPU-only replicas never land on a
    GPU node here and a GPU node's loss takes only its GPU stage with it.
    """
    declared = yaml.safe_load(cluster_yaml.read_text())
    head = declared["head_node_type"]
    out = {}
    for name, t in declared["available_node_types"].items():
        if name == head:
            continue
        res = dict(t["resources"])
        gpu = res.pop("GPU", 0)
        scaled = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 4}
        scaled.update({k: v for k, v in res.items() if k.startswith("accelerator_type:")})
        out[name] = {"resources": {**scaled, "object_store_memory": 100 * 2**20}, "labels": t.get("labels", {}),
                     "node_config": {}, "min_workers": 0, "max_workers": max_workers}
    return out


def accelerator(types: dict[str, dict[str, Any]], name: str) -> str:
    """The accelerator type a node type offers (``A10G`` for ``accelerator_type:A10G``)."""
    return next(k.split(":", 1)[1] for k in types[name]["resources"] if k.startswith("accelerator_type:"))


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1 at a free port, in memory only; yields ``host:port``."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{port}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


class LocalCluster:
    """A head with no CPUs (as cluster.yaml's), the autoscaler over ``types``, and nodes the test adds."""

    def __init__(self, types: dict[str, dict[str, Any]], workdir: Path, redis: Optional[str] = None):
        self.types, self.workdir, self.redis = types, workdir, redis
        self.cluster: Any = None
        self.head: Any = None

    def start(self) -> "LocalCluster":
        import os

        import ray
        from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
        from ray.cluster_utils import Cluster

        port = free_port()
        gcs = f"{ray.util.get_node_ip_address()}:{port}"
        config = {
            "cluster_name": f"corpusflow-{uuid.uuid4().hex[:8]}", "max_workers": 8, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5, "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs},
            "head_node_type": HEAD_TYPE,
            "available_node_types": {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                                     **self.types},
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "rsync_exclude", "rsync_filter")},
        }
        path = self.workdir / "autoscaler.json"
        path.write_text(json.dumps(config))
        # Inherited by every process of the cluster: the autoscaler's fake provider and 1-s loop; on a
        # busy 2-core machine a node's agents may take long to start, and Ray's memory monitor would
        # kill replicas for memory that other processes on the machine hold.
        os.environ.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                           "RAY_agent_register_timeout_ms": "120000", "RAY_memory_monitor_refresh_ms": "0"})
        head: dict[str, Any] = {"num_cpus": 0, "gcs_server_port": port, "include_dashboard": False,
                                "autoscaling_config": str(path),
                                "env_vars": {"RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}}
        if self.redis:
            head["external_addresses"] = [self.redis, self.redis]
        self.cluster = Cluster()

        def add_head() -> Any:
            if self.redis:  # a fresh namespace: nothing of a failed try is read back
                head["_system_config"] = {"external_storage_namespace": uuid.uuid4().hex}
            return self.cluster.add_node(**head)

        self.head = _retried(add_head)
        return self

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, node_type: str) -> Any:
        """A node of ``node_type`` that the test owns (and may kill), outside the autoscaler's count."""
        res = dict(self.types[node_type]["resources"])
        return _retried(lambda: self.cluster.add_node(
            num_cpus=res.get("CPU", 0), num_gpus=res.get("GPU", 0), object_store_memory=res["object_store_memory"],
            resources={k: v for k, v in res.items() if k not in ("CPU", "GPU", "object_store_memory")},
            labels=self.types[node_type].get("labels") or None))

    def kill_node(self, node: Any) -> None:
        """SIGKILL the node's raylet and everything on it, as a spot reclaim does."""
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        """Stop the test's nodes and the head, then the nodes the autoscaler started (processes of
        this cluster's session only)."""
        if self.cluster is None:
            return
        session = self.head.get_session_dir_path() if self.head else None
        self.cluster.shutdown()
        if session:
            for p in psutil.process_iter(["cmdline"]):
                if any(session in a for a in (p.info["cmdline"] or ())) and "raylet" in " ".join(p.info["cmdline"]):
                    p.kill()  # an autoscaler-made node's raylet; its workers and agents follow it
        self.cluster = None


def _retried(start: Any, tries: int = 3) -> Any:
    """``start()``, again after Ray's fixed 30-s wait for a new raylet to register ran out (a busy
    machine); the processes a failed try left are killed first (this process's new children only)."""
    me = psutil.Process()
    for attempt in range(tries):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            return start()
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == tries - 1:
                raise
            for p in me.children(recursive=True):
                if p.pid not in before:
                    p.kill()
