"""What a stage or a Serve replica asks of one node against what the cluster's node types offer, before anything waits.

Ray queues a task or actor whose resources no node can ever hold: Ray Data then waits for it forever
(it warns after a minute that the job "may hang"), and Serve keeps the deployment waiting for its
replica. The job and the API compare each stage's and each deployment's ask with every node type the
cluster can start, or its live nodes when nothing starts more, and refuse at once with one sentence instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from corpusflow.contracts.registry import StageResources

# What Ray asks of a node per task or actor that names an accelerator type (ray/_private/accelerators).
ACCELERATOR_SHARE = 0.001


@dataclass(frozen=True)
class NodeShape:
    """One node type (or one live node): the resources one node of it offers."""

    name: str
    resources: Mapping[str, float]
    labels: Mapping[str, str] = field(default_factory=dict)


class InfeasibleError(ValueError):
    """A stage or deployment asks for more than any node of the cluster can hold; the message names it."""


def ask_of_options(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources one task or actor holds on its node, from its Ray options (``num_cpus``, ``num_gpus``,
    ``accelerator_type``, ``memory`` in bytes, ``resources``): what a Serve replica's ``ray_actor_options`` say."""
    ask: dict[str, float] = {"CPU": float(options.get("num_cpus", 1))}
    if options.get("num_gpus"):
        ask["GPU"] = float(options["num_gpus"])
    if options.get("accelerator_type"):
        ask[f"accelerator_type:{options['accelerator_type']}"] = ACCELERATOR_SHARE
    if options.get("memory"):
        ask["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        ask[name] = float(amount)
    return ask


def ask_of(res: StageResources) -> dict[str, float]:
    """The resources one task or actor of a stage holds on its node."""
    return ask_of_options({"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "accelerator_type": res.accelerator_type,
                           "memory": int(res.memory_gb * 2**30) if res.memory_gb else None,
                           "resources": res.ray_options.get("resources")})


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


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` passes Ray's label selector: ``value``, ``!value``, ``in(a,b)``, ``!in(a,b)``.

    Keys under ``ray.io/`` pass: Ray sets those itself when a node starts (its accelerator type, zone,
    market), so a node type's declared labels never show them and cannot rule a node out.
    """
    for key, want in selector.items():
        if key.startswith("ray.io/"):
            continue
        negated = want.startswith("!")
        want = want.lstrip("!")
        values = {v.strip() for v in want[3:-1].split(",")} if want.startswith("in(") else {want}
        if (labels.get(key) in values) == negated:
            return False
    return True


def _describe_labels(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())) + "}"


def unmet(what: str, ask: Mapping[str, float], shapes: list[NodeShape], source: str, unit: str = "actor",
          selector: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """None when some node type can hold ``ask`` (on a node whose labels pass ``selector``); else the
    sentence that says so. ``what``: the asker, e.g. ``stage vlm`` or ``deployment asr``."""
    selector = selector or {}
    if any(_fits(ask, s.resources) and _selects(selector, s.labels) for s in shapes):
        return None
    labelled = f" on a node labelled {_describe_labels(selector)}" if selector else ""

    def offer(s: NodeShape) -> str:  # only the labels the selector names: live nodes carry many of Ray's own
        shown = {k: v for k, v in s.labels.items() if k in selector}
        if not selector:
            return f"{s.name} {_describe(s.resources)}"
        return f"{s.name} {_describe(s.resources)} " + (f"labelled {_describe_labels(shown)}" if shown else "without those labels")

    offers = "; ".join(offer(s) for s in shapes) or "nothing"
    return (f"{what} asks {_describe(ask)} per {unit}{labelled}, which no node of the cluster can ever offer "
            f"({source}: {offers})")
