"""``corpusflow eval``: measure what the models say.

    corpusflow eval videomme --data DIR --out OUT [--models PROFILE] [--frames 8,32] [--conditions none,subs,asr]
    corpusflow eval kg OUT
    corpusflow eval grounding --truth FILE OUT
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from corpusflow.contracts.config import ConfigError


def _ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give positive integers separated by commas, e.g. 8,32")
    return values


def _conditions(text: str) -> list[str]:
    from corpusflow.flows.evaluate.videomme import CONDITIONS

    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in CONDITIONS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"conditions are {', '.join(CONDITIONS)}; got {text!r}")
    return values


def _videomme(args: argparse.Namespace) -> int:
    from corpusflow.contracts.base import validated
    from corpusflow.contracts.config import StageConfig
    from corpusflow.flows.evaluate import videomme
    from corpusflow.flows.evaluate.output import html_table, write_report, write_tables

    settings = {"models": args.models, "video": {"fps": 30.0, "max_frames": max(args.frames),
                                                 "frame_size": args.frame_size}}
    if args.model_cache:
        settings["model_cache"] = args.model_cache
    try:
        config = validated(StageConfig, settings, "eval config")
    except ConfigError as e:
        print(f"corpusflow eval: {e}", file=sys.stderr)
        return 2
    try:
        rows = videomme.evaluate(args.data, config, args.frames, args.conditions, args.max_videos)
    except (FileNotFoundError, ValueError) as e:
        print(f"corpusflow eval: {e}", file=sys.stderr)
        return 2
    if rows.num_rows == 0:
        print(f"corpusflow eval: no question of {args.data!r} could be asked (videos missing?)", file=sys.stderr)
        return 1
    acc = videomme.accuracy(rows)
    write_tables(args.out, {"eval_videomme": rows, "eval_videomme_accuracy": acc})
    overall = acc.filter([r["task_type"] == "all" for r in acc.to_pylist()])
    report = write_report(args.out, "eval_videomme", f"Video-MME: {config.profile.name}", [
        ("Accuracy by duration (all task types)", videomme.plot(acc)),
        ("Accuracy by condition, frames and duration", html_table(overall)),
        ("Accuracy by task type", html_table(acc)),
    ])
    for r in overall.to_pylist():
        if r["duration"] == "all":
            print(f"{r['condition']:5s} {r['frames']:4d} frames: accuracy {r['accuracy']:.3f} ± {r['se']:.3f} "
                  f"({r['questions']} questions, {r['videos']} videos)")
    print(f"wrote {args.out}/eval_videomme, {args.out}/eval_videomme_accuracy and {report}")
    return 0


def _kg(args: argparse.Namespace) -> int:
    import html

    from corpusflow.flows.evaluate import kg
    from corpusflow.flows.evaluate.output import html_table, write_report, write_tables
    from corpusflow.flows.tables import OutputError

    try:
        rows, graphs = kg.evaluate(args.out)
    except (OSError, OutputError) as e:
        print(f"corpusflow eval: {e}", file=sys.stderr)
        return 2
    if rows.num_rows == 0:
        print(f"corpusflow eval: no video with a summary under {args.out!r}", file=sys.stderr)
        return 1
    write_tables(args.out, {"eval_kg": rows})
    pictures = "".join(f"<h3>{html.escape(r['uri'])}</h3>" + kg.picture(graphs[r["asset_id"]], r["uri"])
                       for r in rows.to_pylist()[:args.pictures])
    report = write_report(args.out, "eval_kg", "Reference-free scores of summaries and keyframes (knowledge graphs)", [
        ("Method", "<p>Our reconstruction of the seed paper's knowledge-graph evaluation (its algorithm text is not "
                   "available to us): each video's transcript is its reference. See flows/evaluate/kg.py.</p>"),
        ("Scores per video", html_table(rows)),
        ("Timeline graphs (green: in the summary, orange: central but missed, red: summary terms never said)",
         pictures),
    ])
    for name in ("coverage", "grounding", "coherence", "temporal_consistency"):
        values = [v for v in rows.column(name).to_pylist() if v is not None]
        mean = f"{sum(values) / len(values):.3f}" if values else "n/a"
        print(f"{name:21s} mean {mean} over {len(values)} of {rows.num_rows} videos")
    print(f"wrote {args.out}/eval_kg and {report}")
    return 0


def _grounding(args: argparse.Namespace) -> int:
    from corpusflow.flows.evaluate import grounding
    from corpusflow.flows.evaluate.output import html_table, write_report, write_tables
    from corpusflow.flows.tables import OutputError

    try:
        truth = grounding.read_rows(args.truth)
        answers = grounding.read_rows(args.answers) if args.answers else []
        rows = grounding.evaluate(args.out, truth, answers, args.delta)
    except (OSError, ValueError, KeyError, OutputError) as e:
        print(f"corpusflow eval: {e}", file=sys.stderr)
        return 2
    write_tables(args.out, {"eval_grounding": rows})
    report = write_report(args.out, "eval_grounding", f"Timestamp grounding (delta {args.delta:g} s)",
                          [("Per input and pooled", html_table(rows))])
    pooled = rows.to_pylist()[-1]

    def show(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(f"keyframe Hit@{args.delta:g}s {show(pooled['hit'])} (precision {show(pooled['keyframe_precision'])}, "
          f"{pooled['events']} events); chapter boundary F1 {show(pooled['boundary_f1'])} "
          f"({pooled['boundaries']} boundaries); R1@0.3/0.5/0.7 {show(pooled['r1_at_0_3'])}/"
          f"{show(pooled['r1_at_0_5'])}/{show(pooled['r1_at_0_7'])}, mIoU {show(pooled['miou'])} "
          f"({pooled['windows']} windows)")
    print(f"wrote {args.out}/eval_grounding and {report}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="corpusflow eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    vm = sub.add_parser("videomme", help="multiple-choice accuracy on a local or s3:// copy of Video-MME")
    vm.add_argument("--data", required=True, help="folder or s3:// prefix: question Parquet, videos, SRT subtitles")
    vm.add_argument("--out", required=True, help="where the result tables and eval_videomme.html go")
    vm.add_argument("--models", default="tiny-random", help="models profile (built-in name or YAML)")
    vm.add_argument("--frames", type=_ints, default=[8, 32], help="frame budgets, e.g. 8,32 (default)")
    vm.add_argument("--conditions", type=_conditions, default=["none", "subs", "asr"],
                    help="none, subs (official subtitles), asr (our transcript); default all three")
    vm.add_argument("--frame-size", type=int, default=448, help="frames fit a square of this side (multiple of 28)")
    vm.add_argument("--max-videos", type=int, help="only the first N videos (by videoID), for a quick look")
    vm.add_argument("--model-cache", help="folder for generated and synced models")
    vm.set_defaults(func=_videomme)
    kgp = sub.add_parser("kg", help="reference-free knowledge-graph scores of each video's summary and keyframes")
    kgp.add_argument("out", help="a job's OUT (local folder or s3://): reads its tables, writes eval_kg beside them")
    kgp.add_argument("--pictures", type=int, default=50, help="draw the graphs of the first N videos (default 50)")
    kgp.set_defaults(func=_kg)
    gr = sub.add_parser("grounding", help="keyframe Hit@delta, chapter boundary F1, R1@IoU/mIoU against known events")
    gr.add_argument("out", help="a job's OUT (local folder or s3://): reads its tables, writes eval_grounding")
    gr.add_argument("--truth", required=True, help="CSV/JSONL/Parquet: uri, kind (event|boundary|window), t_start, "
                                                  "t_end, query")
    gr.add_argument("--answers", help="CSV/JSONL/Parquet of answered windows: uri, query, t_start, t_end")
    gr.add_argument("--delta", type=float, default=2.0, help="seconds a keyframe or boundary may be off (default 2)")
    gr.set_defaults(func=_grounding)
    args = parser.parse_args(argv)
    return args.func(args)

