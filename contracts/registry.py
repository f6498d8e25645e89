"""The stage registry: every stage of the corpus job, once, with what it handles and what it holds.

Everything that lists stages derives from :data:`STAGES`: the job config's ``resources`` section
(:class:`Resources`), the metric columns the tables read (``rows.METRIC_STAGES``), the stages a
placement may name (``placement.STAGES``), the Ray Data pipeline (flows/job.py through
flows/adapter.py) and the Serve deployments (serve_apps/app.py). Adding a stage is one entry here
plus its class in ``actors/``. Stage classes are named by import path, not imported: contracts sit
below actors and import none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

from pydantic import Field, RootModel, model_validator

from corpusflow.contracts.base import StrictModel

# Ray arguments the adapter sets itself, from the fields below or from the stage's declaration; a
# stage's ``ray_options`` may not name them (two sources for one setting is how jobs get misconfigured).
RESERVED_RAY_OPTIONS = frozenset({
    "num_cpus", "num_gpus", "accelerator_type", "memory", "batch_size", "batch_format", "compute", "concurrency",
    "fn_args", "fn_kwargs", "fn_constructor_args", "fn_constructor_kwargs", "zero_copy_batch",
})


class StageResources(StrictModel):
    """Ray resources of one stage. Actor pools size between min_actors and max_actors."""

    num_cpus: float = Field(1, gt=0, description="logical CPUs each task or actor reserves (CTranslate2 runs one "
                            "thread per reserved CPU)")
    num_gpus: float = Field(0, ge=0, description="GPUs each task or actor reserves; a fraction shares a GPU")
    accelerator_type: Optional[str] = Field(None, description="Ray accelerator type, e.g. A10G or H100")
    min_actors: int = Field(1, ge=1, description="actor stages: actors started at once and kept")
    max_actors: int = Field(1, ge=1, description="actor stages: the pool grows to this many while work waits")
    batch_size: Optional[int] = Field(
        None, ge=1, description="rows per call; none: one listing block per call (a media file alone, or up to "
        "64 small files), so Ray bundles no media files together and small files cost one call per block; a stage with "
        "GPUs gets 1 instead, since Ray needs a batch size there")
    memory_gb: Optional[float] = Field(None, gt=0, description="memory reserved per task/actor")
    ray_options: dict[str, Any] = Field(
        default_factory=dict, description="further Ray Data map_batches / remote arguments (max_restarts, "
        "max_task_retries, runtime_env, scheduling_strategy...); those set by the fields above are refused")
    share_gpu_with: Optional[str] = Field(
        None, description="a GPU stage whose actors this stage's actors sit beside, one of each per GPU: "
        "flows/gpu_bundles.py reserves one placement-group bundle per GPU holding both shares (left to Ray, "
        "fractional shares land wherever they fit, e.g. two ASR actors on one GPU and none on the next)")

    @model_validator(mode="before")
    @classmethod
    def _gpu_batch(cls, data: Any) -> Any:
        """Ray refuses a GPU stage without a batch size once the job runs (``map_batches`` asks for one); one
        row per call is what no batch size means for media, whose files are listing blocks of their own."""
        gpus = data.get("num_gpus") if isinstance(data, dict) else None
        if isinstance(gpus, (int, float)) and gpus > 0 and data.get("batch_size") is None:
            return {**data, "batch_size": 1}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> "StageResources":
        if self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) < min_actors ({self.min_actors})")
        if self.share_gpu_with and "scheduling_strategy" in self.ray_options:
            raise ValueError("share_gpu_with places the actors itself; drop ray_options.scheduling_strategy")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"num_gpus: {self.num_gpus} is not possible; Ray gives a task or actor a share of one GPU "
                             "(at most 1) or whole GPUs")
        custom = self.ray_options.get("resources") or {}
        if not isinstance(custom, dict) or {"CPU", "GPU"} & set(custom):
            raise ValueError("ray_options.resources: a mapping of custom resources; CPUs and GPUs come from "
                             "num_cpus and num_gpus")
        clash = sorted(RESERVED_RAY_OPTIONS & set(self.ray_options))
        if clash:
            raise ValueError(f"ray_options may not set {clash}: they come from this stage's own fields "
                             "(num_cpus, num_gpus, accelerator_type, memory_gb, batch_size, min/max_actors)")
        return self


def check_gpu_pair(pair: str, a: float, b: float) -> None:
    """Two actors that share one GPU (``share_gpu_with``) each need a share of it, together at most all of it."""
    if not (a and b) or a + b > 1:
        raise ValueError(f"{pair} share a GPU: both need a GPU share, together at most 1 (got {a} + {b})")


@dataclass(frozen=True)
class StageSpec:
    """One stage as the job and the API run it.

    ``cls``: the stage class's import path (None for the job's own commit step). ``pool``: Ray tasks
    (cheap to start, stateless) or an actor pool (a model loaded once per actor). ``unit``: what one
    unit of its work is, for sizing plans. ``serve``: how the online API deploys it (one request per
    call, gathered batches, or not at all).
    """

    name: str
    cls: Optional[str]
    pool: Literal["tasks", "actors"]
    unit: str
    resources: StageResources = StageResources()
    serve: Optional[Literal["single", "batched"]] = None
    metrics: bool = True


_ACTORS = "corpusflow.actors"

# In pipeline order. Videos, audio and PDFs flow interleaved; each stage's contract says which kinds it takes.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("identify", f"{_ACTORS}.identify.Identify", "tasks", "file", StageResources(num_cpus=1)),
    # Speech detection (CPU VAD) runs inside decode as the audio streams: the ASR actors then spend
    # their GPU share decoding speech chunks only, and only speech travels to them, as int16.
    StageSpec("decode", f"{_ACTORS}.decode.DecodeMedia", "tasks", "media_s", StageResources(num_cpus=1),
              serve="single"),
    StageSpec("pdf", f"{_ACTORS}.pdf.ExtractPdf", "tasks", "page", StageResources(num_cpus=1),
              serve="single"),
    # Two CPUs: CTranslate2 runs one intra-op thread per reserved CPU. (Different resources from the
    # CPU tasks also keep Ray from fusing decode into the ASR actors, which would serialise them.)
    StageSpec("asr", f"{_ACTORS}.asr.Transcribe", "actors", "media_s", StageResources(num_cpus=2), serve="batched"),
    # Frames are sampled after ASR, not in decode: the ASR actors then never hold a row's pictures.
    StageSpec("frames", f"{_ACTORS}.frames.SampleFrames", "tasks", "video_s", StageResources(num_cpus=1),
              serve="single"),
    StageSpec("vlm", f"{_ACTORS}.vlm.Describe", "actors", "video_s", StageResources(num_cpus=1), serve="batched"),
    # One committer actor by default: a job's commits then never race each other for a Delta log
    # (delta-rs cannot prove two key-replacing commits disjoint), and a batch of 32 files is one
    # transaction per table.
    StageSpec("commit", None, "actors", "file", StageResources(num_cpus=0.5, batch_size=32), metrics=False),
)

# The search index job's stage (flows/index.py), run after the corpus job over its committed tables; its
# resources are ``index.embed`` of the job config.
EMBED = StageSpec("embed", f"{_ACTORS}.embed.Embed", "actors", "unit", StageResources(num_cpus=1, batch_size=64),
                  metrics=False)

BY_NAME = {s.name: s for s in STAGES}
# Stages with a reservation of their own: the keys of a job config's ``resources`` and of a placement.
RESERVING = tuple(s.name for s in STAGES)


def spec(name: str) -> StageSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(BY_NAME)}") from None


class Resources(RootModel[dict[str, StageResources]]):
    """``resources:`` of a job config: one :class:`StageResources` per reserving stage, defaults from STAGES."""

    model_config = {"frozen": True}
    root: dict[str, StageResources] = Field(default_factory=lambda: {n: BY_NAME[n].resources for n in RESERVING})

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - set(RESERVING))
        if unknown:
            raise ValueError(f"unknown stages {unknown}; stages with resources are {', '.join(RESERVING)}")
        return {n: data.get(n, BY_NAME[n].resources) for n in RESERVING}

    @model_validator(mode="after")
    def _shared_gpus(self) -> "Resources":
        for name, res in self.root.items():
            if res.share_gpu_with is None:
                continue
            other = self.root.get(res.share_gpu_with)
            if other is None or other is res or BY_NAME[name].pool != "actors" or BY_NAME[res.share_gpu_with].pool != "actors":
                raise ValueError(f"{name}.share_gpu_with: {res.share_gpu_with!r} is not another actor stage")
            check_gpu_pair(f"{name} and {res.share_gpu_with}", res.num_gpus, other.num_gpus)
            if not (res.min_actors == res.max_actors == other.min_actors == other.max_actors):
                raise ValueError(f"{name} shares a GPU with {res.share_gpu_with}: both pools need the same fixed "
                                 "size (min_actors = max_actors), one actor of each per GPU")
        return self

    def __getattr__(self, name: str) -> StageResources:
        root = self.__dict__.get("root", {})
        if name in root:
            return root[name]
        raise AttributeError(name)

    def of(self, stage: str) -> StageResources:
        """The reservation ``stage`` runs on."""
        return self.root[spec(stage).name]

    def __iter__(self) -> Iterator[tuple[str, StageResources]]:  # type: ignore[override]
        return iter(self.root.items())
