"""The corpus job: one Ray Data stream from listing to committed Delta Lake tables (flows/tables.py).

list → identify (hash + sniff by content) → drop what this config already committed → the stages of
the registry in order (contracts/registry.py: decode media and keep their speech, extract PDFs, ASR
actor pool, VLM actor pool), each added by the Ray Data adapter (flows/adapter.py) → commit (one actor).
Videos, audio and PDFs flow interleaved in one stream; each stage takes the kinds its contract
declares. Frames and speech samples travel as Arrow tensor columns; objects are fetched inside the
stages that read them.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
import pyarrow as pa

from corpusflow.actors.identify import content_id, kind_by_name
from corpusflow.actors.node_types import cluster_shapes
from corpusflow.contracts import storage
from corpusflow.contracts.config import JobConfig
from corpusflow.contracts.registry import BY_NAME, STAGES
from corpusflow.contracts.rows import METRIC_STAGES, rows_for_batch, status_of
from corpusflow.contracts.stage import RETRYABLE, Batch
from corpusflow.contracts.capacity import NodeShape
from corpusflow.flows.adapter import add_stage
from corpusflow.flows.capacity import check_job, driver_only_paths
from corpusflow.flows.gpu_bundles import remote_args_fns
from corpusflow.flows.lease import Heartbeat, alive, holder_of, lease_rows, leased
from corpusflow.flows.tables import KnownKeys, check_out, commit, committed, keys_of, share_content, unchanged_of
from corpusflow.flows.live_metrics import record as record_live
from corpusflow.flows.node_watch import NodesLost, NodeWatch, dead_nodes
from corpusflow.flows.progress import JobProgress, dollars


@dataclass
class JobSummary:
    job_id: str
    fingerprint: str
    files: int = 0
    already_done: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    video_hours: float = 0.0
    audio_hours: float = 0.0
    pages: int = 0
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    cost_usd: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)
    models: str = ""
    random_outputs: list[str] = field(default_factory=list)  # made by tiny-random models: noise

    def to_text(self) -> str:
        noise = f"; {', '.join(self.random_outputs)} from random weights (tiny-random): noise" if self.random_outputs else ""
        lines = [f"job {self.job_id} (config {self.fingerprint}) finished in {self.wall_s:.1f} s",
                 f"  models: {self.models}{noise}",
                 "  files: " + ", ".join([f"{self.files} listed", f"{self.already_done} already done",
                                          *(f"{k} {v}" for k, v in sorted(self.by_status.items()))]),
                 "  kinds: " + (", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())) or "none"),
                 f"  media: {self.video_hours:.3f} h video, {self.audio_hours:.3f} h audio, {self.pages} pages",
                 f"  cost: {dollars(self.cost_usd)} of device time (usd_per_hour of the job config)",
                 "  time per stage (summed over assets): "
                 + (", ".join(f"{k} {v:.1f} s" for k, v in self.stage_s.items()) or "none")]
        for e in self.errors[:20]:
            lines.append(f"  error  {e['uri']}  [{e['stage']}] {e['error']}")
        if len(self.errors) > 20:
            lines.append(f"  … and {len(self.errors) - 20} more errors (see assets/ where status = 'error')")
        return "\n".join(lines)


def _start_columns(batch: Batch) -> Batch:
    n = len(batch["uri"])
    batch["error_stage"] = np.full(n, "", dtype=object)
    batch["error"] = np.full(n, "", dtype=object)
    batch[RETRYABLE] = np.zeros(n, dtype=bool)
    return batch


# The done-set of this job, once per worker process: deserialising it for every block would cost
# O(corpus) per file.
_DONE: dict[str, set] = {}


def _drop_done(done_ref) -> Callable[[Batch], Batch]:
    def drop(batch: Batch) -> Batch:
        import ray

        key = done_ref.hex()
        if key not in _DONE:
            _DONE.clear()  # one job's set at a time
            _DONE[key] = ray.get(done_ref)
        done = _DONE[key]
        keep = np.array([(u, a) not in done for u, a in zip(batch["uri"], batch["asset_id"])], dtype=bool)
        return {k: v[keep] for k, v in batch.items()}
    return drop


def _restarted() -> bool:
    """Whether this actor is a restart of one that died (False outside an actor)."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed


class _Committer:
    """The commit step, as an actor: commits of one job go through one pool (one actor by default), so
    they do not race each other for the same Delta log; each batch is one transaction per table."""

    def __init__(self, config: JobConfig, job_id: str, append_new: bool = False):
        self.config, self.job_id, self.fingerprint = config, job_id, config.fingerprint()
        # A committer restarted after its worker or node died may be handed the batch it was committing
        # again, whose data rows may have landed without its assets rows: only a replacement is idempotent.
        self.known = KnownKeys(config.out, job_id) if append_new and not _restarted() else None
        self.shares = {s.name: (config.resources.of(s.name).num_gpus or config.resources.of(s.name).num_cpus)
                       for s in STAGES}

    def __call__(self, batch: Batch) -> Batch:
        config, job_id = self.config, self.job_id
        deferred = leased(batch)  # another job processes these: its commit, not ours
        cost: dict[str, float] = defaultdict(float)  # asset_id → US$ of this commit's metrics rows
        if not deferred.all():
            ours = {c: v[~deferred] for c, v in batch.items()} if deferred.any() else batch
            tables = rows_for_batch(ours, self.fingerprint, job_id, config.usd_per_hour, self.shares)
            commit(tables, config.out, job_id, new_keys=self.known is not None and self.known.all_new(tables["assets"]))
            record_live(tables["metrics"], job_id)
            for asset_id, usd in zip(tables["metrics"]["asset_id"].to_pylist(), tables["metrics"]["cost_usd"].to_pylist()):
                cost[asset_id] += usd or 0.0
        n = len(batch["uri"])
        out = {c: batch[c] for c in ("uri", "asset_id", "kind", "error_stage", "error")}
        out["status"] = np.array(["deferred" if d else status_of(k, e)
                                  for k, e, d in zip(batch["kind"], batch["error"], deferred)], dtype=object)
        out["duration_s"] = np.array([float(batch["duration_s"][i]) if "duration_s" in batch else np.nan
                                      for i in range(n)], dtype=np.float64)
        out["pages"] = np.array([int(batch["pages"][i]) if "pages" in batch else 0 for i in range(n)], dtype=np.int64)
        # Each asset's cost once, on its first row (copies of one content in a batch share its rows).
        out["cost_usd"] = np.array([0.0 if d else cost.pop(str(a), 0.0) for a, d in zip(batch["asset_id"], deferred)],
                                   dtype=np.float64)
        for stage in METRIC_STAGES:
            col = f"{stage}_wall_s"
            out[col] = batch[col].astype(np.float64) if col in batch else np.full(n, np.nan)
        return out


# How the listing is cut into Ray blocks, which stages take whole (StageResources.batch_size). A file
# named as video or audio is a block of its own: it never waits behind others for decode and ASR.
# Other files (PDFs, the unsupported) share blocks of at most BLOCK_FILES files and BLOCK_BYTES, so a
# corpus of a million PDFs is not a million Ray tasks and calls per stage.
BLOCK_BYTES = 64 << 20
BLOCK_FILES = 64


def _listing_blocks(entries: list[storage.FileEntry]) -> list[pa.Table]:
    blocks: list[list[storage.FileEntry]] = []
    shared: list[storage.FileEntry] = []
    size = 0
    for e in entries:
        if kind_by_name(e.uri) in ("video", "audio"):
            blocks.append([e])
            continue
        if shared and (size + e.size > BLOCK_BYTES or len(shared) >= BLOCK_FILES):
            blocks.append(shared)
            shared, size = [], 0
        shared.append(e)
        size += e.size
    blocks.append(shared)
    return [pa.table({"uri": [e.uri for e in b], "bytes": pa.array([e.size for e in b], pa.int64()),
                      "modified": pa.array([e.modified for e in b], pa.timestamp("us", tz="UTC"))})
            for b in blocks if b]


def build_dataset(config: JobConfig, entries: list[storage.FileEntry], done: set, job_id: str,
                  commit_rows: bool = True, append_new: bool = False, stand_ins: Mapping[str, type] | None = None,
                  retry_errors: bool = False):
    """The lazy Ray Data pipeline for ``entries`` (nothing runs until it is iterated).

    ``commit_rows=False`` stops before the commit step, exposing the stages' columns. ``append_new``:
    batches of keys new to OUT are appended (flows/tables.py:KnownKeys), where one committer commits.
    ``stand_ins`` runs other classes in the places of stages (stage name → class) and, for the vLLM
    backend, of the steps of Ray's processor (its stage name → UDF class): the feeding benchmark
    (benchmarks/feed_sim.py) runs this very graph with stand-ins that only hold rows for measured times.
    """
    import ray

    ds = ray.data.from_arrow(_listing_blocks(entries))
    ds = ds.map_batches(_start_columns, batch_format="numpy", batch_size=None, num_cpus=0.1)
    stand_ins = stand_ins or {}
    places = remote_args_fns(config)  # stages that share GPUs: one actor of each per GPU
    for spec in (s for s in STAGES if s.cls is not None):
        if spec.name == "vlm" and config.profile.vlm_engine == "vllm":
            from corpusflow.flows.vllm_stage import describe_with_vllm  # the vLLM backend: Ray's ray.data.llm processor

            ds = describe_with_vllm(ds, config, fixed_output_tokens=config.profile.fixed_output is not None,
                                    place=places.get("vlm"), udfs=stand_ins)
        else:
            ds = add_stage(ds, spec, config, cls=stand_ins.get(spec.name), place=places.get(spec.name))
        if spec.name == "identify" and done:  # the content hash is known from here on
            ds = ds.map_batches(_drop_done(ray.put(done)), batch_format="numpy", batch_size=None, num_cpus=0.1)
        if spec.name == "identify" and commit_rows:  # before any expensive stage: one job per input at a time
            ds = ds.map_batches(lease_rows(config.out, config.fingerprint(), job_id, retry_errors), batch_format="numpy",
                                batch_size=None, num_cpus=0.1)
    if not commit_rows:
        return ds
    append_new = append_new and config.resources.of("commit").max_actors == 1
    return add_stage(ds, BY_NAME["commit"], config, cls=_Committer, args=(job_id, append_new))


_WORKER_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_ENDPOINT",
                    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _package_for_workers() -> str:
    """A folder holding the whole ``corpusflow`` package as workers import it.

    Ray's ``py_modules`` ships a folder under its own name; in a checkout the subpackages sit beside
    ``corpusflow/`` rather than in it (see corpusflow/__init__.py), so they are gathered here.
    """
    import atexit
    import importlib
    import shutil
    import tempfile
    from pathlib import Path

    import corpusflow

    dest = Path(tempfile.mkdtemp(prefix="corpusflow-workers-")) / "corpusflow"
    # ray.init uploads the folder once; nothing reads it afterwards, so it goes when the driver ends.
    atexit.register(shutil.rmtree, dest.parent, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(corpusflow.__file__).parent, dest, ignore=skip)
    for name in corpusflow.SUBPACKAGES:
        package = importlib.import_module(f"corpusflow.{name}")
        shutil.copytree(Path(package.__file__).parent, dest / name, ignore=skip, dirs_exist_ok=True)
    return str(dest)


def init_ray(address: Optional[str], verbose: bool = False) -> bool:
    """Connect to ``address`` (shipping our packages) or start a local Ray sized for one actor per stage;
    True when it started that local Ray (a cluster nothing adds nodes to).

    Under ``ray job submit`` (``RAY_ADDRESS`` set, code shipped by ``--working-dir``) it joins that
    cluster as it is. Ray's console messages: flows/ray_console.py (``verbose`` shows its INFO lines).
    """
    import ray

    from corpusflow.flows.ray_console import console_level, quiet_ray, quiet_ray_data

    level = console_level(verbose)
    quiet_ray()
    local = False
    if ray.is_initialized():
        pass
    elif not address and os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level=level)
    elif address:
        # Where to reach storage and models, never credentials: workers use their own credential
        # chain (instance role, IRSA), and a copied short-lived token would expire mid-job.
        env = {"env_vars": {k: os.environ[k] for k in _WORKER_SETTINGS if k in os.environ},
               "py_modules": [_package_for_workers()]}
        ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level=level)
    else:
        # A local cluster's workers inherit this process's environment, credentials included.
        # Logical CPUs are accounting: the ASR and VLM actors each hold one for the whole job, so a
        # small machine needs headroom for the decode, PDF and commit tasks to be scheduled at all.
        # address="local": a Ray of its own even where another runs on this machine (ray.init() alone
        # joins that one, and then refuses num_cpus).
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 6), include_dashboard=False,
                 log_to_driver=False, logging_level=level)
        local = True
    quiet_ray_data(verbose)
    return local


def _set_aside(config: JobConfig, entries: list[storage.FileEntry], seen: set[str],
               fingerprint: str) -> list[storage.FileEntry]:
    """Entries the stream gave no row for and that nobody committed meanwhile (not this job's rows
    dropped as already done, nor another job's): their block failed."""
    missing = [e for e in entries if e.uri not in seen]
    if not missing:
        return []
    have = {uri for uri, _ in keys_of(committed(config.out, fingerprint))}
    return [e for e in missing if e.uri not in have]


# How often a job waiting for content that other jobs lease looks at OUT again.
_WAIT_POLL_S = 2.0


def _wait_for_others(config: JobConfig, job_id: str, fingerprint: str, deferred: dict[str, tuple[str, str]],
                     progress: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Wait until the content of every deferred URI (uri → (asset_id, holding job)) is committed, by
    the job leasing it or by this one under another URI, or its holder has died. Returns the URIs to
    point at committed content and those to process here (their holder died first)."""
    waiting = dict(deferred)
    shared: list[str] = []
    orphaned: list[str] = []
    said = 0.0
    while waiting:
        done = committed(config.out, fingerprint, asset_ids=(a for a, _ in waiting.values()))
        have, have_ids = keys_of(done), set(done["asset_id"].to_pylist())
        verdicts: dict[str, bool] = {}
        for uri, (asset_id, job) in list(waiting.items()):
            if (uri, asset_id) in have:  # the holder listed and committed this very URI
                del waiting[uri]
            elif asset_id in have_ids:
                shared.append(uri)
                del waiting[uri]
            elif job == job_id or not verdicts.setdefault(job, alive(config.out, job)):
                orphaned.append(uri)  # this job's first URI of it, or a dead job's: left uncommitted
                del waiting[uri]
        if waiting:
            if time.time() - said > 30:
                jobs = sorted({j for _, j in waiting.values()})
                progress(f"corpusflow: waiting for {len(waiting)} files other jobs are processing ({', '.join(jobs)})")
                said = time.time()
            time.sleep(_WAIT_POLL_S)
    if orphaned:
        progress(f"corpusflow: {len(orphaned)} files were left uncommitted by the jobs that held them; processing them here")
    return shared, orphaned


# Ray's ways of saying that a worker process went away under a task, rather than that the code raised.
_DEATHS = ("ActorDiedError", "RayActorError", "WorkerCrashedError", "OutOfMemoryError", "ActorUnavailableError",
           "NodeDiedError", "WorkerBroken")


def _cause_chain(e: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _run_alone(config: JobConfig, entry: storage.FileEntry, done: set, job_id: str, take: Callable[[Batch], None],
               retry_errors: bool) -> None:
    """One set-aside file as a job of its own. If its worker dies again it becomes an error row naming
    the stage and what happened, unless the cluster lost nodes meanwhile: the file is then not to blame,
    and the job stops with :class:`NodesLost` (the loop a spot market could otherwise keep it in ends
    here). Any other failure is a fault of the job, raised."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = 0
    dead_before = dead_nodes()
    try:
        for batch in build_dataset(config, [entry], done, job_id, retry_errors=retry_errors).iter_batches(
                batch_size=None, batch_format="numpy"):
            take(batch)
    except Exception as e:  # noqa: BLE001 - sorted below: a dead worker is the file's row, anything else is raised
        text = "\n".join(f"{type(c).__name__}: {c}" for c in _cause_chain(e))
        if not any(name in text for name in _DEATHS):
            raise
        stage = next((s.name for s in STAGES if s.cls and s.cls.rsplit(".", 1)[1] in text), "unknown")
        tries = config.faults.worker_restarts + 1
        lost = dead_nodes() - dead_before
        if lost:
            raise NodesLost(
                f"stage {stage} lost its workers more often than faults.worker_restarts "
                f"({config.faults.worker_restarts}) allows, and the cluster lost {len(lost)} "
                f"node{'s' if len(lost) > 1 else ''} meanwhile (while {entry.uri} ran alone after its batch failed "
                "the same way): the job stops rather than blame the file. What is committed stays, and a re-run "
                "goes on from there; give the stage nodes that stay (on-demand capacity) or raise "
                "faults.worker_restarts") from e
        reason = text.splitlines()[-1][:300] if "WorkerBroken" in text else "killed, out of memory or crashed"
        error = (f"the worker processing this file in stage {stage} died {tries} times ({reason}); "
                 "the file is not tried again (faults.worker_restarts)")
        take(_Committer(config, job_id)(_lost_row(entry, stage, error)))
    finally:
        context.max_errored_blocks = -1


def _lost_row(entry: storage.FileEntry, stage: str, error: str) -> Batch:
    """The columns of an error row for a file no stage returned: its hash read here (a plain streamed
    read; nothing that decodes), its kind from its name."""
    asset_id, _, _ = content_id(entry.uri)
    return {"uri": np.asarray([entry.uri]), "asset_id": np.asarray([asset_id]),
            "kind": np.asarray([kind_by_name(entry.uri)]), "format": np.asarray(["unknown"]),
            "bytes": np.asarray([entry.size], np.int64), "modified": np.asarray([entry.modified], dtype=object),
            "error_stage": np.asarray([stage]), "error": np.asarray([error]), RETRYABLE: np.asarray([False])}


def run_job(config: JobConfig, address: Optional[str] = None, retry_errors: bool = False, verbose: bool = False,
            progress_every_s: float = 30.0, capacity: Optional[tuple[list[NodeShape], str]] = None) -> JobSummary:
    """Run the whole job and return its summary; raises only for problems with the job itself.

    ``retry_errors`` processes again the inputs whose last failure was transient. Progress goes to
    stderr (flows/progress.py): live on a terminal, else a line every ``progress_every_s`` seconds;
    ``verbose`` adds a line per committed file and Ray's INFO messages. ``capacity``: what the
    cluster's node types offer and where that comes from, when the caller knows (actors/node_types.py finds
    it otherwise); a stage no node can hold raises :class:`InfeasibleError` before any work.
    """
    t0 = time.time()
    job_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    summary = JobSummary(job_id=job_id, fingerprint=config.fingerprint(), models=config.profile.name,
                         random_outputs=config.profile.random_outputs())
    check_out(config.out)
    # Unchanged since committed (same uri, size and modified time): skipped without reading a byte. The
    # listing streams past that check, so the driver holds only the files it will process.
    committed_now = committed(config.out, summary.fingerprint, retry_errors)
    unchanged = unchanged_of(committed_now)
    entries = []
    for entry in storage.iter_files(config.corpus):
        summary.files += 1
        if (entry.uri, entry.size, entry.modified) not in unchanged:
            entries.append(entry)
    del unchanged
    done = keys_of(committed_now)
    print(f"corpusflow: {summary.files} files under {config.corpus}, {summary.files - len(entries)} unchanged since "
          f"committed for config {summary.fingerprint}; writing to {config.out}", file=sys.stderr, flush=True)
    if not entries:
        summary.already_done = summary.files
        summary.wall_s = time.time() - t0
        return summary
    # Before the display takes over stderr: Ray's processes must not inherit the pipe it reads.
    import ray

    if not ray.is_initialized():
        where = address or os.environ.get("RAY_ADDRESS")
        print(f"corpusflow: joining the Ray cluster at {where}" if where else "corpusflow: starting a local Ray cluster",
              file=sys.stderr, flush=True)
    local = init_ray(address, verbose=verbose)
    check_job(config, *(capacity or cluster_shapes(local=local)))
    warning = None if local else driver_only_paths(config)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    shown = JobProgress(summary.files, summary.files - len(entries), sum(e.size for e in entries), verbose=verbose,
                        every_s=progress_every_s)
    with shown:
        _process(config, entries, done, job_id, summary, shown, retry_errors)
    summary.wall_s = time.time() - t0
    storage.write_json(json.dumps(asdict(summary), indent=1), storage.join(config.out, "_jobs", f"{job_id}.json"))
    return summary


def _process(config: JobConfig, entries: list[storage.FileEntry], done: set, job_id: str,
             summary: JobSummary, shown: JobProgress, retry_errors: bool) -> None:
    """The stream of ``entries`` to committed rows, into ``summary`` and ``shown`` as batches commit."""
    import ray.data

    stage_s: dict[str, float] = defaultdict(float)
    statuses: Counter = Counter()
    kinds: Counter = Counter()
    seen: set[str] = set()

    deferred: dict[str, tuple[str, str]] = {}  # uri → (asset_id, the job whose lease holds that content)

    def take(batch: Batch) -> None:
        for i in range(len(batch["uri"])):
            status, kind = str(batch["status"][i]), str(batch["kind"][i])
            if status == "deferred":
                deferred[str(batch["uri"][i])] = (str(batch["asset_id"][i]), holder_of(str(batch["error"][i])))
                if shown.verbose:
                    shown.say(f"corpusflow: {batch['uri'][i]}: {batch['error'][i]}; waiting for its rows")
                continue
            seen.add(str(batch["uri"][i]))
            statuses[status] += 1
            kinds[kind] += 1
            dur = float(batch["duration_s"][i])
            media_s = dur if status == "ok" and kind in ("video", "audio") and not np.isnan(dur) else 0.0
            if media_s:
                if kind == "video":
                    summary.video_hours += dur / 3600
                elif kind == "audio":
                    summary.audio_hours += dur / 3600
            pages = int(batch["pages"][i]) if status == "ok" and kind == "pdf" else 0
            summary.pages += pages
            summary.cost_usd += float(batch["cost_usd"][i])
            for stage in METRIC_STAGES:
                w = float(batch[f"{stage}_wall_s"][i])
                if not np.isnan(w):
                    stage_s[stage] += w
            if status == "error":
                summary.errors.append({"uri": str(batch["uri"][i]), "stage": str(batch["error_stage"][i]),
                                       "error": str(batch["error"][i])})
            uri = str(batch["uri"][i])
            shown.file(status, kind, uri, by_uri[uri].size if uri in by_uri else 0, media_s, pages,
                       float(batch["cost_usd"][i]), ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))

    context = ray.data.DataContext.get_current()
    by_uri = {e.uri: e for e in entries}
    # compact waits while it writes; other jobs see its leases live; a cluster that keeps losing nodes stops it
    with Heartbeat(config.out, job_id), NodeWatch(config.faults.max_nodes_lost):
        try:
            # A block whose worker died more than faults.worker_restarts times is set aside, not fatal: one
            # poison file must not stop 25,000 others. Its files are then run one at a time (_run_alone).
            context.max_errored_blocks = -1
            pending = entries
            while pending:
                for batch in build_dataset(config, pending, done, job_id, append_new=True, retry_errors=retry_errors).iter_batches(
                        batch_size=None, batch_format="numpy"):
                    take(batch)
                for entry in _set_aside(config, pending, seen | set(deferred), summary.fingerprint):
                    shown.say(f"corpusflow: {entry.uri} was in a batch whose worker died; running it alone")
                    _run_alone(config, entry, done, job_id, take, retry_errors)
                # Content leased by another job, or by this one under another URI: its rows are shared
                # once committed; processed here if the job holding it died first.
                if deferred:
                    shown.set_phase("waiting for other jobs")
                shared, orphaned = _wait_for_others(config, job_id, summary.fingerprint, deferred, shown.say)
                files = {u: (deferred[u][0], by_uri[u].size, by_uri[u].modified) for u in shared}
                for row in share_content(config.out, summary.fingerprint, job_id, files).to_pylist():
                    seen.add(row["uri"])
                    statuses[row["status"]] += 1
                    kinds[row["kind"]] += 1
                    shown.file(row["status"], row["kind"], row["uri"], by_uri[row["uri"]].size,
                               note="the same bytes as a file committed already")
                pending = [by_uri[u] for u in orphaned]
                deferred.clear()
        finally:
            context.max_errored_blocks = 0
    if config.profile.vlm_engine == "vllm":  # the next node of this type starts warm from the store
        from corpusflow.flows.vllm_stage import publish_engine_artifacts

        publish_engine_artifacts(config)
    summary.already_done = summary.files - len(seen)
    summary.by_status, summary.by_kind = dict(statuses), dict(kinds)
    summary.stage_s = {s: round(stage_s[s], 3) for s in METRIC_STAGES if s in stage_s}
