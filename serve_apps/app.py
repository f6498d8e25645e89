"""The Serve application: an ingress deployment composed with one deployment per stage class.

``build_app(settings)`` is what ``corpusflow serve`` runs; ``app_builder(args)`` is the import path
``serve deploy serve_apps/config.yaml`` names, with the ServeConfig fields as its ``args``. Both refuse a
deployment no node of the cluster can hold (serve_apps/capacity.py) before Serve waits for it.
"""
from __future__ import annotations

from typing import Any, Optional

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from corpusflow.actors.node_types import cluster_shapes
from corpusflow.contracts.capacity import NodeShape
from corpusflow.contracts.registry import STAGES as REGISTRY
from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.serve_apps.api import build_api
from corpusflow.serve_apps.capacity import check_app
from corpusflow.serve_apps.pipeline import Pipeline
from corpusflow.serve_apps.search import SearchServer
from corpusflow.serve_apps.stages import BatchedStageServer, StageServer
from corpusflow.serve_apps.streaming import StreamServer

APP_NAME = "corpusflow"
# Deployments of the stage registry (contracts/registry.py): name → stage class; BATCHED gather requests.
STAGES = {s.name: s.cls for s in REGISTRY if s.serve and s.cls}
BATCHED = tuple(s.name for s in REGISTRY if s.serve == "batched")


@serve.deployment
@serve.ingress()
class Ingress:
    """HTTP front door: checks, routes and answers; the stage deployments do the heavy work."""

    def __init__(self, settings: dict[str, Any], decode: DeploymentHandle, pdf: DeploymentHandle,
                 asr: DeploymentHandle, frames: DeploymentHandle, vlm: DeploymentHandle,
                 stream: Optional[DeploymentHandle] = None, search: Optional[DeploymentHandle] = None):
        self.settings = ServeConfig.model_validate(settings)
        handles = {"decode": decode, "pdf": pdf, "asr": asr, "frames": frames, "vlm": vlm,
                   **({"search": search} if search else {})}
        self.pipeline = Pipeline(self.settings, handles)
        self.stream = stream

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.settings, self.pipeline, self.stream)


def build_app(settings: ServeConfig, capacity: Optional[tuple[list[NodeShape], str]] = None) -> Application:
    """The bound application: every deployment's resources, queues and autoscaling from ``settings``.

    A deployment whose replica no node of the cluster can hold raises :class:`InfeasibleError` first.
    ``capacity``: what the cluster's nodes offer and where that comes from, when the caller knows; else it
    is asked of the Ray this process is connected to (under ``serve deploy``, the cluster's). Without
    one, as when ``serve run`` builds an import path before it connects, there is nothing to compare with.
    """
    if capacity is None and ray.is_initialized():
        capacity = cluster_shapes()
    if capacity:
        check_app(settings, *capacity)
    job = settings.stage_config().model_dump(mode="json")
    bound: dict[str, Any] = {}
    for name, stage in STAGES.items():
        d = getattr(settings.deployments, name)
        if name in BATCHED:
            dep = BatchedStageServer.options(name=name, **d.serve_options())
            bound[name] = dep.bind(stage, job, d.batching.max_batch_size, d.batching.batch_wait_timeout_s)
        else:
            bound[name] = StageServer.options(name=name, **d.serve_options()).bind(stage, job)
    if settings.streaming.enabled:
        from corpusflow.actors.streaming import StreamConfig

        StreamConfig.model_validate(settings.streaming.session)  # a bad override fails here, not in a replica loop
        bound["stream"] = StreamServer.options(name="stream", **settings.streaming.deployment.serve_options()).bind(
            settings.model_dump(mode="json"))
    if settings.index:  # the corpus index, read-only: /v1/search and /v1/search/ask
        bound["search"] = SearchServer.options(name="search", **settings.deployments.search.serve_options()).bind(
            settings.model_dump(mode="json"))
    api = settings.deployments.api
    overload = BackpressureConfig(status_code=settings.overload_status, retry_after_s=settings.retry_after_s)
    return Ingress.options(name="api", backpressure_config=overload, **api.serve_options()).bind(
        settings.model_dump(mode="json"), **bound)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve deploy``/``serve run``: ``args`` are ServeConfig fields."""
    return build_app(ServeConfig.model_validate(args or {}))
