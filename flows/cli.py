"""``corpusflow`` command line: run a corpus job, compact its tables, serve the API, plan a cluster, rehearse it
locally, report on a job, evaluate what the models say."""
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
    from corpusflow.contracts import storage
    from corpusflow.flows.job import run_job

    try:
        if not storage.exists(config.corpus):
            print(f"corpusflow: corpus {config.corpus!r} does not exist", file=sys.stderr)
            return 2
    except OSError as e:
        print(f"corpusflow: cannot read corpus {config.corpus!r}: {e}", file=sys.stderr)
        return 2
    from corpusflow.flows.capacity import InfeasibleError

    try:
        summary = run_job(config, address=args.address, retry_errors=args.retry_errors)
    except InfeasibleError as e:
        print(f"corpusflow: {e}", file=sys.stderr)
        return 2
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = {"serve": "corpusflow.serve_apps.run_local", "plan": "corpusflow.flows.plan", "report": "corpusflow.flows.report",
                 "eval": "corpusflow.flows.evaluate.cli",
                 "index": "corpusflow.flows.index_cli", "search": "corpusflow.flows.search_cli",
                 "rehearse": "corpusflow.flows.rehearse"}
    if argv and argv[0] in delegated:
        return _delegate(delegated[argv[0]], argv[1:])
    parser = argparse.ArgumentParser(prog="corpusflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{run,compact,serve,plan,report,eval,index,search,rehearse}")
    run = sub.add_parser("run", help="turn a corpus (folder or s3://) into Parquet tables")
    run.add_argument("corpus", help="local folder or s3://bucket/prefix")
    run.add_argument("--out", required=True, help="local folder or s3://bucket/prefix for the tables")
    run.add_argument("--config", help="job config YAML (see docs/config.md)")
    run.add_argument("--models", help="models profile: tiny-random, small-real, qwen2.5-vl-7b, or a profile YAML")
    run.add_argument("--fps", type=float, help="video frames sampled per second (default 0.1)")
    run.add_argument("--plan", help="size the actor pools from a plan written by `corpusflow plan --json PATH`")
    run.add_argument("--option", default="mixed", help="which option of the plan to use (default: mixed)")
    run.add_argument("--address", help="Ray cluster address; without it a local Ray is started")
    run.add_argument("--retry-errors", action="store_true",
                     help="process again the inputs whose last failure was transient (throttling, timeouts, GPU memory)")
    run.add_argument("--no-index", action="store_true",
                     help="do not build/update OUT's search index at the end (also: index.enabled: false)")
    run.set_defaults(func=_run)
    comp = sub.add_parser("compact", help="merge OUT's small files, drop rows no asset points at, vacuum old versions")
    comp.add_argument("out", help="the job's OUT (local folder or s3://bucket/prefix)")
    comp.add_argument("--retain-hours", type=float, default=168.0,
                      help="keep versions this young readable by time travel (default: 168, one week)")
    comp.set_defaults(func=_compact)
    helps = {"rehearse": "run a job on a cluster.yaml's node types, started on this machine by Ray's autoscaler"}
    for name in delegated:
        sub.add_parser(name, help=helps.get(name, f"see `corpusflow {name} --help`"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
