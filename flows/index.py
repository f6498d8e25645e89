"""The search index job: the committed tables of OUT → search units → vectors → ``OUT/index/<version>/``.

``corpusflow index OUT`` runs it, and so does ``corpusflow run`` at its end (``index.enabled``).
Ray Data reads the current files of the ``timeline``, ``pages`` and ``summaries`` Delta tables (as
flows/tables.py opens them), brings each asset's rows together (one groupby), cuts them into units
(actors/search/units.py), drops units the index already holds, and embeds the rest in an actor pool
(the ``embed`` stage through the Ray Data adapter; CPUs/GPUs from ``index.embed``). The driver is the
one writer of the index version (actors/search/store.py): it adds the new units, deletes the units
no longer cut from the tables (changed or removed assets), brings the BM25 and vector indices up to
date and points ``_latest.json`` at this version.

Incremental: a unit's id hashes its asset, place, language and text, so an unchanged unit is never
embedded twice; a new embedding model has a new version (a fresh folder), the old one is untouched.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from corpusflow.actors.engines.embed import index_version, load_embedder
from corpusflow.actors.search.embedder_check import measure
from corpusflow.actors.search.store import IndexWriter, latest, version_uri, with_search_columns
from corpusflow.actors.search.units import AssetInfo, units_of_asset
from corpusflow.contracts import storage
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.registry import EMBED
from corpusflow.contracts.search import UNITS, IndexConfig
from corpusflow.flows.adapter import add_stage
from corpusflow.flows.tables import exists, open_table, read_table, table_uri

# One row shape for the three tables, so that one groupby brings an asset's rows together.
_ROW = pa.schema([("asset_id", pa.string()), ("table", pa.string()), ("source", pa.string()), ("detail", pa.string()),
                  ("t_start", pa.float64()), ("t_end", pa.float64()), ("page", pa.int32()), ("language", pa.string()),
                  ("text", pa.string())])
_READ = {"timeline": ["asset_id", "source", "detail", "t_start", "t_end", "language", "text"],
         "pages": ["asset_id", "page", "text"], "summaries": ["asset_id", "summary", "language"]}


@dataclass
class IndexSummary:
    version: str
    location: str
    units: int = 0
    embedded: int = 0
    deleted: int = 0
    errors: int = 0
    wall_s: float = 0.0
    embed_s: float = 0.0
    embedder_check: Optional[dict[str, Any]] = None  # actors/search/embedder_check.py's probe of the embedder

    def to_text(self) -> str:
        rate = f", {self.embedded / self.embed_s:.1f} units/s embedding" if self.embed_s > 0 and self.embedded else ""
        text = (f"index {self.version} at {self.location}: {self.units} units ({self.embedded} embedded, "
                f"{self.deleted} removed, {self.errors} failed) in {self.wall_s:.1f} s{rate}")
        check = self.embedder_check
        if check:
            use = "used in hybrid ranking" if check["trusted"] else "NOT used: hybrid search ranks by words alone"
            text += (f"\n  embedder matched {check['top1']:.0%} of {check['probe_pairs']} probe questions to their "
                     f"answers (chance {check['chance']:.0%}): {use}")
        return text


def live_assets(out: str) -> dict[str, AssetInfo]:
    """asset_id → (first URI, kind, duration) of the assets a search can point at (ok media and PDFs)."""
    assets = read_table(out, "assets", ["asset_id", "uri", "kind", "duration_s", "status"])
    info: dict[str, AssetInfo] = {}
    for row in sorted(assets.to_pylist(), key=lambda r: r["uri"]):
        if row["status"] == "ok" and row["kind"] in ("video", "audio", "pdf") and row["asset_id"] not in info:
            info[row["asset_id"]] = AssetInfo(row["uri"], row["kind"], row["duration_s"])
    return info


def _files(out: str, table: str) -> list[str]:
    """Filesystem paths of the table's current Parquet files (its latest Delta version)."""
    if not exists(out, table):
        return []
    root = storage.filesystem(table_uri(out, table))[1]
    return [f"{root}/{name}" for name in open_table(out, table).files]


def _as_rows(table: str) -> Callable[[pa.Table], pa.Table]:
    def conform(batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        null_f, null_s = pa.nulls(n, pa.float64()), pa.nulls(n, pa.string())
        text = batch["summary"] if table == "summaries" else batch["text"]
        cols = {"asset_id": batch["asset_id"], "table": pa.array([table] * n, pa.string()),
                "source": batch["source"] if table == "timeline" else null_s,
                "detail": batch["detail"] if table == "timeline" else null_s,
                "t_start": batch["t_start"] if table == "timeline" else null_f,
                "t_end": batch["t_end"] if table == "timeline" else null_f,
                "page": batch["page"].cast(pa.int32()) if table == "pages" else pa.nulls(n, pa.int32()),
                "language": batch["language"] if table != "pages" else null_s, "text": text}
        return pa.table(cols, schema=_ROW)
    return conform


def _cut(assets_ref: Any, cfg: IndexConfig) -> Callable[[pa.Table], pa.Table]:
    """map_groups function: one asset's rows → its units (plus the empty error columns stages expect)."""
    cache: dict[str, dict[str, AssetInfo]] = {}

    def cut(rows: pa.Table) -> pa.Table:
        import ray

        if "assets" not in cache:
            cache["assets"] = ray.get(assets_ref)
        asset_id = rows["asset_id"][0].as_py()
        units: list[dict[str, Any]] = []
        info = cache["assets"].get(asset_id)
        if info is not None:  # rows of an asset no live assets row points at are not searchable
            by_table: dict[str, list[dict[str, Any]]] = {"timeline": [], "pages": [], "summaries": []}
            for r in rows.to_pylist():
                by_table[r["table"]].append({**r, "summary": r["text"]})
            units = units_of_asset(asset_id, info, by_table["timeline"], by_table["pages"], by_table["summaries"], cfg)
        out = pa.Table.from_pylist(units, schema=UNITS)
        empty = pa.array([""] * out.num_rows, pa.string())
        return out.append_column("error_stage", empty).append_column("error", empty)
    return cut


def _keep_new(ids_ref: Any) -> Callable[[pa.Table], pa.Table]:
    cache: dict[str, set[str]] = {}

    def keep(batch: pa.Table) -> pa.Table:
        import ray

        if "ids" not in cache:
            cache["ids"] = ray.get(ids_ref)
        mask = [u not in cache["ids"] for u in batch["unit_id"].to_pylist()]
        return batch.filter(pa.array(mask, pa.bool_()))
    return keep


def _arrow(batch: dict[str, np.ndarray]) -> tuple[pa.Table, pa.Array]:
    """Embedded units back to the unit schema (NaN from the numpy hop becomes null again) and their vectors."""
    cols = {}
    for f in UNITS:
        v = batch[f.name]
        if pa.types.is_floating(f.type) or pa.types.is_integer(f.type):
            arr = np.asarray(v, dtype=np.float64)
            cols[f.name] = pa.array(arr, mask=np.isnan(arr)).cast(f.type)
        else:
            cols[f.name] = pa.array([str(x) for x in v], pa.string())
    vectors = [np.asarray(x, np.float32) for x in batch["vector"]]
    return pa.table(cols, schema=UNITS), pa.array(vectors, pa.list_(pa.float32()))


def table_versions(out: str) -> dict[str, int]:
    """The Delta version of each table the index reads: equal versions mean nothing to do."""
    from deltalake import DeltaTable

    return {t: DeltaTable(table_uri(out, t), storage_options=storage.delta_options(out)).version()
            for t in ("assets", *_READ) if exists(out, t)}


def build_index(out: str, config: StageConfig, index: IndexConfig, address: Optional[str] = None,
                progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> IndexSummary:
    """Bring OUT's search index for the profile's embedding model up to date with OUT's tables."""
    import ray

    from corpusflow.flows.job import init_ray

    t0 = time.time()
    model = config.profile.embedding
    version = index_version(model)
    summary = IndexSummary(version=version, location=version_uri(out, version))
    tables_now = table_versions(out)
    done = latest(out, version)
    if done is not None and done.get("tables") == tables_now:  # no commit since: not even Ray is needed
        summary.units, summary.wall_s = int(done["units"]), time.time() - t0
        summary.embedder_check = done.get("embedder_check")
        progress(f"corpusflow index: the tables are unchanged since index {version} was written")
        return summary
    assets = live_assets(out)
    init_ray(address)
    parts = []
    fs = storage.filesystem(out)[0]
    for table, columns in _READ.items():
        files = _files(out, table)
        if files:
            ds = ray.data.read_parquet(files, filesystem=fs).select_columns(columns)
            parts.append(ds.map_batches(_as_rows(table), batch_format="pyarrow", batch_size=None))
    # The probe's answer is a property of the model, so once per version (a version is one model).
    summary.embedder_check = (done or {}).get("embedder_check") or measure(load_embedder(model, config.model_cache))
    with IndexWriter(out, version, model.model_dump(), summary.embedder_check) as writer:
        have = writer.unit_ids()
        if not parts:
            units = None
        else:
            rows = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
            units = rows.groupby("asset_id").map_groups(_cut(ray.put(assets), index), batch_format="pyarrow").materialize()
        current: set[str] = set()
        if units is not None:
            for batch in units.select_columns(["unit_id"]).iter_batches(batch_format="pyarrow", batch_size=65536):
                current.update(batch["unit_id"].to_pylist())
        summary.units = len(current)
        new = current - have
        progress(f"corpusflow index: {len(assets)} assets, {len(current)} units, {len(new)} to embed with "
                 f"{model.source} ({model.engine}); writing {summary.location}")
        if units is not None and new:
            todo = units.map_batches(_keep_new(ray.put(have)), batch_format="pyarrow", batch_size=None)
            embedded = add_stage(todo, EMBED, config, resources=index.embed)
            t1 = time.time()
            for batch in embedded.iter_batches(batch_format="numpy", batch_size=4096):
                failed = np.asarray([bool(e) for e in batch["error"]])
                summary.errors += int(failed.sum())
                keep = {k: v[~failed] for k, v in batch.items()}
                if not len(keep["unit_id"]):
                    continue
                table, vectors = _arrow(keep)
                writer.add(with_search_columns(table, vectors))
                summary.embedded += table.num_rows
                progress(f"corpusflow index: {summary.embedded}/{len(new)} units embedded ({time.time() - t0:.0f} s)")
            summary.embed_s = time.time() - t1
        summary.deleted = writer.delete(have - current)
        summary.units = writer.finish(index.vector_index_rows, tables_now)
    summary.wall_s = time.time() - t0
    storage.write_json(json.dumps(asdict(summary), indent=1), storage.join(summary.location, "_last_run.json"))
    return summary
