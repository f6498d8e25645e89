"""The output tables: Delta Lake tables that Spark, Trino/Athena, DuckDB, Polars and pandas read as they are.

``OUT/<table>/`` is a Delta table (Parquet files plus the ``_delta_log/`` transaction log). A batch is
committed as one transaction per table, each replacing the rows of the batch's keys
(``write_deltalake(mode="overwrite", predicate=...)``), so a reader opening the latest version sees
exactly the current rows and never a half-written batch; earlier versions stay readable by time
travel until ``corpusflow compact`` vacuums them.

Keys, so that nothing appears twice and superseded rows disappear:

- ``assets``: one row per input URI.
- ``timeline``, ``summaries``, ``pages``: the rows of one content hash (``asset_id``). Identical bytes
  at several URIs share one set of rows; a re-run under a new config replaces them.
- ``metrics``: what one job spent on one asset, ``(job_id, asset_id)``; earlier jobs' costs stay.

Data tables are committed before ``assets``: a job that dies between the two leaves data rows no
``assets`` row points at, which its re-run replaces and ``compact`` removes. Concurrent writers are
serialised by the log (atomic rename locally, conditional PUT on S3); a commit that loses a race on
the same keys is retried.
"""
from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from corpusflow.contracts import storage
from corpusflow.contracts.schemas import TABLES

DATA_TABLES = ("timeline", "summaries", "pages", "metrics")
# A job that has not said it finished within this long is taken to have died (it cannot block compact forever).
STALE_JOB_HOURS = 24.0
KEYS = {"assets": ("uri",), "timeline": ("asset_id",), "summaries": ("asset_id",), "pages": ("asset_id",),
        "metrics": ("job_id", "asset_id")}
# Commits of other jobs on the same OUT can still race ours: retried with jittered backoff up to ~1 min.
_COMMIT_ATTEMPTS = 20


class OutputError(RuntimeError):
    """OUT cannot be used as it is (for example, it holds tables of an older corpusflow)."""


def table_uri(out: str, table: str) -> str:
    return storage.join(out, table)


def exists(out: str, table: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(out, table), storage_options=storage.delta_options(out))


def check_out(out: str) -> None:
    """Refuse an OUT whose tables are bare Parquet files of corpusflow before 0.2 (no transaction log)."""
    for table in TABLES:
        uri = table_uri(out, table)
        if storage.list_names(uri, ".parquet") and not exists(out, table):
            raise OutputError(f"{uri} holds Parquet files of an older corpusflow, not a Delta table; "
                              "write to a new OUT (the old tables stay readable as Parquet)")


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _predicate(table: str, rows: pa.Table, keys: Mapping[str, Iterable[str]]) -> str:
    """``col IN (...) [AND ...]`` over the batch's key values (SQL string literals, quotes doubled)."""
    parts = []
    for col in KEYS[table]:
        values = sorted(set(keys[col]) | set(rows[col].to_pylist()))
        parts.append(f"{col} IN ({', '.join(_sql(v) for v in values)})")
    return " AND ".join(parts)


def replace_rows(out: str, table: str, rows: pa.Table, keys: Optional[Mapping[str, Iterable[str]]]) -> None:
    """One transaction: the rows under ``keys`` (column → values) become ``rows``; retried on a lost race.

    ``keys=None`` appends: for keys OUT has never held, where a replacement would only cost a scan of
    every file its predicate may match (content hashes leave no file statistics to prune with).
    """
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    options = storage.delta_options(out)
    how: dict[str, Any] = {"mode": "append"} if keys is None else {"mode": "overwrite",
                                                                 "predicate": _predicate(table, rows, keys)}
    for attempt in range(_COMMIT_ATTEMPTS):
        # The first commit creates the table with the schema ``rows`` carry (conformed to TABLES); "merge"
        # lets a table written before a nullable column was added take it (its older rows read null).
        try:
            write_deltalake(table_uri(out, table), rows, schema_mode="merge", storage_options=options, **how)
            return
        except CommitFailedError:
            if attempt == _COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + random.random()))


def replace_table(out: str, table: str, rows: pa.Table) -> None:
    """One transaction: the table (created if new) holds ``rows`` and their schema, nothing else.

    For tables that one run writes whole (``corpusflow eval`` results), not the job's keyed tables;
    earlier versions stay readable by time travel.
    """
    from deltalake import write_deltalake

    write_deltalake(table_uri(out, table), rows, mode="overwrite", schema_mode="overwrite",
                    storage_options=storage.delta_options(out))


def commit(tables: Mapping[str, pa.Table], out: str, job_id: str, new_keys: bool = False) -> None:
    """Commit one batch: data tables first, ``assets`` last (see the module docstring for why).

    ``new_keys``: the caller knows that OUT holds none of the batch's URIs and content hashes and that
    no other job writes to it (see :class:`KnownKeys`): the rows are appended.
    """
    assets = tables["assets"]
    ids = assets["asset_id"].to_pylist()
    for name in DATA_TABLES:
        replace_rows(out, name, tables[name], None if new_keys else {"asset_id": ids, "job_id": [job_id]})
    replace_rows(out, "assets", assets, None if new_keys else {"uri": assets["uri"].to_pylist()})


class KnownKeys:
    """The URIs and content hashes OUT holds, kept up to date by a job's one committer: a batch of keys
    never seen is appended instead of replacing.

    Appending is only safe while nobody else writes. Any other job's mark in ``_jobs/running`` (a live
    job, or one that died and may have left data rows without their ``assets`` row) makes a commit a
    replacement; a commit of another job since ours (the ``assets`` version moved) makes the keys be
    read again. ``compact`` clears dead jobs' marks.
    """

    def __init__(self, out: str, job_id: str):
        self.out, self.job_id = out, job_id
        self._log: Any = None  # the assets table, once it exists: refreshed by reading only new log entries
        self._read()

    def _latest(self) -> Optional[int]:
        """The latest ``assets`` version (None before its first commit)."""
        if self._log is None:
            from deltalake import DeltaTable
            from deltalake.exceptions import TableNotFoundError

            try:
                self._log = DeltaTable(table_uri(self.out, "assets"), storage_options=storage.delta_options(self.out))
            except TableNotFoundError:
                return None
        else:
            self._log.update_incremental()
        return self._log.version()

    def _read(self) -> None:
        self.version = self._latest()
        held = (self._log.to_pyarrow_dataset() if self._log is not None else open_table(self.out, "assets")).to_table(
            columns=["uri", "asset_id"])
        self.uris, self.ids = set(held["uri"].to_pylist()), set(held["asset_id"].to_pylist())

    def all_new(self, assets: pa.Table) -> bool:
        """Whether to append the batch, which is then committed (one more ``assets`` version)."""
        if [j for j in storage.list_names(_running(self.out)) if j != self.job_id]:
            new = False
        else:
            if self._latest() != self.version:
                self._read()
            uris, ids = set(assets["uri"].to_pylist()), set(assets["asset_id"].to_pylist())
            new = not (uris & self.uris or ids & self.ids)
        self.uris.update(assets["uri"].to_pylist())
        self.ids.update(assets["asset_id"].to_pylist())
        self.version = (self.version if self.version is not None else -1) + 1
        return new



def open_table(out: str, table: str, version: Optional[int] = None) -> pads.Dataset:
    """The table's latest (or given) version as a pyarrow dataset: scanned in batches, not loaded whole."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(out, table), version=version, storage_options=storage.delta_options(out))
    except TableNotFoundError:  # nothing committed to it yet
        return pads.dataset(TABLES[table].empty_table())
    return dt.to_pyarrow_dataset()


def read_table(out: str, table: str, columns: Optional[list[str]] = None) -> pa.Table:
    """The current rows of a table (what any Delta reader sees at the latest version), in our schema."""
    dataset = open_table(out, table)
    schema = TABLES[table] if columns is None else pa.schema([TABLES[table].field(c) for c in columns])
    present = set(dataset.schema.names)
    got = dataset.to_table(columns=[c for c in schema.names if c in present])
    for f in schema:  # a nullable column added after the table was last written: null in its rows
        if f.name not in present and f.nullable:
            got = got.append_column(f.name, pa.nulls(got.num_rows, f.type))
    return got.select(schema.names).cast(schema)


def _done(fingerprint: str, retry_errors: bool) -> pc.Expression:
    """Assets rows that count as done for a run under ``fingerprint``."""
    done = pc.field("config_fingerprint") == fingerprint
    if retry_errors:
        # Kleene logic: an ok row's null ``retryable`` leaves "error AND retryable" false, so it stays done.
        done = done & ~((pc.field("status") == "error") & pc.field("retryable"))
    return done


def committed(out: str, fingerprint: str, retry_errors: bool = False,
              asset_ids: Optional[Iterable[str]] = None) -> pa.Table:
    """(uri, asset_id, bytes, modified) of the inputs committed under this config fingerprint, in one
    filtered scan of ``assets`` (of those contents only, given ``asset_ids``). With ``retry_errors``,
    transient failures (``retryable``) are not done."""
    done = _done(fingerprint, retry_errors)
    if asset_ids is not None:
        done = done & pc.field("asset_id").isin(pa.array(sorted(set(asset_ids)), pa.string()))
    return open_table(out, "assets").to_table(columns=["uri", "asset_id", "bytes", "modified"], filter=done)


def share_content(out: str, fingerprint: str, job_id: str, files: Mapping[str, tuple[str, int, Any]]) -> pa.Table:
    """Commit an ``assets`` row for each of ``files`` (uri → (asset_id, bytes, modified)) whose content is
    committed under another URI: the same outcome, pointing at the same data rows. Returns the rows
    committed; files whose content is not committed are left out."""
    if not files:
        return TABLES["assets"].empty_table()
    ids = pa.array(sorted({a for a, _, _ in files.values()}), pa.string())
    source = open_table(out, "assets").to_table(filter=_done(fingerprint, False) & pc.field("asset_id").isin(ids))
    first = {r["asset_id"]: r for r in source.to_pylist()}
    now = datetime.now(timezone.utc)
    rows = [{**first[a], "uri": uri, "bytes": size, "modified": modified, "job_id": job_id, "committed_at": now}
            for uri, (a, size, modified) in sorted(files.items()) if a in first]
    table = pa.Table.from_pylist(rows, schema=TABLES["assets"])
    if rows:
        replace_rows(out, "assets", table, {"uri": table["uri"].to_pylist()})
    return table


def committed_keys(out: str, fingerprint: str, retry_errors: bool = False) -> set[tuple[str, str]]:
    """(uri, asset_id) pairs already committed under this config fingerprint: a re-run skips them."""
    return keys_of(committed(out, fingerprint, retry_errors))


def keys_of(done: pa.Table) -> set[tuple[str, str]]:
    return set(zip(done["uri"].to_pylist(), done["asset_id"].to_pylist()))


def unchanged_of(done: pa.Table) -> set[tuple[str, int, Any]]:
    """(uri, bytes, modified) of committed inputs: a listed file that matches is skipped unread."""
    return {(u, b, m) for u, b, m in zip(done["uri"].to_pylist(), done["bytes"].to_pylist(),
                                         done["modified"].to_pylist()) if m is not None}


def _running(out: str) -> str:
    return storage.join(out, "_jobs", "running")


def claims_root(out: str) -> str:
    """Where jobs lease the inputs they process (flows/lease.py)."""
    return storage.join(out, "_jobs", "claims")


def running_mark(out: str, job_id: str) -> str:
    """Where ``job_id`` marks itself as writing to OUT (flows/lease.py:Heartbeat), so that ``compact`` waits."""
    return storage.join(_running(out), job_id)


def running_jobs(out: str) -> list[str]:
    """Jobs that marked themselves as writing to OUT within the last STALE_JOB_HOURS."""
    return [j for j in storage.list_names(_running(out))
            if storage.age_s(storage.join(_running(out), j)) < STALE_JOB_HOURS * 3600]


def compact(out: str, retain_hours: float = 168.0) -> dict[str, dict[str, int]]:
    """Remove data rows no ``assets`` row points at, merge small files, and delete files no version
    younger than ``retain_hours`` references (time travel reaches back that far, no further).

    Refused while a job writes to OUT: its batch between data and assets commits would look orphaned.
    """
    from deltalake import DeltaTable

    busy = running_jobs(out)
    if busy:
        raise OutputError(f"jobs are writing to {out}: {', '.join(busy)}; compact once they finish (a job that "
                          f"died stops counting {STALE_JOB_HOURS:g} h after it started)")
    options = storage.delta_options(out)
    live = set(read_table(out, "assets", ["asset_id"])["asset_id"].to_pylist())
    report: dict[str, dict[str, int]] = {}
    for table in TABLES:
        if not exists(out, table):
            continue
        dt = DeltaTable(table_uri(out, table), storage_options=options)
        removed = 0
        if table != "assets":
            stale = set(open_table(out, table).to_table(columns=["asset_id"])["asset_id"].to_pylist()) - live
            if stale:
                removed = dt.delete(f"asset_id IN ({', '.join(_sql(a) for a in sorted(stale))})")["num_deleted_rows"]
        merged = dt.optimize.compact()
        vacuumed = dt.vacuum(retention_hours=int(retain_hours), enforce_retention_duration=False, dry_run=False)
        report[table] = {"orphan_rows_removed": removed, "files_added": merged.get("numFilesAdded", 0),
                         "files_removed": merged.get("numFilesRemoved", 0), "files_vacuumed": len(vacuumed)}
    if not report:
        raise OutputError(f"{out} holds no corpusflow tables: name the OUT of a job")
    for job in storage.list_names(_running(out)):  # dead jobs' marks: their orphans are gone now
        storage.delete(storage.join(_running(out), job))
    storage.delete_tree(claims_root(out))  # no job runs: no lease is held
    return report
