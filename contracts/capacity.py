"""What a stage asks of one node against what the cluster's node types offer, before anything waits.

Ray queues a task or actor whose resources no node can ever hold, and Ray Data then waits for it forever
(it warns after a minute that the job "may hang"). The job and the API compare each stage's ask with
every node type the cluster can start, or its live nodes when nothing starts more, and refuse at once
with one sentence instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from corpusflow.contracts.registry import StageResources

# What Ray asks of a node per task or actor that names an accelerator type (ray/_private/accelerators).
ACCELERATOR_SHARE = 0.001


@dataclass(frozen=True)
class NodeShape:
    """One node type (or one live node): the resources one node of it offers."""

    name: str
    resources: Mapping[str, float]
    labels: Mapping[str, str] = field(default_factory=dict)


def ask_of(res: StageResources) -> dict[str, float]:
    """The resources one task or actor of a stage holds on its node."""
    ask: dict[str, float] = {"CPU": res.num_cpus}
    if res.num_gpus:
        ask["GPU"] = res.num_gpus
    if res.accelerator_type:
        ask[f"accelerator_type:{res.accelerator_type}"] = ACCELERATOR_SHARE
    if res.memory_gb:
        ask["memory"] = float(int(res.memory_gb * 2**30))
    for name, amount in (res.ray_options.get("resources") or {}).items():
        ask[name] = float(amount)
    return ask


def _fits(ask: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    # A node type that declares no memory gets its machine's; only live nodes and explicit types say.
    return all(offer.get(k, 0.0) >= v - 1e-9 for k, v in ask.items() if v and not (k == "memory" and k not in offer))


def _describe(resources: Mapping[str, float]) -> str:
    parts = []
    for k, v in sorted(resources.items(), key=lambda kv: (kv[0] not in ("CPU", "GPU"), kv[0])):
        if k.startswith("accelerator_type:"):
            parts.append(f"accelerator_type {k.split(':', 1)[1]}")
        elif k == "memory":
            parts.append(f"memory {v / 2**30:.1f} GiB")
        elif k in ("CPU", "GPU") or not k.startswith(("node:", "object_store_memory")):
            parts.append(f"{k} {v:g}")
    return "{" + ", ".join(parts) + "}"


def unmet(stage: str, ask: Mapping[str, float], shapes: list[NodeShape], source: str, unit: str = "actor") -> Optional[str]:
    """None when some node type can hold ``ask``; else the sentence that says so."""
    if any(_fits(ask, s.resources) for s in shapes):
        return None
    offers = "; ".join(f"{s.name} {_describe(s.resources)}" for s in shapes) or "nothing"
    return (f"stage {stage} asks {_describe(ask)} per {unit}, which no node of the cluster can ever offer "
            f"({source}: {offers})")
