"""ASR beside the VLM engine, one pair per GPU: the config's ``share_gpu_with``, the plan's pairs, Ray's placement."""
from __future__ import annotations

import numpy as np
import pytest

from corpusflow.contracts.base import ConfigError
from corpusflow.contracts.config import JobConfig, Resources
from corpusflow.contracts.placement import DEFAULT_PLACEMENT, Cluster, CorpusStats, NodeType, Placement, ThroughputProfile
from corpusflow.contracts.registry import spec
from corpusflow.flows import plan

PAIRED = {"resources.asr.num_gpus": 0.2, "resources.asr.min_actors": 2, "resources.asr.max_actors": 2,
          "resources.asr.num_cpus": 1, "resources.asr.batch_size": 1, "resources.asr.share_gpu_with": "vlm",
          "resources.vlm.num_gpus": 0.8, "resources.vlm.min_actors": 2, "resources.vlm.max_actors": 2,
          "resources.vlm.batch_size": 1}


def test_config_refuses_pairs_that_cannot_share_a_gpu() -> None:
    JobConfig.build(None, corpus="a", out="b", **PAIRED)
    for bad in ({"resources.asr.num_gpus": 0.3},  # 0.3 + 0.8 > one GPU
                {"resources.vlm.max_actors": 3},  # pools of different sizes
                {"resources.asr.share_gpu_with": "decode"},  # not an actor stage
                {"resources.vlm.num_gpus": 0}):
        with pytest.raises(ConfigError, match="share"):
            JobConfig.build(None, corpus="a", out="b", **{**PAIRED, **bad})


class _Where:
    """Stands in for a stage: records the GPU Ray gave this actor (logical GPUs set CUDA_VISIBLE_DEVICES too)."""

    column = ""

    def __init__(self, config) -> None:
        import os

        import ray

        self.gpu = ",".join(str(g) for g in ray.get_gpu_ids())
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == self.gpu

    def __call__(self, batch):
        return {**batch, self.column: np.full(len(batch["id"]), self.gpu, dtype=object)}


class _Asr(_Where):
    column = "asr_gpu"


class _Vlm(_Where):
    column = "vlm_gpu"


def test_each_gpu_holds_one_asr_actor_and_one_engine() -> None:
    """Left to Ray, ASR actors started first pack onto GPU 0 (best fit) and starve the second engine;
    with share_gpu_with every GPU gets one actor of each stage."""
    import ray
    import ray.data

    from corpusflow.flows import gpu_bundles
    from corpusflow.flows.adapter import add_stage

    ray.shutdown()
    ray.init(num_cpus=6, num_gpus=2, include_dashboard=False, log_to_driver=False)  # 4 CPUs go to the bundles
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        config = JobConfig.build(None, corpus="a", out="b", **PAIRED)
        places = gpu_bundles.remote_args_fns(config)
        assert set(places) == {"asr", "vlm"}
        ds = ray.data.range(16, override_num_blocks=16)
        ds = add_stage(ds, spec("asr"), config, cls=_Asr, place=places["asr"])
        ds = add_stage(ds, spec("vlm"), config, cls=_Vlm, place=places["vlm"])
        rows = ds.take_all()
        assert len(rows) == 16
        assert {r["asr_gpu"] for r in rows} == {"0", "1"}
        assert {r["vlm_gpu"] for r in rows} == {"0", "1"}
        gpu_bundles.release()
    finally:
        ray.shutdown()


def test_plan_pairs_asr_with_the_engines_and_the_job_keeps_the_pairs() -> None:
    node = NodeType(name="node", instance_type="p", accelerator="H200", cpus=64, gpus=4, max_workers=0,
                    usd_per_hour=40.0, head=True)
    cluster = Cluster(name="x4", max_workers=0, node_types=[node])
    placement = Placement.model_validate({"stages": {
        **{s: sp.model_dump() for s, sp in DEFAULT_PLACEMENT.stages.items()},
        "asr": {"targets": {"H200": {"num_cpus": 1, "num_gpus": 0.2, "share_gpu_with": "vlm"}}},
        "vlm": {"targets": {"H200": {"num_cpus": 1, "num_gpus": 0.8}}}}})
    profile = ThroughputProfile(models="t", source="t", startup_s=0, rates={
        "identify": {"cpu": 1000.0}, "decode": {"cpu": 200.0}, "asr": {"H200": 2000.0}, "frames": {"cpu": 1000.0},
        "vlm": {"H200": 400.0}, "commit": {"cpu": 1000.0}})
    stats = CorpusStats(files=128, bytes=10**9, video_files=128, video_s=128 * 900.0, max_video_s=900.0)
    option = plan.plan_option("H200-only", ["H200"], stats, cluster, placement, profile)
    pools = {p.stage: p for p in option.pools}
    assert pools["vlm"].actors == pools["asr"].actors == 4  # one pair per GPU, ASR never grown alone
    assert pools["asr"].share_gpu_with == "vlm"
    # The first file's decode, ASR and frames happen before the engines have work: that lead is reported apart.
    assert option.bottleneck == "vlm" and option.lead_s == pytest.approx(1 / 1000 + 900 / 200 + 900 / 2000 + 900 / 1000)
    res = plan.resources_from_plan(option, Resources())
    assert (res.asr.share_gpu_with, res.asr.max_actors, res.vlm.max_actors) == ("vlm", 4, 4)
    with pytest.raises(ValueError, match="no target"):
        Placement.model_validate({"stages": {"asr": {"targets": {"A10G": {"num_gpus": 0.5, "share_gpu_with": "vlm"}}}}})
