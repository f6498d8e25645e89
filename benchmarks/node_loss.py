"""Seconds a job loses when the node running its stages dies: the node-loss matrix of docs/cluster.md.

    python benchmarks/node_loss.py [--cases decode,asr,vlm,commit] [--repeat 1] [--json out.json]

One ``ray.cluster_utils.Cluster`` on this machine (a head node plus a "spot" node that holds decode, ASR,
the VLM and the committer; tests/ray_nodes.py), the corpus of tests/test_node_loss.py through
``corpusflow run --address``: first without a loss (the baseline), then once per case with the spot node
SIGKILLed while the job shows that stage at work on it, a replacement node coming up at once. Each run's
tables are checked (one ``assets`` row per file, no duplicate data row, no lease left) and its wall time
compared with the baseline's, run on the same cluster just before.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import ray_nodes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="decode,asr,vlm,commit")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the baseline and of each case")
    ap.add_argument("--json", help="write the matrix as JSON here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="node-loss-"))
    names = ray_nodes.make_corpus(work / "corpus")
    config = ray_nodes.job_config(work / "job.yaml", str(work / "models"))
    nodes = ray_nodes.Nodes()
    nodes.add_spot()
    rows = []
    try:
        for i in range(args.repeat):
            for case in ["none", *args.cases.split(",")]:
                out = work / f"out-{case}-{i}"
                run = ray_nodes.run_job(nodes, work / "corpus", out, config,
                                        kill_during=() if case == "none" else (case,))
                row = {"case": case, "run": i, "exit": run.code, "wall_s": round(run.wall_s, 1), "kills": run.kills}
                try:
                    row.update(ray_nodes.check_tables(out, names))
                except AssertionError as e:
                    row["check"] = str(e)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        nodes.shutdown()
    base = [r["wall_s"] for r in rows if r["case"] == "none"]
    base_s = sum(base) / len(base)
    print(f"\n{'node lost during':18s} {'exit':>4s} {'assets':>6s} {'dup rows':>8s} {'leases':>6s} {'wall s':>7s} {'lost s':>7s}")
    for r in rows:
        print(f"{r['case']:18s} {r['exit']:4d} {r.get('assets', '-'):>6} {r.get('duplicates', '-'):>8} "
              f"{r.get('leases_left', '-'):>6} {r['wall_s']:7.1f} {r['wall_s'] - base_s:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {os.cpu_count()} cores",
            "baseline_wall_s": base_s, "runs": rows}, indent=1))
    return 0 if all(r["exit"] == 0 and "check" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
