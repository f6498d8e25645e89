"""``corpusflow plan``: how long a corpus job takes and what it costs, on each GPU type and mixed.

From a fast listing and metadata probe of the corpus (hours of video and audio, pages) and a throughput
profile (work per second of one actor of each stage on each accelerator type), it sizes actor pools per
stage and GPU type so that the stages keep pace with each other, then predicts wall time and cost for
the A10G-only, H100-only and mixed shapes of the cluster. ``corpusflow run`` sizes its pools from a
plan through :func:`resources_from_plan`.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import av
import pyarrow as pa
import pyarrow.compute as pc

from corpusflow.contracts import storage
from corpusflow.contracts.base import read_mapping
from corpusflow.contracts.config import Resources
from corpusflow.contracts.registry import StageResources
from corpusflow.contracts.stage import StageFailure
from corpusflow.contracts.cost import DEFAULT_USD_PER_HOUR, cost_usd, usd_per_hour
from corpusflow.contracts.placement import (DEFAULT_PLACEMENT, DEFAULT_PROFILE_PATH, INSTANCE_USD_PER_HOUR, STAGES, UNITS,
                                 Cluster, CorpusStats, NodeType, Placement, Plan, PlanOption, Pool, StageForecast,
                                 Target, ThroughputProfile)
from corpusflow.actors.decode import declared_duration, media_kind, open_media
from corpusflow.actors.identify import HEAD, kind_by_name, sniff
from corpusflow.actors.pdf import open_pdf
from corpusflow.flows.report import money, read_table

# ----------------------------------------------------------------------------------------------- corpus probe

@dataclass
class _Probe:
    kind: str  # video|audio|pdf|other
    size: int
    seconds: Optional[float] = None
    pages: Optional[int] = None


def _probe_file(uri: str, size: int) -> _Probe:
    """Kind, duration and pages as the job's own stages see them: identify's sniffing of the leading
    bytes, decode's reading of the container header, the PDF stage's opening of the document."""
    with storage.open_input(uri) as fh:
        found = sniff(fh.read(HEAD))
    if found is None:
        return _Probe("other", size)
    if found[0] == "pdf":
        with storage.open_input(uri) as fh:
            data = fh.read()
        try:
            with open_pdf(data) as doc:
                return _Probe("pdf", size, pages=doc.page_count)
        except StageFailure:
            return _Probe("other", size)
    try:
        with open_media(uri) as container:
            kind = media_kind(container, "other")
            return _Probe(kind, size, seconds=declared_duration(container) if kind != "other" else None)
    except (av.FFmpegError, OSError):
        return _Probe("other", size)


def probe_corpus(uri: str, sample: int = 200, timeout_s: float = 10.0, workers: int = 8) -> CorpusStats:
    """Corpus statistics from a listing plus the metadata of at most ``sample`` files per kind.

    Files beyond the sample (and files whose probe took longer than ``timeout_s``) keep the kind their
    extension gives; their duration or page count is extrapolated from the probed files' per-byte figures.
    """
    entries = storage.list_files(uri)
    by_kind: dict[str, list[storage.FileEntry]] = {}
    for e in entries:
        by_kind.setdefault(kind_by_name(e.uri) or "unknown", []).append(e)
    chosen = [e for k, es in by_kind.items() for e in (es if k == "unknown" else _spread(es, sample))]
    probes: dict[str, _Probe] = {}
    pool = cf.ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(_probe_file, e.uri, e.size): e for e in chosen}
    deadline = time.monotonic() + timeout_s * (math.ceil(len(chosen) / workers) + 1)
    done, _ = cf.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    pool.shutdown(wait=False, cancel_futures=True)
    unreadable = 0
    for f in done:
        if f.exception() is None:
            probes[futures[f].uri] = f.result()
        else:
            unreadable += 1
    for e in entries:
        if e.uri not in probes:
            probes[e.uri] = _Probe(kind_by_name(e.uri) or "other", e.size)
    return _stats(list(probes.values()), probed=len(done) - unreadable, unreadable=unreadable)


def _spread(entries: list[storage.FileEntry], n: int) -> list[storage.FileEntry]:
    """At most ``n`` entries spread evenly over the sorted listing (a deterministic sample)."""
    if len(entries) <= n:
        return entries
    step = len(entries) / n
    return [entries[int(i * step)] for i in range(n)]


def _stats(probes: list[_Probe], probed: int, unreadable: int) -> CorpusStats:
    def per_byte(kind: str, attr: str) -> float:
        known = [p for p in probes if p.kind == kind and getattr(p, attr) is not None]
        size = sum(p.size for p in known)
        return sum(getattr(p, attr) for p in known) / size if size else 0.0

    rate = {"video": per_byte("video", "seconds"), "audio": per_byte("audio", "seconds"),
            "pdf": per_byte("pdf", "pages")}
    seconds = {k: [p.seconds if p.seconds is not None else p.size * rate[k] for p in probes if p.kind == k]
               for k in ("video", "audio")}
    pages = [p.pages if p.pages is not None else max(1, round(p.size * rate["pdf"])) for p in probes if p.kind == "pdf"]
    return CorpusStats(
        files=len(probes), bytes=sum(p.size for p in probes),
        video_files=len(seconds["video"]), audio_files=len(seconds["audio"]), pdf_files=len(pages),
        other_files=sum(p.kind == "other" for p in probes),
        video_s=sum(seconds["video"]), audio_s=sum(seconds["audio"]), pages=sum(pages),
        max_video_s=max(seconds["video"], default=0.0), max_audio_s=max(seconds["audio"], default=0.0),
        max_pages=max(pages, default=0), probed=probed, unreadable=unreadable)


# ------------------------------------------------------------------------------------------------ cluster.yaml

def load_cluster(path: str) -> Cluster:
    """The node types of a Ray cluster-launcher YAML, with their accelerator type and hourly price.

    A node type's GPU type is its ``accelerator_type:<X>`` resource (what Ray schedules
    ``accelerator_type=X`` actors on).
    """
    cfg = read_mapping(path, "cluster config")
    head = cfg.get("head_node_type")
    types = []
    for name, nt in cfg["available_node_types"].items():
        res = nt.get("resources", {})
        accs = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        acc = accs[0] if accs else "cpu"
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        instance = str(nt.get("node_config", {}).get("InstanceType", name))
        price = INSTANCE_USD_PER_HOUR.get(instance)
        if price is None:
            price = gpus * usd_per_hour(acc, DEFAULT_USD_PER_HOUR) if gpus else cpus * DEFAULT_USD_PER_HOUR["cpu"]
        types.append(NodeType(name=name, instance_type=instance, accelerator=acc, cpus=cpus, gpus=gpus,
                              min_workers=nt.get("min_workers", 0), max_workers=nt.get("max_workers", 0),
                              usd_per_hour=price, head=name == head))
    return Cluster(name=cfg["cluster_name"], max_workers=cfg.get("max_workers", sum(t.max_workers for t in types)),
                   node_types=types)


# ------------------------------------------------------------------------------------------------ sizing

@dataclass
class _Work:
    units: float
    items: int
    longest: float  # units in the largest single asset: an asset is never split across actors


def stage_work(stats: CorpusStats) -> dict[str, _Work]:
    media = stats.video_files + stats.audio_files
    return {
        "identify": _Work(stats.files, stats.files, 1),
        "decode": _Work(stats.video_s + stats.audio_s, media, max(stats.max_video_s, stats.max_audio_s)),
        "asr": _Work(stats.video_s + stats.audio_s, media, max(stats.max_video_s, stats.max_audio_s)),
        "frames": _Work(stats.video_s, stats.video_files, stats.max_video_s),
        "vlm": _Work(stats.video_s, stats.video_files, stats.max_video_s),
        "pdf": _Work(stats.pages, stats.pdf_files, stats.max_pages),
        "commit": _Work(stats.files, stats.files, 1),
    }


@dataclass
class _Node:
    type: NodeType
    cpus: float
    gpus: float


@dataclass
class _Packer:
    """Opens nodes lazily and places actors on them first-fit, within the cluster's worker bounds."""

    types: list[NodeType]
    max_workers: int
    cpus_per_gpu: dict[str, float]  # cores a GPU actor takes per GPU: kept free for GPUs not yet placed
    nodes: list[_Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        for t in self.types:
            for _ in range(1 if t.head else t.min_workers):
                self.nodes.append(_Node(t, t.cpus, t.gpus))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.type.name] = out.get(n.type.name, 0) + 1
        return out

    def place(self, accelerator: str, t: Target) -> bool:
        gpu = accelerator != "cpu"
        fits = [n for n in self.nodes if self._cpus_for(n, gpu) >= t.num_cpus - 1e-9 and n.gpus >= t.num_gpus - 1e-9
                and (n.type.accelerator == accelerator if gpu else True)]
        fits.sort(key=lambda n: n.type.accelerator != "cpu")  # CPU work fills CPU nodes before GPU nodes' spares
        if not fits:
            new = self._open(accelerator, t)
            if new is None:
                return False
            fits = [new]
        node = fits[0]
        node.cpus -= t.num_cpus
        node.gpus -= t.num_gpus
        return True

    def _cpus_for(self, node: _Node, gpu_actor: bool) -> float:
        """Cores free for the actor; CPU-only work leaves a GPU node the cores its free GPUs will need."""
        if gpu_actor:
            return node.cpus
        return node.cpus - node.gpus * self.cpus_per_gpu.get(node.type.accelerator, 0.0)

    def _open(self, accelerator: str, t: Target) -> Optional[_Node]:
        workers = sum(not n.type.head for n in self.nodes)
        if workers >= self.max_workers:
            return None
        held = self.counts()
        candidates = [nt for nt in self.types if not nt.head and held.get(nt.name, 0) < nt.max_workers
                      and nt.cpus >= t.num_cpus and nt.gpus >= t.num_gpus]
        if accelerator != "cpu":
            candidates = [nt for nt in candidates if nt.accelerator == accelerator]
        # CPU work opens a CPU node when the cluster has one, else the cheapest node of the option.
        candidates.sort(key=lambda nt: (nt.accelerator != accelerator, nt.usd_per_hour))
        if not candidates:
            return None
        node = _Node(candidates[0], candidates[0].cpus, candidates[0].gpus)
        self.nodes.append(node)
        return node


def plan_option(name: str, accelerators: Sequence[str], stats: CorpusStats, cluster: Cluster,
                placement: Placement, profile: ThroughputProfile,
                prices: Mapping[str, float] = DEFAULT_USD_PER_HOUR) -> PlanOption:
    """Pools, wall time and cost when only ``accelerators`` (plus CPUs) of the cluster are used.

    Every stage with work starts with one actor; then the stage that would finish last gets one more
    actor, on the first accelerator type of its placement that still has room, until the cluster is
    full, that stage cannot be split further (one actor per asset, or its longest asset dominates), or
    the stages would finish within the fixed start-up time anyway.
    """
    usable = ("cpu", *accelerators)
    work = {s: w for s, w in stage_work(stats).items() if w.units > 0}
    choices: dict[str, list[tuple[str, Target, float]]] = {}
    for s in work:
        opts = []
        for acc in placement.stages[s].allowed() if s in placement.stages else []:
            t, r = placement.target(s, acc), profile.rates.get(s, {}).get(acc)
            if acc in usable and t is not None and r:
                opts.append((acc, t, r))
        if not opts:
            return PlanOption(name=name, accelerators=list(accelerators), feasible=False,
                              note=f"{s} may not run on {' or '.join(usable)} (placement or profile)")
        choices[s] = opts

    cpus_per_gpu: dict[str, float] = {}
    for s, opts in choices.items():
        for acc, t, _ in opts:
            if t.num_gpus:
                cpus_per_gpu[acc] = max(cpus_per_gpu.get(acc, 0.0), t.num_cpus / t.num_gpus)
    packer = _Packer([t for t in cluster.node_types if t.accelerator in usable], cluster.max_workers, cpus_per_gpu)
    actors: dict[tuple[str, str], int] = {}

    def beside(stage: str, acc: str) -> str | None:
        """The stage whose actor this stage's actor sits beside on one GPU of ``acc`` (when that stage has work)."""
        t = placement.target(stage, acc)
        return t.share_gpu_with if t is not None and t.share_gpu_with in work else None

    def add(stage: str) -> bool:
        """One more actor of ``stage`` (with the actor that shares its GPU, both placed as one)."""
        for acc, _, _ in choices[stage]:
            lead = beside(stage, acc) or stage
            group = [lead, *(s for s in choices if s != lead and beside(s, acc) == lead)]
            targets = [placement.target(s, acc) for s in group]
            pair = Target(num_cpus=sum(t.num_cpus for t in targets), num_gpus=sum(t.num_gpus for t in targets))
            if packer.place(acc, pair):
                for s in group:
                    actors[s, acc] = actors.get((s, acc), 0) + 1
                return True
        return False

    def throughput(stage: str) -> float:
        return sum(actors.get((stage, acc), 0) * r for acc, _, r in choices[stage])

    def times(stage: str) -> tuple[float, float]:
        """(time at the pool's throughput, time of its longest asset on its fastest actor)."""
        fastest = max(r for acc, _, r in choices[stage] if actors.get((stage, acc)))
        return work[stage].units / throughput(stage), work[stage].longest / fastest

    # GPU stages first: their nodes exist before CPU work looks for spare cores.
    for s in sorted(work, key=lambda s: choices[s][0][0] == "cpu"):
        if not any(k[0] == s for k in actors) and not add(s):
            return PlanOption(name=name, accelerators=list(accelerators), feasible=False,
                              note=f"the cluster has no room for one {s} actor")
    while True:
        busy = {s: max(times(s)) for s in work}
        b = max(busy, key=busy.get)
        pooled, longest = times(b)
        n = sum(v for (s, _), v in actors.items() if s == b)
        if busy[b] <= profile.startup_s or longest >= pooled or n >= work[b].items or not add(b):
            break

    busy = {s: max(times(s)) for s in work}
    b = max(busy, key=busy.get)
    # One asset's pass through the other stages: those before the bottleneck run while the engines
    # start (the bottleneck has a queue when it is ready), those after it add to the end.
    one = {s: work[s].units / work[s].items / choices[s][0][2] for s in work if s != b}
    order = list(STAGES)
    lead = sum(v for s, v in one.items() if order.index(s) < order.index(b))
    wall = max(profile.startup_s, lead) + busy[b] + sum(one.values()) - lead
    forecasts = []
    for s in work:
        x = throughput(s)
        # actor-seconds on each type x the GPUs (or CPUs) each actor holds
        dev = {acc: work[s].units * actors.get((s, acc), 0) / x * (t.num_gpus or t.num_cpus)
               for acc, t, _ in choices[s]}
        forecasts.append(StageForecast(
            stage=s, unit=UNITS[s], work=work[s].units, units_per_s=x, busy_s=busy[s],
            device_s=sum(dev.values()), cost_usd=sum(cost_usd(d, acc, prices) for acc, d in dev.items())))
    pools = [Pool(stage=s, accelerator=acc, actors=n, num_cpus=placement.target(s, acc).num_cpus,
                  num_gpus=placement.target(s, acc).num_gpus, share_gpu_with=beside(s, acc))
             for (s, acc), n in actors.items()]
    nodes = packer.counts()
    price = {t.name: t.usd_per_hour for t in cluster.node_types}
    return PlanOption(name=name, accelerators=list(accelerators), feasible=True, pools=pools, nodes=nodes,
                      stages=forecasts, bottleneck=b, lead_s=lead, wall_s=wall,
                      cost_usd=sum(price[t] * k for t, k in nodes.items()) * wall / 3600)


def make_plan(stats: CorpusStats, cluster: Cluster, profile: ThroughputProfile,
              placement: Placement = DEFAULT_PLACEMENT, corpus: str = "", cluster_name: str = "") -> Plan:
    """One option per GPU type of the cluster on its own, plus all of them mixed (or CPU-only)."""
    accs = cluster.accelerators()
    shapes = [(f"{a}-only", [a]) for a in accs] + ([("mixed", accs)] if len(accs) > 1 else [])
    shapes = shapes or [("cpu-only", [])]
    return Plan(cluster=cluster_name or cluster.name, corpus=corpus, profile=profile.source, stats=stats,
                options=[plan_option(n, a, stats, cluster, placement, profile) for n, a in shapes])


def resources_from_plan(option: PlanOption, base: Resources) -> Resources:
    """The job's per-stage resources sized from a plan option (fixed-size pools of the planned size).

    A stage spread over several GPU types gets one pool without an accelerator type, the largest GPU
    share among its targets (no GPU is over-packed) and the summed actor count; each actor picks its
    engine options from the GPU it lands on.
    """
    updates = {}
    for stage in STAGES:
        pools = [p for p in option.pools if p.stage == stage]
        if not pools:
            continue
        gpu_types = {p.accelerator for p in pools if p.accelerator != "cpu"}
        n = sum(p.actors for p in pools)
        # Pairs on one GPU stay pairs when every pool of the stage is paired with the same stage, actor for actor.
        partner = {p.share_gpu_with for p in pools}.pop() if len({p.share_gpu_with for p in pools}) == 1 else None
        if partner and sum(p.actors for p in option.pools if p.stage == partner) != n:
            partner = None
        updates[stage] = StageResources.model_validate({**getattr(base, stage).model_dump(),  # validated: GPUs need a batch size
            "num_cpus": max(p.num_cpus for p in pools), "num_gpus": max(p.num_gpus for p in pools),
            "accelerator_type": gpu_types.pop() if len(gpu_types) == 1 else None,
            "min_actors": n, "max_actors": n, "share_gpu_with": partner})
    return base.model_copy(update=updates)


def profile_from_metrics(metrics: pa.Table, models: str, startup_s: float, source: str) -> ThroughputProfile:
    """A throughput profile measured by a finished job: each stage's units per actor-second."""
    rates: dict[str, dict[str, float]] = {}
    for stage in set(metrics.column("stage").to_pylist()) & set(STAGES):
        rows = metrics.filter(pc.equal(metrics["stage"], stage))
        for acc in set(rows.column("accelerator").to_pylist()):
            sel = rows.filter(pc.equal(rows["accelerator"], acc))
            if stage == "vlm":
                sel = sel.filter(pc.equal(sel["kind"], "video"))
            wall = pc.sum(sel["wall_s"]).as_py() or 0.0
            if stage == "decode":  # tables from before speech detection moved into decode time it as "speech"
                speech = metrics.filter(pc.and_(pc.equal(metrics["stage"], "speech"),
                                                pc.equal(metrics["accelerator"], acc)))
                wall += pc.sum(speech["wall_s"]).as_py() or 0.0
            unit = UNITS[stage]
            units = (sel.num_rows if unit == "file" else pc.sum(sel["pages"]).as_py() if unit == "page"
                     else pc.sum(sel["media_s"]).as_py()) or 0
            if wall > 0 and units > 0:
                rates.setdefault(stage, {})[acc] = units / wall
    return ThroughputProfile(models=models, source=source, startup_s=startup_s, rates=rates)


# ------------------------------------------------------------------------------------------------ output

def _duration(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_plan(plan: Plan) -> str:
    """The options side by side, one column each."""
    st = plan.stats
    lines = [f"corpus   {plan.corpus}: {st.files} files, {st.bytes / 1e9:.2f} GB — "
             f"{st.video_files} video ({st.video_s / 3600:.2f} h), {st.audio_files} audio ({st.audio_s / 3600:.2f} h), "
             f"{st.pdf_files} pdf ({st.pages} pages), {st.other_files} other; {st.probed} probed",
             f"cluster  {plan.cluster}", f"profile  {plan.profile}", ""]
    rows: list[tuple[str, list[str]]] = [("", [o.name for o in plan.options])]
    stages = [s for s in STAGES if any(p.stage == s for o in plan.options for p in o.pools)]
    for s in stages:
        cells = []
        for o in plan.options:
            pools = [p for p in o.pools if p.stage == s]
            cells.append(" + ".join(f"{p.actors}×{p.accelerator}" + (f"({p.num_gpus:g})" if 0 < p.num_gpus < 1 else "")
                                    for p in pools) or "-")
        rows.append((f"{s} actors", cells))
    node_types = list(dict.fromkeys(t for o in plan.options for t in o.nodes))
    for t in node_types:
        rows.append((f"{t} nodes", [str(o.nodes.get(t, 0)) if o.feasible else "-" for o in plan.options]))
    rows.append(("bottleneck", [o.bottleneck or "-" for o in plan.options]))
    rows.append(("wall time", [_duration(o.wall_s) if o.feasible else "infeasible" for o in plan.options]))
    rows.append(("cluster cost", [money(o.cost_usd) if o.feasible else "-" for o in plan.options]))
    rows.append(("busy device cost", [money(sum(f.cost_usd for f in o.stages)) if o.feasible else "-"
                                      for o in plan.options]))
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[1][i]) for r in rows) for i in range(len(plan.options))]
    for label, cells in rows:
        lines.append("  ".join([label.ljust(width0), *(c.rjust(w) for c, w in zip(cells, widths))]).rstrip())
    lines += [f"note: {o.name}: {o.note}" for o in plan.options if o.note]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="corpusflow plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", required=True, help="Ray cluster-launcher YAML (cluster.yaml)")
    ap.add_argument("--corpus", required=True, help="local folder or s3://bucket/prefix")
    ap.add_argument("--throughput", default=str(DEFAULT_PROFILE_PATH), help="throughput profile JSON")
    ap.add_argument("--throughput-from", metavar="OUT",
                    help="rates measured from the metrics/ table of a finished job override the profile's")
    ap.add_argument("--startup-s", type=float, help="override the profile's fixed start-up seconds")
    ap.add_argument("--placement", help="placement YAML (default: corpusflow.contracts.placement.DEFAULT_PLACEMENT)")
    ap.add_argument("--sample", type=int, default=200, help="files probed per kind; the rest is extrapolated")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the plan as JSON (stdout: -)")
    args = ap.parse_args(argv)
    try:
        cluster = load_cluster(args.cluster)
        profile = ThroughputProfile.load(args.throughput)
        if args.throughput_from:  # measured rates replace the profile's; stages the job did not run keep them
            measured = profile_from_metrics(read_table(args.throughput_from, "metrics"), models="measured",
                                            startup_s=profile.startup_s, source="")
            rates = {s: {**profile.rates.get(s, {}), **measured.rates.get(s, {})}
                     for s in {*profile.rates, *measured.rates}}
            profile = profile.model_copy(update={
                "rates": rates, "source": f"measured from {args.throughput_from}/metrics, else {profile.source}"})
        if args.startup_s is not None:
            profile = profile.model_copy(update={"startup_s": args.startup_s})
        placement = Placement.load(args.placement) if args.placement else DEFAULT_PLACEMENT
        stats = probe_corpus(args.corpus, sample=args.sample)
    except (OSError, ValueError, KeyError) as e:
        print(f"corpusflow plan: {e}", file=sys.stderr)
        return 2
    plan = make_plan(stats, cluster, profile, placement, corpus=args.corpus, cluster_name=args.cluster)
    if args.json == "-":
        print(plan.model_dump_json(indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(plan.model_dump_json(indent=2))
    print(format_plan(plan))
    return 0 if any(o.feasible for o in plan.options) else 1


def load_plan(path: str) -> Plan:
    """A plan written by ``corpusflow plan --json PATH``."""
    return Plan.model_validate(json.loads(Path(path).read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
