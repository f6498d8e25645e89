"""Plot of the 1/2/4-GPU runs of benchmarks/gpu_throughput.py: wall time after start-up against GPUs (measured,
ideal from the 1-GPU run, ``corpusflow plan``'s prediction from the 1-GPU run's rates) and scaling efficiency.

    python3 benchmarks/gpu_scaling_plot.py --runs 1=gpu1.json 2=gpu2.json 4=gpu4.json --plan gpu1.json --out scaling.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def scaling(runs: dict[int, dict], plan: dict) -> list[dict]:
    """Per GPU count: measured wall after start-up, efficiency against the 1-GPU run, the plan's wall."""
    one = runs[1]["after_startup_s"]
    rows = []
    for n, fig in sorted(runs.items()):
        wall = fig["after_startup_s"]
        predicted = plan.get(str(n), {}).get("wall_after_startup_s")
        rows.append({"gpus": n, "wall_s": wall, "efficiency": one / (n * wall), "plan_s": predicted,
                     "plan_error": predicted / wall - 1 if predicted else None,
                     "video_h_per_gpu_h": fig["video_h_per_gpu_h"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="N=path of gpu_throughput.json with N GPUs")
    p.add_argument("--plan", required=True, help="gpu_throughput.json holding the plan (the 1-GPU run's)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="corpusflow_vllm, 32 h lecture corpus")
    p.add_argument("--contender", default="corpusflow_vllm", help="whose figures (the CPU check: corpusflow_transformers)")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {int(k): json.loads(Path(v).read_text())["contenders"][a.contender]
            for k, v in (r.split("=", 1) for r in a.runs)}
    rows = scaling(runs, json.loads(Path(a.plan).read_text()).get("plan", {}))
    gpus = [r["gpus"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(gpus, [r["wall_s"] for r in rows], "o-", label="measured")
    left.plot(gpus, [rows[0]["wall_s"] / n for n in gpus], "k:", label="ideal (1-GPU wall / N)")
    planned = [(r["gpus"], r["plan_s"]) for r in rows if r["plan_s"]]
    if planned:
        left.plot(*zip(*planned), "s--", label="corpusflow plan")
    left.set(xlabel="GPUs", ylabel="wall time after start-up, s", xticks=gpus, title=a.title)
    left.set_ylim(bottom=0)
    left.legend()
    right.bar([str(n) for n in gpus], [100 * r["efficiency"] for r in rows])
    right.axhline(90, color="k", ls=":", label="target 90%")
    for i, r in enumerate(rows):
        right.text(i, 100 * r["efficiency"] + 1, f"{100 * r['efficiency']:.0f}%", ha="center")
    right.set(xlabel="GPUs", ylabel="scaling efficiency, %", ylim=(0, 110), title="1-GPU wall / (N x N-GPU wall)")
    right.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
