"""Refuse a job whose stages ask for resources that no node of the cluster can ever offer.

What the cluster can offer: the node types of a cluster-launcher YAML when one is given (``corpusflow
rehearse``), else the node types Ray publishes for its autoscaler (autoscaler v2, KubeRay), else those
of the autoscaler config a head started by ``ray up`` reads, else — on a cluster that starts no nodes —
its live nodes. Where an autoscaler runs whose node types cannot be read, nothing is refused.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional

from corpusflow.contracts.base import read_mapping
from corpusflow.contracts.capacity import NodeShape, ask_of, unmet
from corpusflow.contracts.config import JobConfig, StageConfig
from corpusflow.contracts.registry import STAGES
from corpusflow.flows.gpu_bundles import pair_bundle

# Where `ray up` leaves the autoscaler's config on the head (cluster.yaml: --autoscaling-config).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# How long to wait for the monitor's first status, which says whether an autoscaler runs.
_STATUS_WAIT_S = 10.0


class InfeasibleError(ValueError):
    """A stage asks for more than any node of the cluster can hold; the message names it."""


def shapes_of_config(config: Mapping[str, Any]) -> list[NodeShape]:
    """The node types of a cluster-launcher config that can run at least one node."""
    shapes = []
    for name, nt in config.get("available_node_types", {}).items():
        if name != config.get("head_node_type") and nt.get("max_workers", config.get("max_workers", 1)) == 0:
            continue
        res = {k: float(v) for k, v in (nt.get("resources") or {}).items() if k != "object_store_memory"}
        shapes.append(NodeShape(name, res, dict(nt.get("labels") or {})))
    return shapes


def _published_types() -> Optional[list[NodeShape]]:
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if not config or not config.node_group_configs:
        return None
    return [NodeShape(g.name, {k: float(v) for k, v in g.resources.items()}, dict(g.labels))
            for g in config.node_group_configs if g.max_count != 0]


def _autoscaler_runs() -> Optional[bool]:
    """True/False once the monitor reported whether it autoscales; None if it said nothing in time."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + _STATUS_WAIT_S
    while True:
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if status:
            return bool(json.loads(status).get("autoscaler_report"))
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def _live_nodes() -> list[NodeShape]:
    import ray

    return [NodeShape(f"node {n['NodeID'][:8]}", n["Resources"], n.get("Labels") or {}) for n in ray.nodes() if n["Alive"]]


def cluster_shapes(cluster_yaml: Optional[str] = None, local: bool = False) -> tuple[list[NodeShape], str]:
    """(what each node type or live node offers, where that came from); no shapes: unknown, refuse nothing.

    ``local``: a Ray this process started itself, which no autoscaler grows.
    """
    if local:
        return _live_nodes(), "the local Ray's node"
    if cluster_yaml:
        return shapes_of_config(read_mapping(cluster_yaml, "cluster config")), f"node types of {cluster_yaml}"
    published = _published_types()
    if published:
        return published, "node types of the cluster's autoscaler"
    runs = _autoscaler_runs()
    if runs:
        path = os.path.expanduser(BOOTSTRAP_CONFIG)
        if os.path.exists(path):
            return shapes_of_config(read_mapping(path, "autoscaler config")), f"node types of {BOOTSTRAP_CONFIG}"
        return [], "an autoscaler whose node types are not readable here"
    if runs is None:
        return [], "a cluster that has not said whether it autoscales"
    return _live_nodes(), "live nodes, no autoscaler"


def stage_asks(config: StageConfig) -> list[tuple[str, dict[str, float], str]]:
    """(stage, what one of its tasks/actors or GPU pairs holds on a node, 'task'/'actor'/'GPU pair')."""
    asks = []
    for spec in STAGES:
        res = config.resources.of(spec.name)
        if res.share_gpu_with:  # placed as one bundle per GPU with its partner (flows/gpu_bundles.py)
            asks.append((spec.name, pair_bundle(res, config.resources.of(res.share_gpu_with)), "GPU pair"))
        else:
            asks.append((spec.name, ask_of(res), "actor" if spec.pool == "actors" else "task"))
    return asks


def check_job(config: StageConfig, shapes: list[NodeShape], source: str) -> None:
    """Raise :class:`InfeasibleError` naming the first stage no node can hold."""
    if not shapes:
        return
    for stage, ask, unit in stage_asks(config):
        sentence = unmet(stage, ask, shapes, source, unit)
        if sentence:
            raise InfeasibleError(sentence)


def driver_only_paths(config: JobConfig) -> Optional[str]:
    """A warning when CORPUS or OUT is a local path and nodes of other machines will read or write it:
    identify and decode read the corpus on whichever node they run, the committer writes OUT on its own."""
    import ray

    local = [f"{name} {path!r}" for name, path in (("corpus", config.corpus), ("out", config.out))
             if not path.startswith("s3://")]
    here = ray.util.get_node_ip_address()
    others = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] != here})
    if not local or not others:
        return None
    return (f"corpusflow: {' and '.join(local)} must be mounted at the same path on the cluster's other machines "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), or use s3://")
