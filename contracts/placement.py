"""Where each stage may run, how fast it runs there, and what a sizing plan predicts.

A mixed cluster (cheap A10G nodes, fast H100 nodes, CPU nodes) only pays off when each stage lands where
it is worth it: ASR is fine on an A10G, the VLM wants an H100's memory for long contexts, decode wants
CPUs. :class:`Placement` says, per stage and accelerator type, whether the stage may run there, with which
actor resources, runtime environment and engine options; :class:`ThroughputProfile` says how much work one
such actor does per second; :class:`Plan` is what ``corpusflow plan`` predicts from both and a corpus.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from pydantic import Field, model_validator

from corpusflow.contracts.base import StrictModel, read_yaml, validated
from corpusflow.contracts.config import AsrConfig, VlmEngineOptions
from corpusflow.contracts.registry import BY_NAME, RESERVING, check_gpu_pair

# Stages a placement names: those with a reservation of their own (contracts/registry.py).
STAGES = RESERVING

# What one unit of a stage's work is: files, seconds of media (video + audio), seconds of video, pages.
UNITS = {name: BY_NAME[name].unit for name in STAGES}

# Python interpreters of the stage environments baked into the worker image (infra/docker/Dockerfile):
# vLLM pins its own torch, so the VLM actors run from a second virtual environment of the same image.
ENVIRONMENTS = {"base": "/opt/venvs/base/bin/python", "vllm": "/opt/venvs/vllm/bin/python"}

# Public on-demand prices (AWS us-east-1) of the instance types cluster.yaml uses; a node type whose
# instance is not listed is priced from corpusflow.contracts.cost (GPUs x per-GPU price, else vCPUs x CPU price).
INSTANCE_USD_PER_HOUR = {
    "m7i.2xlarge": 0.4032,
    "m7i.8xlarge": 1.6128,
    "g5.12xlarge": 5.672,
    "p5.48xlarge": 55.04,
}

# Keys a target's ``engine`` may override, per stage: the stage config fields that depend on the device.
_ENGINE_KEYS = {"asr": set(AsrConfig.model_fields), "vlm": set(VlmEngineOptions.model_fields)}


class Target(StrictModel):
    """How one actor of a stage runs on one accelerator type ('cpu', 'A10G', 'H100', ...)."""

    allowed: bool = Field(True, description="false forbids the stage on this type (overrides a default)")
    num_cpus: float = Field(1, gt=0, description="logical CPUs each actor reserves")
    num_gpus: float = Field(0, ge=0, le=8, description="GPUs per actor; 0.5 puts two actors on one GPU")
    batch_size: Optional[int] = Field(None, ge=1, description="rows per call (see StageResources.batch_size)")
    env: str = Field("base", description="stage environment, a key of ENVIRONMENTS")
    engine: dict[str, Union[bool, int, float, str]] = Field(
        default_factory=dict, description="device-dependent overrides of the stage config (asr.*, VLM engine options)")
    share_gpu_with: Optional[str] = Field(
        None, description="another stage whose actor each of these actors sits beside on one GPU of this type "
        "(ASR beside the VLM engine): planned and placed in pairs, one pair per GPU (StageResources.share_gpu_with)")

    @model_validator(mode="after")
    def _env(self) -> "Target":
        if self.env not in ENVIRONMENTS:
            raise ValueError(f"unknown env {self.env!r}; known: {', '.join(ENVIRONMENTS)}")
        return self


class StagePlacement(StrictModel):
    """The accelerator types a stage may use, in order of preference (a mixed plan fills them in order)."""

    targets: dict[str, Target] = Field(description="accelerator type ('cpu', 'A10G', 'H100', ...) -> how an actor "
                                       "runs there, in order of preference")

    def allowed(self) -> list[str]:
        return [acc for acc, t in self.targets.items() if t.allowed]


class Placement(StrictModel):
    """Per stage (identify, decode, pdf, asr, frames, vlm, commit), the accelerator types it may use."""

    stages: dict[str, StagePlacement] = Field(description="stage name -> the accelerator types it may run on")

    @model_validator(mode="after")
    def _known(self) -> "Placement":
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; stages are {', '.join(STAGES)}")
        for stage, sp in self.stages.items():
            if stage not in _ENGINE_KEYS:
                continue
            for acc, t in sp.targets.items():
                bad = set(t.engine) - _ENGINE_KEYS[stage]
                if bad:
                    raise ValueError(f"{stage} on {acc}: unknown engine options {sorted(bad)}")
        for stage, sp in self.stages.items():
            for acc, t in sp.targets.items():
                if t.share_gpu_with is None or not t.allowed:
                    continue
                other = self.target(t.share_gpu_with, acc)
                if other is None or t.share_gpu_with == stage or other.share_gpu_with:
                    raise ValueError(f"{stage} on {acc} shares a GPU with {t.share_gpu_with!r}, which has no target "
                                     f"of its own on {acc}")
                check_gpu_pair(f"{stage} and {t.share_gpu_with} on {acc}", t.num_gpus, other.num_gpus)
        return self

    def target(self, stage: str, accelerator: str) -> Optional[Target]:
        """The target, or None when the stage may not run on this accelerator type."""
        sp = self.stages.get(stage)
        t = sp.targets.get(accelerator) if sp else None
        return t if t is not None and t.allowed else None

    def runtime_env(self, stage: str, accelerator: str) -> dict[str, str]:
        """Ray ``runtime_env`` for the stage's actors: the interpreter of its environment in the image."""
        t = self.target(stage, accelerator)
        if t is None or t.env == "base":
            return {}
        return {"py_executable": ENVIRONMENTS[t.env]}

    @classmethod
    def load(cls, path: str) -> "Placement":
        return validated(cls, read_yaml(path, "placement"), f"placement {path}")


def _cpu(num_cpus: float = 1, batch_size: Optional[int] = None) -> StagePlacement:
    return StagePlacement(targets={"cpu": Target(num_cpus=num_cpus, batch_size=batch_size)})


# ASR prefers the A10G (faster-whisper large-v3 needs ~5 GB; two actors share an H100); the VLM prefers
# the H100, whose memory holds a whole long video in one context (splitting breaks temporal coherence).
DEFAULT_PLACEMENT = Placement(stages={
    "identify": _cpu(1),
    "decode": _cpu(2),
    "frames": _cpu(2),
    "asr": StagePlacement(targets={
        "A10G": Target(num_cpus=4, num_gpus=1, engine={"compute_type": "float16", "batch_size": 16}),
        "H100": Target(num_cpus=4, num_gpus=0.5, engine={"compute_type": "float16", "batch_size": 32}),
    }),
    "vlm": StagePlacement(targets={
        "H100": Target(num_cpus=8, num_gpus=1, env="vllm"),
        "A10G": Target(num_cpus=4, num_gpus=1, env="vllm"),
    }),
    "pdf": _cpu(1),
    "commit": _cpu(0.5, 8),
})


class ThroughputProfile(StrictModel):
    """Work per second of ONE actor of a stage on an accelerator type (with the placement's resources)."""

    models: str = Field(description="models profile the figures hold for")
    source: str = Field(description="where the figures come from: a benchmark run, a paper, an estimate")
    startup_s: float = Field(300, ge=0, description="node start, image pull and model load before work flows")
    rates: dict[str, dict[str, float]] = Field(description="stage -> accelerator type -> units per second per actor")
    notes: dict[str, str] = Field(default_factory=dict, description="stage -> how its figures were obtained")

    @model_validator(mode="after")
    def _positive(self) -> "ThroughputProfile":
        for stage, per_acc in self.rates.items():
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r} in rates")
            for acc, r in per_acc.items():
                if r <= 0:
                    raise ValueError(f"rate of {stage} on {acc} must be > 0, got {r}")
        return self

    @classmethod
    def load(cls, path: str) -> "ThroughputProfile":
        return validated(cls, read_yaml(path, "throughput profile"), f"throughput profile {path}")


# Ships inside the package (pyproject package-data), so an installed wheel plans without a checkout.
DEFAULT_PROFILE_PATH = Path(__file__).resolve().parent / "throughput_profile.json"


class NodeType(StrictModel):
    """A worker (or head) type of the cluster, as the plan sees it."""

    name: str
    instance_type: str
    accelerator: str = Field(description="'cpu' or the Ray accelerator type of its GPUs")
    cpus: float
    gpus: float
    min_workers: int = 0
    max_workers: int
    usd_per_hour: float
    head: bool = False


class Cluster(StrictModel):
    name: str
    max_workers: int
    node_types: list[NodeType]

    def accelerators(self) -> list[str]:
        """GPU types the cluster offers, in the order its node types are declared."""
        return list(dict.fromkeys(n.accelerator for n in self.node_types if n.accelerator != "cpu"))


class CorpusStats(StrictModel):
    """What a fast listing and metadata probe found (estimates extrapolated by bytes where not probed)."""

    files: int
    bytes: int
    video_files: int = 0
    audio_files: int = 0
    pdf_files: int = 0
    other_files: int = 0
    video_s: float = 0
    audio_s: float = 0
    pages: int = 0
    max_video_s: float = 0
    max_audio_s: float = 0
    max_pages: int = 0
    probed: int = Field(0, description="files whose metadata was read")
    unreadable: int = Field(0, description="files the probe could not read (counted as 'other')")


class Pool(StrictModel):
    stage: str
    accelerator: str
    actors: int
    num_cpus: float
    num_gpus: float
    share_gpu_with: Optional[str] = None


class StageForecast(StrictModel):
    stage: str
    unit: str
    work: float
    units_per_s: float = Field(description="throughput of all its actors together")
    busy_s: float = Field(description="time the stage needs at that throughput")
    device_s: float = Field(description="actor-seconds x the GPUs (or, on CPU, the cores) each actor holds")
    cost_usd: float = Field(description="device-seconds x the accelerator's hourly price (corpusflow.contracts.cost)")


class PlanOption(StrictModel):
    name: str
    accelerators: list[str]
    feasible: bool
    note: str = ""
    pools: list[Pool] = []
    nodes: dict[str, int] = Field(default_factory=dict, description="node type -> nodes held, head included")
    stages: list[StageForecast] = []
    bottleneck: str = ""
    lead_s: float = Field(0, description="one asset's time through the stages before the bottleneck (it overlaps the start-up)")
    wall_s: float = 0
    cost_usd: float = Field(0, description="node-hours held for the wall time x instance prices")


class Plan(StrictModel):
    cluster: str
    corpus: str
    profile: str
    stats: CorpusStats
    options: list[PlanOption]

    def option(self, name: str) -> PlanOption:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(f"plan has no option {name!r}; options: {', '.join(o.name for o in self.options)}")
