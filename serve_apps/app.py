"""The Serve application: an ingress deployment composed with one deployment per stage class.

``build_app(settings)`` is what ``corpusflow serve`` runs; ``app_builder(args)`` is the import path
``serve deploy serve_apps/config.yaml`` names, with the ServeConfig fields as its ``args``.
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from contracts.serve_config import ServeConfig
from serve_apps.api import build_api
from serve_apps.pipeline import Pipeline
from serve_apps.stages import BatchedStageServer, StageServer
from serve_apps.streaming import StreamServer

APP_NAME = "corpusflow"
STAGES = {"decode": "actors.decode.DecodeMedia", "pdf": "actors.pdf.ExtractPdf",
          "asr": "actors.asr.Transcribe", "vlm": "actors.vlm.Describe"}
BATCHED = ("asr", "vlm")
# Stages a deployment runs right after its own on the same replica: speech detection is CPU work,
# so it runs where decoding does instead of holding the ASR replicas' GPU share.
THEN = {"decode": ("actors.speech.DetectSpeech",)}


@serve.deployment
@serve.ingress()
class Ingress:
    """HTTP front door: checks, routes and answers; the stage deployments do the heavy work."""

    def __init__(self, settings: dict[str, Any], decode: DeploymentHandle, pdf: DeploymentHandle,
                 asr: DeploymentHandle, vlm: DeploymentHandle, stream: Optional[DeploymentHandle] = None):
        self.settings = ServeConfig.model_validate(settings)
        self.pipeline = Pipeline(self.settings, {"decode": decode, "pdf": pdf, "asr": asr, "vlm": vlm})
        self.stream = stream

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.settings, self.pipeline, self.stream)


def build_app(settings: ServeConfig) -> Application:
    """The bound application: every deployment's resources, queues and autoscaling from ``settings``."""
    job = settings.stage_config().model_dump(mode="json")
    bound: dict[str, Any] = {}
    for name, stage in STAGES.items():
        d = getattr(settings.deployments, name)
        if name in BATCHED:
            dep = BatchedStageServer.options(name=name, **d.serve_options())
            bound[name] = dep.bind(stage, job, d.batching.max_batch_size, d.batching.batch_wait_timeout_s)
        else:
            bound[name] = StageServer.options(name=name, **d.serve_options()).bind(stage, job, THEN.get(name, ()))
    if settings.streaming.enabled:
        from actors.streaming import StreamConfig

        StreamConfig.model_validate(settings.streaming.session)  # a bad override fails here, not in a replica loop
        bound["stream"] = StreamServer.options(name="stream", **settings.streaming.deployment.serve_options()).bind(
            settings.model_dump(mode="json"))
    api = settings.deployments.api
    overload = BackpressureConfig(status_code=settings.overload_status, retry_after_s=settings.retry_after_s)
    return Ingress.options(name="api", backpressure_config=overload, **api.serve_options()).bind(
        settings.model_dump(mode="json"), **bound)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve deploy``/``serve run``: ``args`` are ServeConfig fields."""
    return build_app(ServeConfig.model_validate(args or {}))
