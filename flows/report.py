"""``corpusflow report OUT``: what a job did, how fast, and what it cost — one HTML file and a JSON summary.

Everything comes from the committed ``assets/`` and ``metrics/`` tables, so a report can be made for any
output location (local or S3) long after the job; the plots are inline SVG, so the HTML travels alone.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402

from corpusflow.contracts import storage  # noqa: E402
from corpusflow.contracts.registry import BY_NAME  # noqa: E402
from corpusflow.contracts.config import RANDOM_SOURCE  # noqa: E402
from corpusflow.flows.tables import exists, read_table  # noqa: E402

_COLORS = {"cpu": "#8c8c8c", "A10G": "#2b8cbe", "H100": "#e6550d", "H200": "#a63603", "A100": "#31a354",
           "L4": "#756bb1"}


# ------------------------------------------------------------------------------------------------ summary

def random_summaries(out: str) -> int:
    """How many of OUT's summaries a tiny-random VLM wrote (noise: ``summaries.model`` names the model)."""
    if not exists(out, "summaries"):
        return 0
    return sum(m == RANDOM_SOURCE for m in read_table(out, "summaries", ["model"])["model"].to_pylist())


def random_notice(summary: dict[str, Any]) -> Optional[str]:
    n = summary.get("random_summaries") or 0
    return (f"{n} summaries come from a tiny-random VLM (summaries.model = tiny-random): they are noise; run with "
            "a real VLM profile (qwen2.5-vl-7b) for real ones") if n else None


def summarize(assets: pa.Table, metrics: pa.Table) -> dict[str, Any]:
    """The figures dashboards want: counts, media, time and cost per stage/accelerator/kind, failures."""
    a = assets.to_pylist()
    m = metrics.to_pylist()
    hours = defaultdict(float)
    pages = 0
    for r in a:
        if r["kind"] in ("video", "audio") and r["duration_s"]:
            hours[r["kind"]] += r["duration_s"] / 3600
        pages += r["pages"] or 0
    by = lambda key: _sum_by(m, key)  # noqa: E731
    cost_kind = by(lambda r: r["kind"])
    cost_total = sum(r["cost_usd"] for r in m)
    committed = sorted(r["committed_at"] for r in a)
    span_s = (committed[-1] - committed[0]).total_seconds() if len(committed) > 1 else 0.0
    per_kind_acc = _sum_by(m, lambda r: (r["kind"], r["accelerator"]))
    usd_per_media_hour = {f"{k}/{acc}": v["cost_usd"] / hours[k]
                          for (k, acc), v in per_kind_acc.items() if k in ("video", "audio") and hours[k] > 0}
    failures = defaultdict(int)
    for r in a:
        if r["status"] == "error":
            failures[(r["error_stage"] or "?", r["error"] or "?")] += 1
    return {
        "job_ids": sorted({r["job_id"] for r in a} | {r["job_id"] for r in m}),
        "assets": len(a),
        "status": dict(sorted(_count(a, "status").items())),
        "kinds": dict(sorted(_count(a, "kind").items())),
        "video_hours": hours["video"], "audio_hours": hours["audio"], "pages": pages,
        "first_commit": committed[0].isoformat() if committed else None,
        "last_commit": committed[-1].isoformat() if committed else None,
        "commit_span_s": span_s,
        "assets_per_hour": len(a) / span_s * 3600 if span_s else None,
        "cost_usd": cost_total,
        "cost_per_asset_usd": cost_total / len(a) if a else None,
        "usd_per_video_hour": _per(cost_kind, "video", hours["video"]),
        "usd_per_audio_hour": _per(cost_kind, "audio", hours["audio"]),
        "usd_per_page": _per(cost_kind, "pdf", pages),
        "usd_per_media_hour_by_kind_accelerator": usd_per_media_hour,
        "stages": {s: v for s, v in sorted(by(lambda r: r["stage"]).items(), key=lambda kv: _stage_order(kv[0]))},
        "accelerators": dict(sorted(by(lambda r: r["accelerator"]).items())),
        "failures": [{"stage": s, "reason": e, "assets": n}
                     for (s, e), n in sorted(failures.items(), key=lambda kv: -kv[1])],
    }


def _per(cost_by_kind: dict[str, dict[str, float]], kind: str, amount: float) -> Optional[float]:
    """US$ spent on assets of ``kind`` per unit of their media (hours, pages); None without any."""
    return cost_by_kind.get(kind, {}).get("cost_usd", 0.0) / amount if amount else None


def _count(rows: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r[key]] += 1
    return out


def _sum_by(rows: list[dict], key) -> dict[Any, dict[str, float]]:
    out: dict[Any, dict[str, float]] = {}
    for r in rows:
        agg = out.setdefault(key(r), {"rows": 0, "wall_s": 0.0, "device_s": 0.0, "cost_usd": 0.0})
        agg["rows"] += 1
        agg["wall_s"] += r["wall_s"]
        agg["device_s"] += r["device_s"]
        agg["cost_usd"] += r["cost_usd"]
    return out


def _stage_order(stage: str) -> int:
    order = list(BY_NAME)  # the registry lists stages in pipeline order
    return order.index(stage) if stage in order else len(order)


# ------------------------------------------------------------------------------------------------ plots

def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="#888")
    ax.set_xticks([])
    ax.set_yticks([])


def _time_unit(seconds: float) -> tuple[str, float]:
    """A unit that keeps a span's numbers readable: seconds, minutes or hours."""
    return ("s", 1.0) if seconds < 120 else ("min", 60.0) if seconds < 2 * 3600 else ("h", 3600.0)


def plot_throughput(assets: pa.Table) -> str:
    """Assets committed per time bin and in total, over the job's time."""
    fig, ax = plt.subplots(figsize=(9, 3.4))
    times = sorted(assets.column("committed_at").to_pylist())
    if not times:
        _empty(ax, "committed assets")
        return _svg(fig)
    t0 = times[0]
    unit, scale = _time_unit((times[-1] - t0).total_seconds())
    xs = [(t - t0).total_seconds() / scale for t in times]
    span = max(xs[-1], 1.0)
    bins = max(1, min(60, len(times)))
    ax.hist(xs, bins=bins, range=(0, span), color="#9ecae1")
    ax.set_xlim(-0.02 * span, span * 1.02)
    ax.set_xlabel(f"{unit} since first commit ({t0:%Y-%m-%d %H:%M:%S} UTC)")
    ax.set_ylabel("assets committed per bin")
    ax2 = ax.twinx()
    ax2.step([*xs, span], [*range(1, len(xs) + 1), len(xs)], where="post", color="#08519c", lw=2)
    ax2.set_ylabel("total assets committed")
    ax2.set_ylim(0, len(xs) * 1.05)
    ax.set_title("Throughput over time")
    return _svg(fig)


def plot_stages(summary: dict[str, Any]) -> str:
    """Device time and cost per stage, side by side."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    stages = list(summary["stages"])
    if not stages:
        _empty(ax1, "metrics")
        _empty(ax2, "metrics")
        return _svg(fig)
    unit, scale = _time_unit(max(v["device_s"] for v in summary["stages"].values()))
    dev = [summary["stages"][s]["device_s"] / scale for s in stages]
    cost = [summary["stages"][s]["cost_usd"] for s in stages]
    ax1.bar(stages, dev, color="#6baed6")
    ax1.set_ylabel(f"device time ({unit})")
    ax1.set_title("Time per stage")
    ax2.bar(stages, cost, color="#fd8d3c")
    ax2.set_ylabel("US$")
    ax2.set_title("Cost per stage")
    for ax, vals, fmt in ((ax1, dev, "{:.3g} " + unit), (ax2, cost, "${:.3g}")):
        for i, v in enumerate(vals):
            ax.annotate(fmt.format(v), (i, v), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return _svg(fig)


def plot_usd_per_media_hour(summary: dict[str, Any]) -> str:
    """$ per hour of media, one group per kind, one bar per accelerator type."""
    fig, ax = plt.subplots(figsize=(9, 3.4))
    data = summary["usd_per_media_hour_by_kind_accelerator"]
    if not data:
        _empty(ax, "video or audio hours")
        return _svg(fig)
    kinds = sorted({k.split("/")[0] for k in data})
    accs = sorted({k.split("/")[1] for k in data})
    width = 0.8 / len(accs)
    for j, acc in enumerate(accs):
        xs = [i + (j - (len(accs) - 1) / 2) * width for i in range(len(kinds))]
        vals = [data.get(f"{k}/{acc}", 0.0) for k in kinds]
        bars = ax.bar(xs, vals, width, label=acc, color=_COLORS.get(acc, None))
        ax.bar_label(bars, labels=[f"${v:.3g}" if v else "" for v in vals], fontsize=8)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("US$ per media hour")
    ax.set_title("$ per media-hour by kind and accelerator type")
    ax.legend(title="accelerator")
    return _svg(fig)


def plot_failures(summary: dict[str, Any]) -> str:
    """Failed assets by stage and reason, most frequent first."""
    rows = summary["failures"][:12]
    fig, ax = plt.subplots(figsize=(9, max(2.2, 0.45 * len(rows) + 1.2)))
    if not rows:
        _empty(ax, "failures")
        ax.set_title("Failures by reason")
        return _svg(fig)
    labels = [f"{r['stage']}: {_shorten(r['reason'], 70)}" for r in rows][::-1]
    counts = [r["assets"] for r in rows][::-1]
    bars = ax.barh(labels, counts, color="#de2d26")
    ax.bar_label(bars, fontsize=8, padding=3)
    ax.set_xlim(0, max(counts) * 1.1)
    ax.set_xlabel("assets")
    ax.set_title("Failures by reason")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _svg(fig)


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ------------------------------------------------------------------------------------------------ HTML

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px}.sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:8px 14px}.kpi b{display:block;font-size:20px}
.kpi span{color:#666;font-size:12px}svg{max-width:100%;height:auto}"""


def money(v: Optional[float]) -> str:
    """US$ readable at any scale: cents for dollars, four decimals for cents, else scientific."""
    if v is None:
        return "–"
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}" if v >= 0.001 else f"${v:.2e}"


def render_html(summary: dict[str, Any], assets: pa.Table, out: str) -> str:
    kpis = [("assets", f"{summary['assets']:,}"),
            ("ok / error / skipped", " / ".join(str(summary["status"].get(s, 0)) for s in ("ok", "error", "skipped"))),
            ("video · audio hours", f"{summary['video_hours']:.2f} · {summary['audio_hours']:.2f}"),
            ("pages", f"{summary['pages']:,}"), ("total cost", money(summary["cost_usd"])),
            ("$ / video-hour", money(summary["usd_per_video_hour"])),
            ("$ / audio-hour", money(summary["usd_per_audio_hour"])),
            ("$ / 1,000 pages", money(summary["usd_per_page"] and summary["usd_per_page"] * 1000)),
            ("$ / asset", money(summary["cost_per_asset_usd"]))]
    kpi_html = "".join(f'<div class="kpi"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>' for k, v in kpis)
    notice = random_notice(summary)
    notice_html = f'<p class="sub"><b>Note:</b> {html.escape(notice)}</p>' if notice else ""
    stage_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{v['rows']}</td><td>{v['wall_s']:.1f}</td><td>{v['device_s']:.1f}</td>"
        f"<td>{money(v['cost_usd'])}</td></tr>" for s, v in summary["stages"].items())
    jobs = ", ".join(summary["job_ids"]) or "–"
    span = " → ".join(t[:19].replace("T", " ") + " UTC"
                      for t in (summary["first_commit"], summary["last_commit"]) if t)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>corpusflow report — {html.escape(out)}</title>
<style>{_CSS}</style></head><body>
<h1>corpusflow report</h1>
<div class="sub">{html.escape(out)} · jobs {html.escape(jobs)} · commits {html.escape(span)}</div>
{notice_html}<div class="kpis">{kpi_html}</div>
<h2>Throughput over time</h2>{plot_throughput(assets)}
<h2>Time and cost per stage</h2>{plot_stages(summary)}
<table><tr><th>stage</th><th>rows</th><th>wall s</th><th>device s</th><th>cost</th></tr>{stage_rows}</table>
<h2>$ per media-hour by kind and GPU type</h2>{plot_usd_per_media_hour(summary)}
<h2>Failures by reason</h2>{plot_failures(summary)}
</body></html>
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="corpusflow report", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the job's output location (local folder or s3://bucket/prefix)")
    ap.add_argument("--html", help="HTML file to write (default: OUT/report.html for a local OUT)")
    ap.add_argument("--json", help="JSON summary to write (default: beside the HTML, report.json)")
    args = ap.parse_args(argv)
    try:
        assets, metrics = read_table(args.out, "assets"), read_table(args.out, "metrics")
    except (OSError, ValueError) as e:
        print(f"corpusflow report: {e}", file=sys.stderr)
        return 2
    if assets.num_rows == 0 and metrics.num_rows == 0:
        print(f"corpusflow report: no committed assets or metrics under {args.out!r}", file=sys.stderr)
        return 1
    if not args.html and storage.is_s3(args.out):
        print("corpusflow report: OUT is on S3; name a local --html path", file=sys.stderr)
        return 2
    html_path = Path(args.html or Path(args.out) / "report.html")
    json_path = Path(args.json or html_path.with_suffix(".json"))
    summary = summarize(assets, metrics)
    summary["random_summaries"] = random_summaries(args.out)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(summary, assets, args.out), encoding="utf-8")
    json_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"{summary['assets']} assets, {money(summary['cost_usd'])}: wrote {html_path} and {json_path}")
    if random_notice(summary):
        print(f"corpusflow report: {random_notice(summary)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
