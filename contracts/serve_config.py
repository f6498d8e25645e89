"""Online endpoint configuration: one pydantic model for the API's limits and every deployment's shape.

``serve_apps/config.yaml`` (for ``serve deploy``) and ``corpusflow serve`` both feed this model, so
resources, queue bounds, autoscaling and batching are declared once and validated before Ray starts.
Queues are always bounded: an overloaded endpoint answers 503/429 with ``Retry-After`` instead of
buffering requests in memory.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from corpusflow.contracts.base import StrictModel, read_mapping, validated
from corpusflow.contracts.config import (AsrConfig, PdfConfig, StageConfig, VideoConfig, VlmConfig, default_cache,
                                        load_profile)
from corpusflow.contracts.registry import BY_NAME, RESERVING, STAGES, Resources

# The HTTP ingress, then one deployment per stage the registry serves.
DEPLOYMENTS = ("api", *(s.name for s in STAGES if s.serve))
# Serve's HTTP proxy runs uvicorn with its default WebSocket limit and no way to change it: a bigger
# message is cut off by the proxy (close 1009) before the API sees it, so a larger setting would lie.
PROXY_WS_MAX_MB = 16.0


class Autoscaling(StrictModel):
    """Ray Serve's autoscaler inputs; ``min_replicas == max_replicas`` pins the replica count."""

    min_replicas: int = Field(1, ge=1, description="replicas kept warm (models load in __init__, so never 0)")
    max_replicas: int = Field(1, ge=1, description="the autoscaler adds replicas up to this many")
    target_ongoing_requests: float = Field(2.0, gt=0, description="in-flight requests per replica the autoscaler aims for")
    upscale_delay_s: float = Field(30.0, ge=0, description="load must persist this long before adding replicas")
    downscale_delay_s: float = Field(600.0, ge=0, description="idle must persist this long before removing replicas")
    metrics_interval_s: float = Field(10.0, gt=0, description="how often replicas report load")
    look_back_period_s: float = Field(30.0, gt=0, description="window the reported load is averaged over")

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self


class Batching(StrictModel):
    """Online batching: concurrent requests to one replica are gathered into one stage call, or, for an
    engine that batches continuously (the vLLM VLM engine), handed over as they come, this many at once."""

    max_batch_size: int = Field(8, ge=1, description="requests one stage call takes at most")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="how long the first request waits for company")


class DeploymentSettings(StrictModel):
    """Resources, admission bounds and autoscaling of one deployment."""

    num_cpus: float = Field(1, ge=0, description="logical CPUs each replica reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs each replica reserves; a fraction shares a GPU")
    accelerator_type: Optional[str] = Field(None, description="Ray accelerator type, e.g. A10G or H100")
    memory_gb: Optional[float] = Field(None, gt=0, description="memory reserved per replica")
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="node labels a replica's node must carry, e.g. "
        "{corpusflow/accelerator: cpu} (cluster.yaml's CPU nodes) so CPU stages leave GPU nodes to GPU stages")
    max_ongoing_requests: int = Field(8, ge=1, description="requests one replica works on at once")
    max_queued_requests: int = Field(32, ge=1, description="requests waiting per caller before 503/429 (never unbounded)")
    autoscaling: Autoscaling = Autoscaling()
    batching: Batching = Batching()

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (batching is applied by the deployment itself)."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.accelerator_type:
            actor["accelerator_type"] = self.accelerator_type
        if self.memory_gb:
            actor["memory"] = int(self.memory_gb * 2**30)
        if self.label_selector:
            actor["label_selector"] = dict(self.label_selector)
        return {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "autoscaling_config": self.autoscaling.model_dump(),
        }


class Deployments(StrictModel):
    """``api`` is the HTTP ingress; the others wrap the batch job's stage classes."""

    api: DeploymentSettings = DeploymentSettings(num_cpus=0.5, max_ongoing_requests=32, max_queued_requests=64)
    decode: DeploymentSettings = DeploymentSettings(num_cpus=1, max_ongoing_requests=4)
    frames: DeploymentSettings = DeploymentSettings(num_cpus=1, max_ongoing_requests=4)
    pdf: DeploymentSettings = DeploymentSettings(num_cpus=1, max_ongoing_requests=4)
    asr: DeploymentSettings = DeploymentSettings(num_cpus=1, max_ongoing_requests=16)
    vlm: DeploymentSettings = DeploymentSettings(num_cpus=1, max_ongoing_requests=16)
    search: DeploymentSettings = DeploymentSettings(num_cpus=1, max_ongoing_requests=16)


class StreamingSettings(StrictModel):
    """The live-video WebSocket ``/v1/stream``: one streaming model per replica, a bounded number of sessions."""

    enabled: bool = Field(True, description="serve /v1/stream (its deployment holds one streaming VLM per replica)")
    model: Optional[str] = Field(None, description="Qwen2.5-VL source for streaming; None = the models profile's vlm")
    max_sessions_per_replica: int = Field(4, ge=1, description="live streams per replica; more are refused (503/close 1013)")
    session: dict[str, Any] = Field(default_factory=dict, description="StreamConfig overrides (fps, frame_pixels, "
                                    "vision_window_s, sink_tokens, text_window, commentary_tokens, recall, ...)")
    allowed_video_prefixes: tuple[str, ...] = Field(
        (), description="s3://bucket/prefix/ locations a client may ask the server to play; empty = none")
    idle_timeout_s: float = Field(300.0, gt=0, description="a session with no message for this long is closed")
    max_message_mb: float = Field(PROXY_WS_MAX_MB, gt=0, le=PROXY_WS_MAX_MB,
                                  description="largest WebSocket message (frames included); at most the "
                                  "proxy's own limit of 16 MB")
    max_frame_scale: float = Field(16.0, ge=1, description="largest frame a client may send, in multiples of the "
                                   "session's frame_pixels; larger ones are refused from their header, undecoded")
    deployment: DeploymentSettings = DeploymentSettings(num_cpus=0.5, max_ongoing_requests=32)

    @field_validator("allowed_video_prefixes")
    @classmethod
    def _s3_prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_s3_prefixes(v)


class ServeConfig(StrictModel):
    """Everything the online endpoint needs; what the stages see is :meth:`stage_config`."""

    host: str = Field("127.0.0.1", description="address the HTTP proxy binds")
    port: int = Field(8000, ge=1, le=65535, description="port the HTTP proxy binds")
    route_prefix: str = Field("/", pattern=r"^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$",
                              description="path the app is served under, e.g. /cf (routes become /cf/v1/...)")
    models: str = Field("small-real", description="built-in models profile name or a profile YAML file")
    video: VideoConfig = VideoConfig()
    asr: AsrConfig = AsrConfig()
    vlm: VlmConfig = VlmConfig()
    pdf: PdfConfig = PdfConfig()
    model_cache: str = Field(default_factory=lambda: default_cache("models"),
                             description="per-node folder for synced and generated models")
    api_key_header: str = Field("X-API-Key", description="request header carrying the key")
    api_keys_env: str = Field("CORPUSFLOW_API_KEYS", description="environment variable holding comma-separated keys")
    api_keys_file: Optional[str] = Field(None, description="file with one key per line (read by each ingress replica)")
    max_request_mb: float = Field(64.0, gt=0, description="largest request body; bigger ones get 413")
    max_uri_mb: float = Field(1024.0, gt=0, description="largest allow-listed s3:// object; bigger ones get 413 "
                              "from their metadata, before a byte is read")
    input_threads: int = Field(2, ge=1, description="threads per ingress replica that hash and sniff inputs, so "
                               "large inputs cannot hold up the ingress's other work")
    request_timeout_s: float = Field(120.0, gt=0, description="per-request deadline; past it the answer is 504")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503/429 under overload")
    overload_status: Literal[503, 429] = Field(503, description="status for requests refused by a full queue")
    allowed_uri_prefixes: tuple[str, ...] = Field(
        (), description="s3://bucket/prefix/ locations a request may name; empty = uploads only")
    deployments: Deployments = Deployments()
    streaming: StreamingSettings = StreamingSettings()
    index: Optional[str] = Field(None, description="a job's OUT (folder or s3://) whose search index /v1/search and "
                                 "/v1/search/ask answer from, read-only; None serves no search routes")
    index_refresh_s: float = Field(10.0, gt=0, description="how often the search replicas look for a newer index "
                                   "version or newer units")

    @field_validator("models")
    @classmethod
    def _profile(cls, v: str) -> str:
        load_profile(v)
        return v

    @field_validator("allowed_uri_prefixes")
    @classmethod
    def _s3_prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_s3_prefixes(v)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)

    @property
    def max_uri_bytes(self) -> int:
        return int(self.max_uri_mb * 2**20)

    def deployed(self) -> dict[str, "DeploymentSettings"]:
        """The deployments the app runs, by their Serve names: the ingress and every stage's, search with
        an index, stream while streaming is enabled."""
        deployed = {n: getattr(self.deployments, n) for n in DEPLOYMENTS}
        if self.index:
            deployed["search"] = self.deployments.search
        if self.streaming.enabled:
            deployed["stream"] = self.streaming.deployment
        return deployed

    @property
    def min_cpus(self) -> float:
        """Logical CPUs the app holds at its minimum replica counts (what a cluster must offer to start it)."""
        return sum(d.num_cpus * d.autoscaling.min_replicas for d in self.deployed().values())

    def stage_config(self) -> StageConfig:
        """What the stage classes see: the same settings type the batch job hands them.

        Each deployment's GPU share goes into ``resources``, as a job's actor share does, so that an
        engine that sizes itself by its share (Whisper on vLLM: its start-up memory check) fits beside
        the other deployments on the GPU.
        """
        shares = {n: BY_NAME[n].resources.model_copy(update={"num_gpus": getattr(self.deployments, n).num_gpus})
                  for n in DEPLOYMENTS if n in RESERVING}
        return StageConfig(models=self.models, video=self.video, asr=self.asr, vlm=self.vlm, pdf=self.pdf,
                           model_cache=self.model_cache, resources=Resources(shares))

    @classmethod
    def load(cls, path: Optional[str] = None, **overrides: Any) -> "ServeConfig":
        """Config from an optional YAML file plus top-level overrides, with a readable error on any mistake."""
        data = read_mapping(path, "serve config") if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return validated(cls, data, "serve config")


def _check_s3_prefixes(v: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for p in v:
        bucket = p[len("s3://"):].split("/", 1)[0] if p.startswith("s3://") else ""
        if not bucket or ".." in p.split("/"):
            raise ValueError(f"{p!r}: allowed prefixes are s3://bucket[/prefix] locations")
        out.append(p.rstrip("/") + "/")  # a prefix ends at a folder boundary: s3://b/a never admits s3://b/ab
    return tuple(out)
