"""One placement-group bundle per GPU for stages that share GPUs (``resources.<stage>.share_gpu_with``).

Ray puts a fractional GPU share on whichever GPU it fits best, so on a node of N GPUs the ASR actors
(a fifth of a GPU each) beside N VLM engines (the rest of each GPU) land together on one GPU when they
start first (measured on two H200s: both ASR actors on GPU 0, GPU 1 running its engine alone), and the
engines started after them find no GPU with room. A placement group of N bundles, each one whole GPU
plus both stages' CPUs, pins the pairs instead: the k-th actor each stage starts goes into bundle
k mod N, so every GPU holds one actor of each stage.

The group is made once per shape in this driver and kept until :func:`release` or the driver's exit
(Ray removes a job's placement groups with it): the job's later datasets (files run alone after a
worker died) reuse it. A replacement actor takes the next bundle in turn and starts once that bundle
has room again.
"""
from __future__ import annotations

from itertools import count
from typing import Any, Callable

from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.registry import StageResources

# How long the cluster may take to free the GPUs and CPUs of the bundles before the job gives up.
READY_TIMEOUT_S = 600.0

_GROUPS: dict[tuple, Any] = {}  # shape -> placement group, for this driver


def pair_bundle(a: StageResources, b: StageResources) -> dict[str, float]:
    """One GPU with both stages' CPUs (and memory, accelerator types): what one pair holds on its node."""
    bundle = {"GPU": 1.0, "CPU": a.num_cpus + b.num_cpus}
    mem = (a.memory_gb or 0) + (b.memory_gb or 0)
    if mem:
        bundle["memory"] = float(int(mem * 2**30))
    for t in {a.accelerator_type, b.accelerator_type} - {None}:
        bundle[f"accelerator_type:{t}"] = 0.002  # Ray asks 0.001 of it per actor with an accelerator type
    return bundle


def _group(bundle: dict[str, float], n: int) -> Any:
    import ray
    from ray.util.placement_group import placement_group

    key = (tuple(sorted(bundle.items())), n)
    if key not in _GROUPS:
        pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
        if not pg.wait(timeout_seconds=READY_TIMEOUT_S):
            ray.util.remove_placement_group(pg)
            raise RuntimeError(f"the cluster did not free {n} GPUs with {bundle} each within {READY_TIMEOUT_S:.0f} s "
                               "(resources.*.share_gpu_with needs one bundle per actor pair)")
        _GROUPS[key] = pg
    return _GROUPS[key]


def remote_args_fns(config: StageConfig) -> dict[str, Callable[[], dict[str, Any]]]:
    """Stage name -> ``ray_remote_args_fn`` placing its actors one per bundle, for every stage that shares
    GPUs with another (both sides); empty when none does."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    fns: dict[str, Callable[[], dict[str, Any]]] = {}
    for name, res in config.resources:
        if res.share_gpu_with is None:
            continue
        other = config.resources.of(res.share_gpu_with)
        n = res.max_actors
        pg = _group(pair_bundle(res, other), n)
        for stage in (name, res.share_gpu_with):
            fns[stage] = _placer(pg, n, PlacementGroupSchedulingStrategy)
    return fns


def _placer(pg: Any, n: int, strategy: type) -> Callable[[], dict[str, Any]]:
    slots = count()

    def place() -> dict[str, Any]:  # called by Ray Data each time it starts an actor of the stage
        return {"scheduling_strategy": strategy(pg, placement_group_bundle_index=next(slots) % n)}
    return place


def release() -> None:
    """Remove this driver's bundles (a benchmark running another pipeline after the job's)."""
    import ray

    for pg in _GROUPS.values():
        ray.util.remove_placement_group(pg)
    _GROUPS.clear()
