"""Turn finished batches into table rows and commit them so a re-run never duplicates or half-writes.

Layout under OUT: ``<table>/<fingerprint>-<batchkey>.parquet`` for every table. A batch's data files are
written first and its ``assets`` file last, each atomically; the assets file is the commit marker: a
data file without an assets file of the same name is an orphan of an interrupted run and is removed
by :func:`remove_orphans` before the next run writes anything. The batch key hashes the batch's
(uri, asset_id) pairs, so a retried batch overwrites its own files instead of adding new ones.
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpusflow.contracts import storage
from corpusflow.contracts.schemas import TABLES

DATA_TABLES = ("timeline", "summaries", "pages", "metrics")


def batch_key(batch: Mapping[str, np.ndarray]) -> str:
    pairs = sorted(f"{u}|{a}" for u, a in zip(batch["uri"], batch["asset_id"]))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:24]


def commit(tables: Mapping[str, pa.Table], out: str, name: str) -> None:
    """Write the data tables, then the assets file that makes them visible."""
    for t in DATA_TABLES:
        if tables[t].num_rows:
            storage.write_parquet_atomic(tables[t], storage.join(out, t, name))
    storage.write_parquet_atomic(tables["assets"], storage.join(out, "assets", name))


def remove_orphans(out: str) -> int:
    """Delete data files whose batch never committed (the job died between data and assets)."""
    committed = set(storage.list_parquet(storage.join(out, "assets")))
    removed = 0
    for t in DATA_TABLES:
        for name in storage.list_parquet(storage.join(out, t)):
            if name not in committed:
                storage.delete(storage.join(out, t, name))
                removed += 1
    return removed


def read_table(out: str, table: str) -> pa.Table:
    """A committed table: only rows of batches whose assets file exists, of the newest run per input.

    Assets superseded by a later run with another config fingerprint are left out, together with the
    rows that belong to them.
    """
    committed = storage.list_parquet(storage.join(out, "assets"))
    if not committed:
        return TABLES[table].empty_table()
    assets = pa.concat_tables([_with_file(storage.read_parquet(storage.join(out, "assets", n)), n)
                               for n in committed])
    order = pc.sort_indices(assets, [("uri", "ascending"), ("committed_at", "descending")])
    assets = assets.take(order)
    uris = assets["uri"].to_pylist()
    keep = [i for i, u in enumerate(uris) if i == 0 or u != uris[i - 1]]
    current = assets.take(pa.array(keep, pa.int64()))
    if table == "assets":
        return current.drop_columns(["_file"]).select(TABLES["assets"].names)
    live = {(f, a) for f, a in zip(current["_file"].to_pylist(), current["asset_id"].to_pylist())}
    parts = []
    for name in storage.list_parquet(storage.join(out, table)):
        if name not in committed:
            continue
        part = storage.read_parquet(storage.join(out, table, name))
        mask = [(name, a) in live for a in part["asset_id"].to_pylist()]
        parts.append(part.filter(pa.array(mask, pa.bool_())))
    return pa.concat_tables(parts).cast(TABLES[table]) if parts else TABLES[table].empty_table()


def _with_file(table: pa.Table, name: str) -> pa.Table:
    return table.append_column("_file", pa.array([name] * table.num_rows, pa.string()))


def committed_keys(out: str, fingerprint: str) -> set[tuple[str, str]]:
    """(uri, asset_id) pairs already committed under this config fingerprint: a re-run skips them."""
    keys: set[tuple[str, str]] = set()
    for name in storage.list_parquet(storage.join(out, "assets")):
        if not name.startswith(f"{fingerprint}-"):
            continue
        t = storage.read_parquet(storage.join(out, "assets", name)).select(["uri", "asset_id"])
        keys.update(zip(t["uri"].to_pylist(), t["asset_id"].to_pylist()))
    return keys
