"""Several Ray nodes on this machine (``ray.cluster_utils.Cluster``: real raylets), a corpus job run against
them through the CLI, and a node lost the way a spot reclaim loses it, at a moment the job shows.

Used by tests/test_node_loss.py and benchmarks/node_loss.py. The stages under test are steered onto the
"spot" node with a custom resource in the job config (``resources.<stage>.ray_options.resources``), as a
user steers stages onto node types; the node is killed (SIGKILL of its workers, and
``remove_node(allow_graceful=False)``: SIGKILL of its raylet) when one of its worker processes shows the
stage at work (Ray titles a worker process with the task or actor method it runs), and a replacement node
with the same resources comes up, as the autoscaler would bring one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

from tests import media
from tests.local_cluster import free_port

# The custom resource that puts a stage on the spot node; each stage asks a sliver of it.
SPOT = "spot"
SPOT_STAGES = ("decode", "asr", "vlm", "commit")
# What a worker process on the spot node is titled while each stage works (task name, actor method); a
# commit is told by the tables instead (run_job).
WORKING = {"decode": "ray::MapBatches(DecodeMedia)", "asr": "(MapBatches(Transcribe)).submit",
           "vlm": "(MapBatches(Describe)).submit"}
ROOT = Path(__file__).resolve().parent.parent


def _ports() -> dict:
    """Ports a node would otherwise take at fixed defaults, which other Ray clusters on the machine use too."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port()}


class Nodes:
    """A head node (the driver's tasks: listing, identify, leases) plus spot nodes that come and go."""

    def __init__(self, spot_cpus: int = 8):
        from ray.cluster_utils import Cluster

        self.spot_cpus = spot_cpus
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 3, "gcs_server_port": free_port(), "include_dashboard": False, **_ports()})
        self.spot = None
        self.lost = 0

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_spot(self) -> None:
        self.spot = self.cluster.add_node(num_cpus=self.spot_cpus, resources={SPOT: 1}, **_ports())

    def lose_spot(self) -> None:
        """SIGKILL the spot node's worker processes and raylet at once, as a reclaimed machine stops, then
        bring a replacement up (without waiting on the job). Ray's ``remove_node`` kills the raylet and
        its agents; the workers would only exit once they noticed, finishing what they were writing."""
        for p in self._spot_processes():
            try:
                p.kill()
            except psutil.Error:
                continue
        self.cluster.remove_node(self.spot, allow_graceful=False)
        self.lost += 1
        self.add_spot()

    def _spot_processes(self) -> list[psutil.Process]:
        """The spot node's worker processes (the raylet's descendants) right now."""
        if self.spot is None:
            return []
        try:
            return psutil.Process(self.spot.all_processes["raylet"][0].process.pid).children(recursive=True)
        except (psutil.Error, KeyError, IndexError):
            return []

    def spot_titles(self) -> list[str]:
        """The titles of the spot node's worker processes right now."""
        titles = []
        for p in self._spot_processes():
            try:
                titles.append(" ".join(p.cmdline()))
            except psutil.Error:
                continue
        return titles

    def shutdown(self) -> None:
        self.cluster.shutdown()


def make_corpus(folder: Path) -> list[str]:
    """A video with speech-like audio, an audio file, a PDF: every stage has work. Returns the names."""
    media.make_video(folder / "tour.mp4", seconds=6.0)
    media.make_audio(folder / "call.wav", seconds=4.0)
    media.make_pdf(folder / "leaflet.pdf", pages=2)
    return sorted(p.name for p in folder.iterdir())


def job_config(path: Path, model_cache: str, worker_restarts: int = 2, max_nodes_lost: int = 10) -> Path:
    spot = "".join(f"  {s}: {{ray_options: {{resources: {{{SPOT}: 0.01}}}}}}\n" for s in SPOT_STAGES)
    path.write_text(f"models: tiny-random\nmodel_cache: {model_cache}\nvideo: {{fps: 1.0, frame_size: 112}}\nindex: {{enabled: false}}\n"
                    f"faults: {{worker_restarts: {worker_restarts}, max_nodes_lost: {max_nodes_lost}}}\n"
                    f"resources:\n{spot}")
    return path


@dataclass
class Run:
    code: int
    output: str
    wall_s: float
    kills: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds into the job)


DATA_TABLES = ("timeline", "summaries", "pages", "metrics")


def commits(out: Path, table: str) -> int:
    """How many Delta versions ``table`` has."""
    log = out / table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.exists() else 0


def _last_commit_at(out: Path, table: str) -> float:
    """When ``table``'s latest Delta version was written (0 before its first)."""
    log = out / table / "_delta_log"
    return max((p.stat().st_mtime for p in log.glob("*.json")), default=0.0) if log.exists() else 0.0


def _between_data_and_assets(out: Path) -> bool:
    """A commit is between its data tables and its ``assets`` row: some data table was committed after
    the latest ``assets`` version. Read from the tables alone, whichever tables a batch writes and
    whenever the harness first sees the committer at work."""
    data = max(_last_commit_at(out, t) for t in DATA_TABLES)
    return data > _last_commit_at(out, "assets")


def run_job(nodes: Nodes, corpus: Path, out: Path, config: Path, kill_during: tuple[str, ...] = (),
            kill_every: Optional[str] = None, timeout_s: float = 900) -> Run:
    """``corpusflow run --address`` against ``nodes``; the spot node is lost once while each stage of
    ``kill_during`` works on it (in that order), or, with ``kill_every``, every time that stage works on a
    fresh spot node. A commit is killed between its data tables and its ``assets`` commit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    job = subprocess.Popen([sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(out), "--config",
                            str(config), "--address", nodes.address], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    # The job's output is read as it comes: a pipe nobody reads fills (64 KiB: a few of Ray's worker-death
    # reports) and then blocks the job's every print, which would stall the job the harness watches.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
    reader.start()
    todo = list(kill_during)
    kills: list[tuple[str, float]] = []
    try:
        while job.poll() is None and time.time() - t0 < timeout_s and (todo or kill_every):
            stage = todo[0] if todo else kill_every
            assert stage is not None
            if stage == "commit":
                # The committer runs only on the spot node (job_config), so the tables alone say when it is
                # between its data and assets transactions; read at once, without listing the node's
                # processes first, as the window is a few Delta commits long.
                busy = _between_data_and_assets(out)
            else:
                busy = any(WORKING[stage] in t for t in nodes.spot_titles())
            if busy:
                nodes.lose_spot()
                kills.append((stage, round(time.time() - t0, 1)))
                print(f"[node loss] spot node killed during {stage}, {kills[-1][1]} s into the job", file=sys.stderr,
                      flush=True)
                if todo:
                    todo.pop(0)
            time.sleep(0.005 if stage == "commit" else 0.05)
        job.wait(timeout=max(1.0, timeout_s - (time.time() - t0)))
        note = ""
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        note = f"\n[harness] job killed after {timeout_s:.0f} s"
    reader.join(timeout=30)
    return Run(job.returncode, "".join(lines) + note, time.time() - t0, kills)


def check_tables(out: Path, names: list[str]) -> dict[str, int]:
    """What a user reads, with DuckDB over each Delta table's live files (tests/readers.py): one ``assets``
    row per file, no row twice in any table, no job still marked running and no lease on content that
    was not committed. Returns the counts for the report."""
    import duckdb

    from tests.readers import duckdb_read

    assets = duckdb_read(out / "assets")
    assert assets is not None, "no assets table"
    rows = assets.select(["uri", "status", "asset_id"]).to_pylist()
    uris = sorted(Path(r["uri"]).name for r in rows)
    assert uris == names, f"assets rows {uris} != files {names}"
    assert {r["status"] for r in rows} == {"ok"}, rows
    duplicates = {}
    for table in DATA_TABLES:
        data = duckdb_read(out / table)
        if data is not None:
            con = duckdb.connect()
            con.register("t", data)
            duplicates[table] = con.sql("SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT * FROM t)) "
                                        "FROM t").fetchall()[0][0]
    assert not any(duplicates.values()), f"duplicate data rows: {duplicates}"
    running = list((out / "_jobs" / "running").glob("*"))
    assert not running, f"jobs still marked running: {running}"
    committed = {r["asset_id"] for r in rows}
    claims = [p for p in (out / "_jobs" / "claims").rglob("*") if p.is_file()]
    held = [p.name for p in claims if p.name.rsplit(".", 1)[0] not in committed]
    assert not held, f"leases on content never committed: {held}"
    again = [p.name for p in claims if not p.name.endswith(".0")]
    assert not again, f"content leased more than once by the one job: {again}"
    return {"assets": len(rows), "duplicates": sum(duplicates.values()), "leases_left": len(held)}
