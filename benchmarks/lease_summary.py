"""The table printed last by benchmarks/gpu_lease.sh: every figure of issue 23 from one lease's results folder.

``python benchmarks/lease_summary.py RES`` (RES holds gpu_throughput.json and product_run.json).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def operator_cpu_s(stats: str) -> dict[str, float]:
    """Remote CPU seconds per operator from Ray Data's stats text (``Operator N NAME: ...`` blocks)."""
    out: dict[str, float] = {}
    name = None
    for line in stats.splitlines():
        head = re.match(r"\s*Operator \d+ (.+?):", line)
        if head:
            name = head.group(1)
            continue
        cpu = re.search(r"Remote cpu time: .*, ([\d.]+)(us|ms|s) total", line)
        if name and cpu:
            out[name] = out.get(name, 0.0) + float(cpu.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[cpu.group(2)]
    return out


def decode_cpu_per_video_h(fig: dict) -> dict[str, float]:
    """CPU-s per video-hour of the CPU stages as the pipeline ran them (identify, decode, frames)."""
    hours = fig.get("videos_h") or 0
    cpu = operator_cpu_s(str(fig.get("ray_data_stats", "")))
    picked = {k: v for k, v in cpu.items() if re.search(r"Identify|DecodeMedia|SampleFrames|decode|frames", k)}
    if not hours or not picked:
        return {}
    return {**{k: round(v / hours, 1) for k, v in picked.items()}, "total": round(sum(picked.values()) / hours, 1)}


def main(res: str) -> int:
    root = Path(res)
    bench = json.loads((root / "gpu_throughput.json").read_text()) if (root / "gpu_throughput.json").exists() else {}
    product = json.loads((root / "product_run.json").read_text()) if (root / "product_run.json").exists() else {}
    m = bench.get("machine", {})
    print(f"machine: {m.get('gpu')} ({m.get('gpu_mem_gib')} GiB, driver {m.get('driver')}), {m.get('host_cpus')} cores, "
          f"vllm {m.get('vllm')}, ray {m.get('ray')}, torch {m.get('torch')}, {m.get('date_utc')} UTC")
    print(f"bf16 matmul peak: {bench.get('bf16_matmul_peak_tflops')} TFLOP/s; corpus: {bench.get('timings', {})}")
    cols = ("video_h_per_gpu_h", "video_h_per_gpu_h_with_startup", "startup_s", "after_startup_s", "gpu_s",
            "floor_gpu_s", "floor_efficiency_pct", "gpu_busy_after_startup_pct", "prefill_mfu_pct",
            "prompt_tokens_per_s", "asr_realtime_factor")
    print("run".ljust(18) + "".join(c[:16].rjust(17) for c in cols))
    rows = dict(bench.get("contenders", {}))
    if product:
        rows["corpusflow run"] = product
    for name, fig in rows.items():
        if "skipped" in fig:
            print(name.ljust(18) + "  skipped: " + fig["skipped"])
            continue
        print(name.ljust(18) + "".join(str(fig.get(c)).rjust(17) for c in cols))
    for name, fig in bench.get("contenders", {}).items():
        if "pflop" in fig:
            print(f"{name} PFLOP: {fig['pflop']}")
        if fig.get("vlm_row_starts_s"):
            print(f"{name} first requests into the engine, s after ready: {fig['vlm_row_starts_s'][:8]}")
        dec = decode_cpu_per_video_h(fig)
        if dec:
            print(f"{name} CPU-s per video-hour as the pipeline ran: {dec}")
    if product:
        print(f"corpusflow run: exit {product.get('returncode')}, statuses {product.get('statuses')}, "
              f"ratio to the bench's video-h per GPU-h {product.get('ratio_to_bench')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
