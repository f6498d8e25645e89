"""The product path timed: `corpusflow run` on the GPU benchmark's corpus, tables committed, beside the bench.

Runs ``python -m corpusflow run CORPUS --out OUT --config JOB --no-index`` in a fresh process, where JOB is
the exact job config the corpusflow_vllm pipeline of benchmarks/gpu_throughput.py ran with (it writes
``--work``/corpusflow_vllm_job.yaml: the same models profile with fixed output lengths, engine options,
resources and sampling), so the two differ only by what the product adds: leases, Delta commits, the
job's listing and bookkeeping. NVML is sampled meanwhile. Its figures, from the committed tables:

- video-hours per GPU-hour with start-up counted: the process's whole wall;
- the same after start-up: from the first row's entry into the VLM engine (its commit time less its engine
  seconds, an upper bound: the commit's lag counts as start-up) to the last commit.

``python benchmarks/product_run.py --work /tmp/cfbench --corpus DIR --bench OUT/gpu_throughput.json --json OUT``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_throughput import GpuSampler  # noqa: E402


def figures_from_tables(out: str, wall_s: float) -> dict:
    """Video-hours and the engine's span from the committed assets and metrics tables."""
    import pyarrow.compute as pc

    from corpusflow.flows.tables import read_table

    assets = read_table(out, "assets").to_pylist()
    metrics = read_table(out, "metrics")
    vlm = metrics.filter(pc.equal(metrics["stage"], "vlm")).to_pylist()
    device = {m["asset_id"]: float(m["device_s"]) for m in vlm}
    hours = sum(float(a.get("duration_s") or 0.0) for a in assets if a["kind"] == "video") / 3600
    committed = [a["committed_at"].timestamp() for a in assets]
    entered = [a["committed_at"].timestamp() - device.get(a["asset_id"], 0.0) for a in assets]
    after = max(committed) - min(entered) if assets else 0.0
    statuses: dict[str, int] = {}
    for a in assets:
        statuses[a["status"]] = statuses.get(a["status"], 0) + 1
    return {"videos_h": round(hours, 3), "assets": len(assets), "statuses": statuses,
            "after_startup_s": round(after, 1), "startup_s": round(wall_s - after, 1),
            "video_h_per_gpu_h": round(hours / (after / 3600), 2) if after > 0 else None,
            "video_h_per_gpu_h_with_startup": round(hours / (wall_s / 3600), 2) if wall_s > 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="the benchmark's --work (holds corpusflow_vllm_job.yaml)")
    p.add_argument("--corpus", required=True, help="the corpus folder the benchmark ran on")
    p.add_argument("--bench", help="gpu_throughput.json of the same lease, for the figures beside")
    p.add_argument("--json", required=True, help="where to write this run's figures")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--config", help="job config (default: --work/corpusflow_vllm_job.yaml, the pipeline's own)")
    a = p.parse_args(argv)
    work = Path(a.work)
    out = str(work / "product_tables")
    cmd = [sys.executable, "-m", "corpusflow", "run", a.corpus, "--out", out,
           "--config", a.config or str(work / "corpusflow_vllm_job.yaml"), "--no-index"]
    print("[product] " + " ".join(cmd), flush=True)
    # Its own Ray (under --work/ray-product, whose ray-data.log says where rows waited), never another on this machine
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray-product"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    with GpuSampler(a.gpus) as gpu:
        t0 = time.time()
        proc = subprocess.run(cmd, env=env)
        wall = time.time() - t0
    result = {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": round(wall, 1)}
    if proc.returncode == 0:
        try:
            result.update(figures_from_tables(out, wall))
            result.update(gpu.figures(t0, t0 + result["startup_s"]))
        except Exception as e:  # noqa: BLE001 - the tables travel back with the logs; the figures can be redone
            result["figures_error"] = f"{type(e).__name__}: {e}"
            result.update(gpu.figures(t0))
    if a.bench and Path(a.bench).exists():
        bench = json.loads(Path(a.bench).read_text())["contenders"].get("corpusflow_vllm", {})
        result["bench_corpusflow_vllm"] = {k: bench.get(k) for k in (
            "videos_h", "after_startup_s", "startup_s", "video_h_per_gpu_h", "video_h_per_gpu_h_with_startup")}
        if result.get("video_h_per_gpu_h") and bench.get("video_h_per_gpu_h"):
            result["ratio_to_bench"] = round(result["video_h_per_gpu_h"] / bench["video_h_per_gpu_h"], 3)
    Path(a.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "gpu_per_s"}, indent=1), flush=True)
    return proc.returncode


if __name__ == "__main__":  # vLLM's engine process may re-import this module: nothing may run on import
    sys.exit(main())
