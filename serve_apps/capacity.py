"""Refuse an app whose deployments ask for resources that no node of the cluster can ever offer.

Serve keeps such a deployment UPDATING and its app DEPLOYING for ever (measured: still so at 75 s; its
controller only warns, after 30 s, that a replica is not scheduled); the app is refused before it is
deployed instead, with one sentence. What the cluster offers comes from actors/node_types.py.
"""
from __future__ import annotations

from corpusflow.contracts.capacity import InfeasibleError, NodeShape, ask_of_options, unmet
from corpusflow.contracts.serve_config import ServeConfig


def check_app(settings: ServeConfig, shapes: list[NodeShape], source: str) -> None:
    """Raise :class:`InfeasibleError` naming the first deployment whose replica no node can hold."""
    if not shapes:
        return
    for name, deployment in settings.deployed().items():
        options = deployment.serve_options()["ray_actor_options"]
        sentence = unmet(f"deployment {name}", ask_of_options(options), shapes, source, "replica",
                         options.get("label_selector"))
        if sentence:
            raise InfeasibleError(sentence)
