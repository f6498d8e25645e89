"""Refuse a job whose stages ask for resources that no node of the cluster can ever offer.

What the cluster can offer comes from actors/node_types.py (its node types, or its live nodes where
nothing starts more; unknown: nothing is refused).
"""
from __future__ import annotations

from typing import Optional

from corpusflow.contracts.capacity import InfeasibleError, NodeShape, ask_of, unmet
from corpusflow.contracts.config import JobConfig, StageConfig
from corpusflow.contracts.registry import STAGES
from corpusflow.flows.gpu_bundles import pair_bundle


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
        sentence = unmet(f"stage {stage}", ask, shapes, source, unit)
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
