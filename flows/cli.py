"""``corpusflow`` command line: run a corpus job, compact its tables, serve the API, plan a cluster, rehearse it
locally, report on a job, evaluate what the models say, search a job's index, list every config option."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from corpusflow.contracts.config import ConfigError, JobConfig


def _run(args: argparse.Namespace) -> int:
    try:
        config = JobConfig.build(args.config, corpus=args.corpus, out=args.out, models=args.models,
                                 **{"video.fps": args.fps})
        if args.plan:
            from corpusflow.flows.plan import load_plan, resources_from_plan

            option = load_plan(args.plan).option(args.option)
            config = config.model_copy(update={"resources": resources_from_plan(option, config.resources)})
    except ConfigError as e:
        print(f"corpusflow: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError) as e:
        print(f"corpusflow: cannot use plan {args.plan!r}: {e}", file=sys.stderr)
        return 2
    notice = config.profile.random_notice()
    if notice:
        print(f"corpusflow: {notice}", file=sys.stderr)
    from corpusflow.contracts import storage
    from corpusflow.flows.job import NodesLost, run_job

    try:
        if not storage.exists(config.corpus):
            print(f"corpusflow: corpus {config.corpus!r} does not exist", file=sys.stderr)
            return 2
    except OSError as e:
        print(f"corpusflow: cannot read corpus {config.corpus!r}: {e}", file=sys.stderr)
        return 2
    from corpusflow.contracts.capacity import InfeasibleError

    try:
        summary = run_job(config, address=args.address, retry_errors=args.retry_errors, verbose=args.verbose,
                          progress_every_s=args.progress_every)
    except InfeasibleError as e:
        print(f"corpusflow: {e}", file=sys.stderr)
        return 2
    except NodesLost as e:
        print(f"corpusflow: {e}", file=sys.stderr)
        return 3
    print(summary.to_text())
    if config.index.enabled and not args.no_index:
        from corpusflow.actors.search.store import SearchIndexError
        from corpusflow.flows.index import build_index

        try:
            print(build_index(config.out, config, config.index, address=args.address).to_text())
        except SearchIndexError as e:  # the tables are committed; only the index waits for its writer
            print(f"corpusflow: search index not updated: {e}", file=sys.stderr)
    return 0


def _compact(args: argparse.Namespace) -> int:
    from corpusflow.flows.tables import OutputError, compact

    try:
        report = compact(args.out, retain_hours=args.retain_hours)
    except OutputError as e:
        print(f"corpusflow: {e}", file=sys.stderr)
        return 2
    for table, figures in report.items():
        print(f"{table:10s} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items()))
    return 0


def _delegate(module: str, argv: Sequence[str]) -> int:
    import importlib

    return importlib.import_module(module).main(list(argv))


# Subcommands whose parsers live in their own modules (imported only when run: `--help` stays fast),
# with the one line `corpusflow --help` shows for each.
DELEGATED = {
    "serve": ("corpusflow.serve_apps.run_local", "run the online API (Ray Serve) on this machine or a cluster"),
    "plan": ("corpusflow.flows.plan", "predict a job's wall time and cost on A10G, H100 and mixed clusters"),
    "report": ("corpusflow.flows.report", "what a job did, how fast and what it cost: one HTML file and JSON"),
    "eval": ("corpusflow.flows.evaluate.cli", "measure what the models say: Video-MME, knowledge graphs, grounding"),
    "index": ("corpusflow.flows.index_cli", "build or update OUT's search index from its committed tables"),
    "search": ("corpusflow.flows.search_cli", "ranked moments and pages from OUT's search index"),
    "rehearse": ("corpusflow.flows.rehearse",
                 "run a job on a cluster.yaml's node types, started on this machine by Ray's autoscaler"),
    "config-reference": ("corpusflow.flows.config_reference",
                         "print every option of the job, models profile, serve and placement configs (Markdown)"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(DELEGATED[argv[0]][0], argv[1:])
    parser = argparse.ArgumentParser(prog="corpusflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,compact," + ",".join(DELEGATED) + "}")
    run = sub.add_parser("run", help="turn a corpus (folder or s3://) into Parquet tables")
    run.add_argument("corpus", help="local folder or s3://bucket/prefix")
    run.add_argument("--out", required=True, help="local folder or s3://bucket/prefix for the tables")
    run.add_argument("--config", help="job config YAML: every option is in docs/config.md "
                     "(or `corpusflow config-reference`)")
    run.add_argument("--models", help="models profile: small-real (default: real speech and search, offline on a CPU), "
                     "qwen2.5-vl-7b (GPU), tiny-random (random weights, for tests), or a profile YAML")
    run.add_argument("--fps", type=float, help="video frames sampled per second (default 0.1)")
    run.add_argument("--plan", help="size the actor pools from a plan written by `corpusflow plan --json PATH`")
    run.add_argument("--option", default="mixed", help="which option of the plan to use (default: mixed)")
    run.add_argument("--address", help="Ray cluster address; without it a local Ray is started")
    run.add_argument("--retry-errors", action="store_true",
                     help="process again the inputs whose last failure was transient (throttling, timeouts, GPU memory)")
    run.add_argument("--no-index", action="store_true",
                     help="do not build/update OUT's search index at the end (also: index.enabled: false)")
    run.add_argument("--verbose", action="store_true",
                     help="a line per committed file, and Ray's own INFO messages")
    run.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                     help="when stderr is not a terminal (CI, `ray job logs`): seconds between progress lines "
                     "(default 30); on a terminal the progress display is redrawn in place")
    run.set_defaults(func=_run)
    comp = sub.add_parser("compact", help="merge OUT's small files, drop rows no asset points at, vacuum old versions")
    comp.add_argument("out", help="the job's OUT (local folder or s3://bucket/prefix)")
    comp.add_argument("--retain-hours", type=float, default=168.0,
                      help="keep versions this young readable by time travel (default: 168, one week)")
    comp.set_defaults(func=_compact)
    for name, (_, line) in DELEGATED.items():
        sub.add_parser(name, help=line)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
