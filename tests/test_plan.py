"""corpusflow plan: pool sizes that balance the stages, predicted wall time and cost, from a corpus probe."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from deltalake import write_deltalake

from corpusflow.contracts.config import Resources
from corpusflow.contracts.cost import DEFAULT_USD_PER_HOUR
from corpusflow.contracts.placement import (DEFAULT_PLACEMENT, DEFAULT_PROFILE_PATH, STAGES, Cluster, CorpusStats,
                                            NodeType, StagePlacement, Target, ThroughputProfile)
from corpusflow.contracts.schemas import conform
from corpusflow.flows import plan
from tests.media import make_audio, make_pdf, make_video

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0


def _cluster(a10g_nodes: int = 4, h100_nodes: int = 2) -> Cluster:
    return Cluster(name="test", max_workers=100, node_types=[
        NodeType(name="head", instance_type="m", accelerator="cpu", cpus=0, gpus=0, max_workers=0,
                 usd_per_hour=0.5, head=True),
        NodeType(name="cpu", instance_type="c", accelerator="cpu", cpus=16, gpus=0, max_workers=10, usd_per_hour=1.0),
        NodeType(name="a10g", instance_type="g", accelerator="A10G", cpus=16, gpus=4, max_workers=a10g_nodes,
                 usd_per_hour=4.0),
        NodeType(name="h100", instance_type="p", accelerator="H100", cpus=64, gpus=8, max_workers=h100_nodes,
                 usd_per_hour=40.0),
    ])


def _profile(startup_s: float = 0.0, **rates: dict[str, float]) -> ThroughputProfile:
    base = {"identify": {"cpu": 1000.0}, "decode": {"cpu": 1000.0}, "frames": {"cpu": 1000.0},
            "asr": {"A10G": 10.0, "H100": 30.0},
            "vlm": {"A10G": 5.0, "H100": 25.0}, "pdf": {"cpu": 1000.0}, "commit": {"cpu": 1000.0}}
    return ThroughputProfile(models="test", source="synthetic", startup_s=startup_s, rates={**base, **rates})


def _videos(n: int, seconds: float) -> CorpusStats:
    return CorpusStats(files=n, bytes=n * 10**9, video_files=n, video_s=n * seconds, max_video_s=seconds)


def _actors(option, stage: str, acc: str | None = None) -> int:
    return sum(p.actors for p in option.pools if p.stage == stage and acc in (None, p.accelerator))


def test_pools_balance_the_stages_on_one_gpu_type() -> None:
    # 100 one-hour videos; ASR runs 10 media-s/s per actor, the VLM 5: the VLM needs twice the actors.
    option = plan.plan_option("A10G-only", ["A10G"], _videos(100, HOUR), _cluster(), DEFAULT_PLACEMENT, _profile())
    assert option.feasible
    asr, vlm = _actors(option, "asr"), _actors(option, "vlm")
    assert asr + vlm == 16  # the 4 A10G nodes x 4 GPUs, all busy
    assert (asr, vlm) in ((5, 11), (6, 10))
    busy = {f.stage: f.busy_s for f in option.stages}
    assert busy["asr"] == pytest.approx(busy["vlm"], rel=0.25)
    assert option.bottleneck in ("asr", "vlm")
    # wall = start-up (0 here) + the bottleneck's busy time + one asset's pass through the other stages
    first_rate = {"identify": 1000, "decode": 1000, "frames": 1000, "asr": 10, "vlm": 5, "commit": 1000}
    fill = sum(f.work / 100 / first_rate[f.stage] for f in option.stages if f.stage != option.bottleneck)
    assert option.wall_s == pytest.approx(busy[option.bottleneck] + fill)


def test_cost_is_nodes_held_for_the_wall_time_and_device_cost_is_work_over_rate() -> None:
    cluster = _cluster()
    option = plan.plan_option("A10G-only", ["A10G"], _videos(100, HOUR), cluster, DEFAULT_PLACEMENT,
                              _profile(startup_s=120))
    price = {t.name: t.usd_per_hour for t in cluster.node_types}
    assert option.nodes["head"] == 1 and option.nodes["a10g"] == 4
    assert option.cost_usd == pytest.approx(sum(price[t] * n for t, n in option.nodes.items()) * option.wall_s / HOUR)
    vlm = next(f for f in option.stages if f.stage == "vlm")
    # every video-second passes one A10G VLM actor holding one GPU: device time = work / per-actor rate
    assert vlm.device_s == pytest.approx(100 * HOUR / 5)
    assert vlm.cost_usd == pytest.approx(vlm.device_s / HOUR * DEFAULT_USD_PER_HOUR["A10G"])
    assert option.wall_s > 120  # the fixed start-up is part of the wall time


def test_mixed_option_fills_preferred_gpus_first_and_uses_both_types() -> None:
    option = plan.plan_option("mixed", ["A10G", "H100"], _videos(400, HOUR), _cluster(a10g_nodes=2, h100_nodes=1),
                              DEFAULT_PLACEMENT, _profile())
    assert _actors(option, "vlm", "H100") > 0 and _actors(option, "asr", "A10G") > 0  # VLM prefers H100, ASR A10G
    gpus = {acc: sum(p.actors * p.num_gpus for p in option.pools if p.accelerator == acc) for acc in ("A10G", "H100")}
    assert gpus["A10G"] <= 8 and gpus["H100"] <= 8
    assert gpus["A10G"] + gpus["H100"] >= 15  # the cluster is used, not a corner of it
    assert {t: n for t, n in option.nodes.items() if t != "cpu"} == {"head": 1, "a10g": 2, "h100": 1}


def test_small_corpus_gets_one_actor_per_stage_and_is_dominated_by_startup() -> None:
    stats = CorpusStats(files=4, bytes=10**8, video_files=2, audio_files=1, pdf_files=1, video_s=120, audio_s=60,
                        pages=10, max_video_s=60, max_audio_s=60, max_pages=10)
    option = plan.plan_option("A10G-only", ["A10G"], stats, _cluster(), DEFAULT_PLACEMENT, _profile(startup_s=300))
    assert {p.stage: p.actors for p in option.pools} == dict.fromkeys(STAGES, 1)
    assert option.nodes == {"head": 1, "a10g": 1, "cpu": 1}


def test_one_long_video_cannot_be_split_across_actors() -> None:
    option = plan.plan_option("H100-only", ["H100"], _videos(1, 10 * HOUR), _cluster(), DEFAULT_PLACEMENT, _profile())
    assert _actors(option, "vlm") == 1
    assert option.wall_s >= 10 * HOUR / 25


def test_option_is_infeasible_when_placement_forbids_a_needed_stage() -> None:
    h100_only = StagePlacement(targets={"H100": Target(num_gpus=1), "A10G": Target(allowed=False)})
    placement = DEFAULT_PLACEMENT.model_copy(update={"stages": {**DEFAULT_PLACEMENT.stages, "vlm": h100_only}})
    option = plan.plan_option("A10G-only", ["A10G"], _videos(3, HOUR), _cluster(), placement, _profile())
    assert not option.feasible and "vlm" in option.note


def test_cluster_yaml_gives_three_options_side_by_side() -> None:
    cluster = plan.load_cluster(str(ROOT / "cluster.yaml"))
    assert cluster.accelerators() == ["A10G", "H100"]
    h100 = next(t for t in cluster.node_types if t.accelerator == "H100")
    assert (h100.gpus, h100.usd_per_hour) == (8, 55.04)
    profile = ThroughputProfile.load(str(DEFAULT_PROFILE_PATH))
    p = plan.make_plan(_videos(2000, HOUR), cluster, profile, corpus="s3://x")
    assert [o.name for o in p.options] == ["A10G-only", "H100-only", "mixed"] and all(o.feasible for o in p.options)
    mixed = p.option("mixed")
    assert mixed.wall_s < min(p.option("A10G-only").wall_s, p.option("H100-only").wall_s)
    table = plan.format_plan(p)
    header = next(line for line in table.splitlines() if "A10G-only" in line)
    assert header.split() == ["A10G-only", "H100-only", "mixed"]
    for label in ("asr actors", "vlm actors", "wall time", "cluster cost", "h100_worker nodes"):
        assert any(line.startswith(label) for line in table.splitlines()), label


def test_resources_from_plan_size_the_jobs_pools() -> None:
    option = plan.plan_option("mixed", ["A10G", "H100"], _videos(400, HOUR), _cluster(a10g_nodes=2, h100_nodes=1),
                              DEFAULT_PLACEMENT, _profile())
    res = plan.resources_from_plan(option, Resources())
    assert res.vlm.max_actors == res.vlm.min_actors == _actors(option, "vlm")
    if _actors(option, "vlm", "A10G") and _actors(option, "vlm", "H100"):
        assert res.vlm.accelerator_type is None and res.vlm.num_gpus == 1
    single = plan.plan_option("H100-only", ["H100"], _videos(40, HOUR), _cluster(), DEFAULT_PLACEMENT, _profile())
    res = plan.resources_from_plan(single, Resources())
    assert (res.asr.accelerator_type, res.asr.num_gpus) == ("H100", 0.5)  # two ASR actors share an H100
    assert res.decode.accelerator_type is None and res.decode.num_gpus == 0
    assert res.pdf == Resources().pdf  # no PDFs in the corpus: untouched


def test_probe_reads_durations_and_pages_and_extrapolates_beyond_the_sample(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for i in range(3):
        make_video(corpus / f"v{i}.mp4", seconds=2.0, size=(64, 48))
    make_audio(corpus / "a.wav", seconds=1.5)
    make_pdf(corpus / "d.pdf", pages=3)
    make_video(corpus / "no_extension", seconds=1.0, size=(64, 48), audio=False)
    (corpus / "notes.txt").write_text("hello")
    (corpus / "zz_broken.mp4").write_bytes(b"\x00" * 2048)
    stats = plan.probe_corpus(str(corpus), sample=50)
    assert (stats.files, stats.video_files, stats.audio_files, stats.pdf_files, stats.other_files) == (8, 4, 1, 1, 2)
    assert stats.video_s == pytest.approx(7.0, abs=0.3) and stats.audio_s == pytest.approx(1.5, abs=0.1)
    assert stats.pages == 3 and stats.max_video_s == pytest.approx(2.0, abs=0.1)
    sampled = plan.probe_corpus(str(corpus), sample=1)  # one .mp4 probed, the others estimated by bytes
    assert sampled.video_files == 5  # unprobed files keep their extension's kind, zz_broken.mp4 included
    assert sampled.video_s == pytest.approx(stats.video_s, rel=0.5)


def test_cli_prints_the_options_and_writes_json(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus"
    make_video(corpus / "v.mp4", seconds=2.0, size=(64, 48))
    make_pdf(corpus / "d.pdf", pages=2)
    assert plan.main(["--cluster", str(ROOT / "cluster.yaml"), "--corpus", str(corpus),
                      "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "A10G-only" in out and "H100-only" in out and "mixed" in out and "wall time" in out
    loaded = plan.load_plan(str(tmp_path / "plan.json"))
    assert loaded.stats.pdf_files == 1 and len(loaded.options) == 3
    assert plan.main(["--cluster", str(ROOT / "cluster.yaml"), "--corpus", str(corpus), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["video_files"] == 1
    assert plan.main(["--cluster", str(ROOT / "cluster.yaml"), "--corpus", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_measured_from_a_jobs_metrics_drives_a_local_plan(tmp_path: Path, capsys) -> None:
    rows = [("v", "video", "decode", 2.0, 60.0, None), ("v", "video", "speech", 1.0, 60.0, None),
            ("v", "video", "asr", 6.0, 60.0, None),
            ("v", "video", "vlm", 12.0, 60.0, None), ("a", "audio", "asr", 3.0, 30.0, None),
            ("d", "pdf", "pdf", 0.5, None, 5), ("v", "video", "identify", 0.1, None, None)]
    cols = {k: [] for k in ("job_id", "asset_id", "kind", "stage", "wall_s", "device_s", "accelerator", "media_s",
                            "pages", "usd_per_hour", "cost_usd")}
    for aid, kind, stage, wall, media, pages in rows:
        for k, v in (("job_id", "j"), ("asset_id", aid), ("kind", kind), ("stage", stage), ("wall_s", wall),
                     ("device_s", wall), ("accelerator", "cpu"), ("media_s", media), ("pages", pages),
                     ("usd_per_hour", 0.048), ("cost_usd", 0.0)):
            cols[k].append(v)
    write_deltalake(str(tmp_path / "out" / "metrics"), conform("metrics", cols))
    ids = ["v", "a", "d"]
    now = datetime.now(timezone.utc)
    assets = {"asset_id": ids, "uri": [f"/c/{i}" for i in ids], "kind": ["video", "audio", "pdf"],
              "format": ["mp4", "wav", "pdf"], "bytes": [1, 1, 1], "duration_s": [60.0, 30.0, None],
              "pages": [None, None, 5], "status": ["ok"] * 3, "error_stage": [None] * 3, "error": [None] * 3,
              "retryable": [None] * 3, "modified": [None] * 3,
              "config_fingerprint": ["f"] * 3, "job_id": ["j"] * 3, "committed_at": [now] * 3}
    write_deltalake(str(tmp_path / "out" / "assets"), conform("assets", assets))
    profile = plan.profile_from_metrics(plan.read_table(str(tmp_path / "out"), "metrics"), "tiny", 5.0, "test")
    assert profile.rates["decode"]["cpu"] == pytest.approx(60 / 3)  # speech detection runs in decode's tasks
    assert profile.rates["asr"]["cpu"] == pytest.approx(90 / 9)
    assert profile.rates["vlm"]["cpu"] == pytest.approx(5.0)
    assert profile.rates["pdf"]["cpu"] == pytest.approx(10.0)
    corpus = tmp_path / "corpus"
    make_video(corpus / "v.mp4", seconds=2.0, size=(64, 48))
    assert plan.main(["--cluster", str(ROOT / "infra" / "local" / "cluster.yaml"),
                      "--placement", str(ROOT / "infra" / "local" / "placement.yaml"), "--corpus", str(corpus),
                      "--throughput-from", str(tmp_path / "out"), "--startup-s", "5"]) == 0
    out = capsys.readouterr().out
    assert "cpu-only" in out and "infeasible" not in out


def test_probe_reads_a_corpus_on_s3(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.upload_file(str(make_video(tmp_path / "v.mp4", seconds=2.0, size=(64, 48))), s3_bucket, "c/videos/v.mp4")
    s3.upload_file(str(make_pdf(tmp_path / "d.pdf", pages=4)), s3_bucket, "c/docs/d.pdf")
    stats = plan.probe_corpus(f"s3://{s3_bucket}/c")
    assert (stats.files, stats.video_files, stats.pdf_files, stats.pages) == (2, 1, 1, 4)
    assert stats.video_s == pytest.approx(2.0, abs=0.1)
