"""What the cluster's nodes can offer: its node types, or its live nodes where nothing starts more.

Where from, in order: a cluster-launcher YAML when one is given (``corpusflow rehearse``), else the node
types Ray publishes for its autoscaler (autoscaler v2, KubeRay), else those of the autoscaler config a
head started by ``ray up`` reads, else — on a cluster that starts no nodes — its live nodes. Where an
autoscaler runs whose node types cannot be read, the answer is no shapes: nothing is refused. The job
(flows/capacity.py) and the API (serve_apps/capacity.py) compare their asks with these.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional

from corpusflow.contracts.base import read_mapping
from corpusflow.contracts.capacity import NodeShape

# Where `ray up` leaves the autoscaler's config on the head (cluster.yaml: --autoscaling-config).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# How long to wait for the monitor's first status, which says whether an autoscaler runs.
_STATUS_WAIT_S = 10.0


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
    """True/False once the monitor reported whether it autoscales; None if it said nothing in time.

    A head started without an autoscaling config (``ray start --head``, ``ray.init()``) runs a read-only
    monitor that reports too, but makes each live node its own anonymous type (``node_<id>``) and never
    starts one: that is no autoscaler, and the live nodes are all the cluster has.
    """
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + _STATUS_WAIT_S
    while True:
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if status:
            report = json.loads(status).get("autoscaler_report") or {}
            types = (report.get("node_type_mapping") or {}).items()
            return bool(report) and (not types or any(t != format_readonly_node_type(n) for n, t in types))
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
