"""The search index: one LanceDB table of units per index version, under ``OUT/index/<version>/``.

A version is one embedding model (and one way of cutting units): a new model writes a new version
beside the old ones, which stay searchable until deleted. ``OUT/index/_latest.json`` names the
version the last finished index job wrote; readers open that one and notice when it changes.

One writer per version: the index job holds ``OUT/index/<version>/_writer.json`` while it writes and
refuses to start while another job's lease there is younger than LEASE_HOURS. Lance commits are
atomic (a new manifest per version of the table), so readers never see a half-written batch.

Columns: the unit schema (contracts/search.py), the unit's text again in the full-text column of its
language (``text_en``, ``text_es``... or ``text_other``), each with a BM25 index tokenised for that
language, and ``vector`` (cosine; IVF-PQ once the table reaches ``index.vector_index_rows``). The
columns queries filter on carry scalar indices (SCALAR_INDICES), so a pre-filter is an index lookup
rather than a scan of every unit's values.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from corpusflow.contracts import storage
from corpusflow.contracts.search import FTS_COLUMNS, FTS_LANGUAGES, FTS_OTHER, UNITS, fts_column

TABLE = "units"
LATEST = "_latest.json"
VERSION = "_version.json"
LEASE_HOURS = 6.0
# Filter columns (query.where_clause) → scalar index: bitmaps for the few-valued ones, B-trees for ids and ranges.
SCALAR_INDICES = {"modality": "BITMAP", "kind": "BITMAP", "language": "BITMAP", "asset_id": "BTREE",
                  "t_start": "BTREE", "t_end": "BTREE", "duration_s": "BTREE"}


class SearchIndexError(RuntimeError):
    """No index to search, or one the caller cannot write."""


def index_root(out: str) -> str:
    return storage.join(out, "index")


def version_uri(out: str, version: str) -> str:
    return storage.join(index_root(out), version)


def _options(uri: str) -> dict[str, str]:
    """LanceDB storage options for ``uri``: the same S3 endpoint and region as the tables (credentials from the chain)."""
    if not storage.is_s3(uri):
        return {}
    delta = storage.delta_options(uri)
    options = {"region": delta["AWS_REGION"]}
    if "AWS_ENDPOINT_URL" in delta:
        options["endpoint"] = delta["AWS_ENDPOINT_URL"]
        options["allow_http"] = delta.get("AWS_ALLOW_HTTP", "false")
    return options


def connect(out: str, version: str) -> Any:
    import lancedb

    uri = version_uri(out, version)
    if not storage.is_s3(uri):
        storage.filesystem(uri)[0].create_dir(storage.filesystem(uri)[1], recursive=True)
    return lancedb.connect(uri, storage_options=_options(uri) or None)


def schema(dim: int) -> pa.Schema:
    fts = [pa.field(c, pa.string()) for c in FTS_COLUMNS]
    return pa.schema([*UNITS, *fts, pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)])


def with_search_columns(units: pa.Table, vectors: pa.Array) -> pa.Table:
    """``units`` plus each unit's text in its language's full-text column (null in the others) and its vector
    (``vectors``: one list of float32 per unit, all of one length)."""
    columns = {name: units[name] for name in UNITS.names}
    target = [fts_column(lang) for lang in units["language"].to_pylist()]
    text = units["text"].to_pylist()
    for col in FTS_COLUMNS:
        columns[col] = pa.array([t if c == col else None for t, c in zip(text, target)], pa.string())
    dim = len(vectors[0]) if len(vectors) else 0
    flat = pc.cast(pc.list_flatten(vectors), pa.float32())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table(columns, schema=schema(dim))


def latest(out: str, version: Optional[str] = None) -> Optional[dict[str, Any]]:
    """What the newest version's (or ``version``'s) last index job recorded: version, model, dim, units,
    updated_at; None when there is none."""
    uri = storage.join(index_root(out), LATEST) if version is None else storage.join(version_uri(out, version), VERSION)
    if not storage.exists(uri):
        return None
    with storage.open_input(uri) as f:
        return json.loads(f.read().decode())


class IndexWriter:
    """The one writer of an index version, for the duration of a ``with`` block."""

    def __init__(self, out: str, version: str, model: dict[str, Any], embedder_check: Optional[dict[str, Any]] = None):
        self.out, self.version, self.model, self.embedder_check = out, version, model, embedder_check
        self.table: Any = None
        self.lease = storage.join(version_uri(out, version), "_writer.json")
        self.owner = uuid.uuid4().hex

    def __enter__(self) -> "IndexWriter":
        if storage.exists(self.lease) and storage.age_s(self.lease) < LEASE_HOURS * 3600:
            raise SearchIndexError(f"another index job writes {version_uri(self.out, self.version)} (lease "
                              f"{self.lease}); one writer per index version. A job that died releases it "
                              f"after {LEASE_HOURS:g} h, or delete the lease file")
        storage.write_json(json.dumps({"owner": self.owner, "since": time.time()}), self.lease)
        self.db = connect(self.out, self.version)
        if TABLE in self.db.list_tables().tables:
            self.table = self.db.open_table(TABLE)
        return self

    def __exit__(self, *exc: Any) -> None:
        storage.delete(self.lease)

    def unit_ids(self) -> set[str]:
        if self.table is None:
            return set()
        rows = self.table.count_rows()
        return set(self.table.search().select(["unit_id"]).limit(max(rows, 1)).to_arrow()["unit_id"].to_pylist())

    def delete(self, unit_ids: Iterable[str]) -> int:
        ids = sorted(unit_ids)
        for i in range(0, len(ids), 1000):
            quoted = ", ".join("'" + u.replace("'", "''") + "'" for u in ids[i:i + 1000])
            self.table.delete(f"unit_id IN ({quoted})")
        return len(ids)

    def add(self, rows: pa.Table) -> None:
        """Append units (with search columns); the first batch creates the table, its vectors fix the dimension."""
        if not rows.num_rows:
            return
        if self.table is None:
            self.table = self.db.create_table(TABLE, rows)
        else:
            self.table.add(rows)

    def finish(self, vector_index_rows: int, tables: dict[str, int]) -> int:
        """Bring the indices up to date, compact, and make this version the one readers open; returns the unit
        count. ``tables``: the Delta versions of the tables this state was cut from (a later run with the
        same versions has nothing to do)."""
        from lancedb.index import FTS, IvfPq

        if self.table is None:  # nothing was ever cut from the tables: no version to point readers at
            return 0
        dim = self.table.schema.field("vector").type.list_size
        existing = {i.name for i in self.table.list_indices()}
        for col in FTS_COLUMNS:
            if f"fts_{col}" in existing:
                continue
            if col == FTS_OTHER:
                config = FTS(stem=False, remove_stop_words=False, ascii_folding=True)
            else:
                config = FTS(language=FTS_LANGUAGES[col.removeprefix("text_")], stem=True, remove_stop_words=True,
                             ascii_folding=True)
            self.table.create_index(col, config=config, name=f"fts_{col}")
        for col, kind in SCALAR_INDICES.items():
            if f"{col}_idx" not in existing:
                self.table.create_scalar_index(col, index_type=kind, name=f"{col}_idx")
        rows = self.table.count_rows()
        if rows >= vector_index_rows and "vector_idx" not in existing:
            self.table.create_index("vector", config=IvfPq(distance_type="cosine", num_sub_vectors=dim // 8),
                                    name="vector_idx")
        self.table.optimize()  # merges small fragments and adds the rows written since into every index
        # The languages present: queries search only their full-text columns (each index searched costs time).
        fts_columns = [c for c in FTS_COLUMNS if self.table.count_rows(f"{c} IS NOT NULL")]
        info = json.dumps({"version": self.version, "model": self.model, "dim": dim, "units": rows, "fts_columns": fts_columns,
                           "embedder_check": self.embedder_check, "tables": tables, "updated_at": time.time()})
        storage.write_json(info, storage.join(version_uri(self.out, self.version), VERSION))
        storage.write_json(info, storage.join(index_root(self.out), LATEST))  # last: readers switch now
        return rows


class IndexReader:
    """Read-only access to the newest index version; :meth:`refresh` follows ``_latest.json``."""

    def __init__(self, out: str, version: Optional[str] = None):
        self.out, self.pinned = out, version
        self.version = ""
        self.info: dict[str, Any] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Reopen when a newer version (or newer data of this one) was written; True when it did."""
        info = latest(self.out, self.pinned)
        if info is None:
            what = f"no index version {self.pinned}" if self.pinned else "no search index yet"
            raise SearchIndexError(f"{self.out} has {what}: run `corpusflow index {self.out}`")
        if not force and info == self.info:
            return False
        db = connect(self.out, info["version"])
        if TABLE not in db.list_tables().tables:
            raise SearchIndexError(f"index version {info['version']} under {index_root(self.out)} holds no units")
        self.table, self.version, self.info = db.open_table(TABLE), info["version"], info
        self.indexed = {i.name for i in self.table.list_indices()}
        self.fts_columns = tuple(info.get("fts_columns", FTS_COLUMNS))  # indices written before it was recorded: all
        return True

    def text_search(self, query: str, where: Optional[str], k: int, columns: list[str], prefilter: bool = True,
                    languages: tuple[str, ...] = ()) -> pa.Table:
        """BM25 over every language's full-text column (each tokenises the query its own way), or only the
        columns of ``languages`` (the units of other languages are null there), best first.
        ``prefilter=False``: the best ``k`` by BM25, then ``where`` on those (fewer than ``k`` may remain)."""
        from lancedb.query import MultiMatchQuery

        fts = sorted({fts_column(lang) for lang in languages}) if languages else list(self.fts_columns)
        search = self.table.search(MultiMatchQuery(query, fts), query_type="fts")
        if where:
            search = search.where(where, prefilter=prefilter)
        return search.select([*columns, "_score"]).limit(k).to_arrow()

    def texts(self, unit_ids: list[str]) -> dict[str, str]:
        """The full text of the given units (hits carry snippets only)."""
        if not unit_ids:
            return {}
        quoted = ", ".join("'" + u.replace("'", "''") + "'" for u in unit_ids)
        got = self.table.search().where(f"unit_id IN ({quoted})").select(["unit_id", "text"]).limit(len(unit_ids))
        rows = got.to_arrow()
        return dict(zip(rows["unit_id"].to_pylist(), rows["text"].to_pylist()))

    def vector_search(self, vector: Any, where: Optional[str], k: int, columns: list[str], prefilter: bool = True) -> pa.Table:
        """Nearest units by cosine distance, best first (IVF-PQ with exact re-ranking when indexed);
        ``prefilter`` as in :meth:`text_search`."""
        search = self.table.search(vector, vector_column_name="vector").distance_type("cosine")
        if "vector_idx" in self.indexed:
            search = search.nprobes(20).refine_factor(4)
        if where:
            search = search.where(where, prefilter=prefilter)
        return search.select([*columns, "_distance"]).limit(k).to_arrow()
