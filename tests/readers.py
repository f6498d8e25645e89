"""Readers of our tables written without corpusflow code, as other engines read a Delta table."""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pyarrow as pa


def live_files(table_dir: Path) -> list[Path]:
    """The Parquet files of the table's latest version, from the open protocol alone: replay the log's
    add/remove actions (what Spark, Trino or DuckDB's delta reader do)."""
    live: dict[str, bool] = {}
    for log in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = True
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return [table_dir / urllib.parse.unquote(p) for p in live]


def duckdb_read(table_dir: Path) -> pa.Table | None:
    """The latest version through DuckDB's SQL over the live files (None: no live file)."""
    import duckdb

    files = [str(p) for p in live_files(table_dir)]
    if not files:
        return None
    return duckdb.connect().execute("SELECT * FROM read_parquet(?, union_by_name = true)", [files]).to_arrow_table()
