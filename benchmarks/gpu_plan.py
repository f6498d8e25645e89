"""``corpusflow plan``'s prediction for the benchmark machine with N GPUs, from one measured run.

benchmarks/gpu_throughput.py measures corpusflow_vllm on one GPU; this module turns that run into the
three files the plan reads — a cluster of one node of this machine's cores and N GPUs of its type, a
placement with the run's actor shapes (one VLM engine on ``1 - asr_share`` of a GPU, ASR actors on
``asr_share / asr_actors`` each), a throughput profile with the run's per-actor ASR and VLM rates (the
other stages keep the shipped profile's figures) — and runs ``corpusflow plan`` on the benchmark's corpus
for each N, so the prediction for N GPUs stands beside the wall time measured on them.

The profile's start-up is 0: the plan's wall time is then the time after start-up, which is what the
runs measure apart from their start-up (vLLM's first start on a machine compiles, later ones find the
cache, so start-ups of runs in one lease differ for reasons the plan cannot know). With a start-up, the
plan also stops adding actors once the work would end within it, leaving GPUs of the node idle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from corpusflow.contracts.placement import DEFAULT_PROFILE_PATH


def plan_inputs(folder: Path, run: dict, accelerator: str, gpus: int, cores: int, asr_share: float,
                asr_actors: int, decode_cpu_s_per_h: float | None = None) -> dict[str, str]:
    """Write cluster.yaml, placement.yaml and throughput_profile.json for ``gpus`` GPUs; their paths by name.

    ``run`` is the corpusflow_vllm figures of gpu_throughput.py (one GPU): its VLM engine did the video
    seconds in its wall time after start-up; its ASR actors did the media seconds in ``asr_actor_s``.
    With ``asr_pairs_per_gpu`` in the run, ASR actors sit one beside each engine (placement
    ``share_gpu_with: vlm``). ``decode_cpu_s_per_h``: the measured decode cost, else the shipped rate.
    """
    folder.mkdir(parents=True, exist_ok=True)
    video_s = run["videos_h"] * 3600
    engines = run.get("gpus", 1)
    shipped = json.loads(DEFAULT_PROFILE_PATH.read_text())
    rates = {**shipped["rates"], "asr": {accelerator: video_s / run["asr_actor_s"]},
             "vlm": {accelerator: video_s / (run["after_startup_s"] * engines)}}
    if decode_cpu_s_per_h:  # a decode task holds one CPU; PyAV's threads are inside its CPU time
        rates["decode"] = {"cpu": 3600 / decode_cpu_s_per_h}
    profile = {
        "models": "qwen2.5-vl-7b + whisper (benchmark)",
        "source": f"benchmarks/gpu_throughput.py corpusflow_vllm on {engines} {accelerator} (asr, vlm"
                  + (", decode" if decode_cpu_s_per_h else "") + "); the shipped profile for the other stages",
        "startup_s": 0,
        "rates": rates,
    }
    def cpu() -> dict:
        return {"targets": {"cpu": {"num_cpus": 1}}}

    pairs = bool(run.get("asr_pairs_per_gpu"))
    asr = ({"num_cpus": 1, "num_gpus": round(asr_share, 4), "share_gpu_with": "vlm"} if pairs else
           {"num_cpus": 1, "num_gpus": round(asr_share / asr_actors, 4)})
    placement = {"stages": {
        "identify": cpu(), "decode": cpu(), "frames": cpu(),
        "asr": {"targets": {accelerator: asr}},
        "vlm": {"targets": {accelerator: {"num_cpus": 1, "num_gpus": round(1 - asr_share, 4)}}},
        "pdf": cpu(), "commit": {"targets": {"cpu": {"num_cpus": 0.5, "batch_size": 8}}},
    }}
    cluster = {"cluster_name": f"bench-{gpus}x{accelerator}", "max_workers": 0, "head_node_type": "node",
               "available_node_types": {"node": {
                   "resources": {"CPU": cores, "GPU": gpus, f"accelerator_type:{accelerator}": 1},
                   "node_config": {}, "min_workers": 0, "max_workers": 0}}}
    paths = {"cluster": folder / "cluster.yaml", "placement": folder / "placement.yaml",
             "throughput": folder / "throughput_profile.json"}
    paths["cluster"].write_text(yaml.safe_dump(cluster))
    paths["placement"].write_text(yaml.safe_dump(placement))
    paths["throughput"].write_text(json.dumps(profile, indent=1))
    return {k: str(v) for k, v in paths.items()}


def predict(folder: Path, run: dict, corpus_dir: str, accelerator: str, gpu_counts: list[int],
            asr_share: float, asr_actors: int, cores: int | None = None,
            decode_cpu_s_per_h: float | None = None) -> dict:
    """``corpusflow plan`` for each GPU count (a node of ``cores``, default this machine's): its command,
    wall time, the part of it after start-up (``wall_s`` less the lead, which the measured start-up hides:
    the first files are decoded and transcribed while the engines start), bottleneck and pools."""
    from corpusflow.flows import plan

    out = {}
    for n in gpu_counts:
        sub = folder / f"{n}gpu"
        files = plan_inputs(sub, run, accelerator, n, cores or os.cpu_count() or 1, asr_share, asr_actors,
                            decode_cpu_s_per_h)
        argv = ["--cluster", files["cluster"], "--placement", files["placement"], "--throughput", files["throughput"],
                "--corpus", corpus_dir, "--json", str(sub / "plan.json")]
        plan.main(argv)
        option = plan.load_plan(str(sub / "plan.json")).options[0]
        out[str(n)] = {"command": "corpusflow plan " + " ".join(argv), "feasible": option.feasible,
                       "wall_s": round(option.wall_s, 1), "lead_s": round(option.lead_s, 1),
                       "wall_after_startup_s": round(option.wall_s - option.lead_s, 1), "bottleneck": option.bottleneck,
                       "busy_s": {f.stage: round(f.busy_s, 1) for f in option.stages},
                       "pools": {f"{p.stage}@{p.accelerator}": p.actors for p in option.pools}}
    return out
