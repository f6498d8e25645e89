"""Arrow schemas of the output tables, declared once and enforced on every write.

Tables are the product: ``assets`` (exactly one row per input file), ``timeline`` (every time-anchored
text on one axis), ``summaries``, ``pages`` and ``metrics``. A row of any other table belongs to a
committed asset only when ``assets`` holds its ``asset_id``; see flows/tables.py.
"""
from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa

KINDS = ("video", "audio", "pdf", "other")
STATUSES = ("ok", "error", "skipped")
TIMELINE_SOURCES = ("asr", "vlm", "shot")
TIMELINE_DETAILS = ("segment", "word", "chapter", "keyframe", "boundary")

ASSETS = pa.schema([
    pa.field("asset_id", pa.string(), nullable=False, metadata={"doc": "sha256 of the file's bytes"}),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False, metadata={"doc": "video|audio|pdf|other, sniffed from content"}),
    pa.field("format", pa.string(), nullable=False, metadata={"doc": "container or file format from content"}),
    pa.field("bytes", pa.int64(), nullable=False),
    pa.field("duration_s", pa.float64(), metadata={"doc": "media duration; null for PDFs"}),
    pa.field("pages", pa.int32(), metadata={"doc": "page count; null for media"}),
    pa.field("status", pa.string(), nullable=False, metadata={"doc": "ok|error|skipped"}),
    pa.field("error_stage", pa.string(), metadata={"doc": "stage that failed; null unless status=error"}),
    pa.field("error", pa.string(), metadata={"doc": "why, in a sentence; null when ok"}),
    pa.field("retryable", pa.bool_(), metadata={"doc": "the failure was transient (throttling, timeouts, GPU memory "
                                                         "full) or the machine's (a system package or model missing, "
                                                         "a full disk): `corpusflow run --retry-errors` processes it "
                                                         "again; null unless status=error"}),
    pa.field("modified", pa.timestamp("us", tz="UTC"), metadata={"doc": "the input's last-modified time when it "
                                                                 "was read: a re-run skips an input whose uri, "
                                                                 "bytes and modified time are unchanged"}),
    pa.field("config_fingerprint", pa.string(), nullable=False),
    pa.field("job_id", pa.string(), nullable=False),
    pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
])

TIMELINE = pa.schema([
    pa.field("asset_id", pa.string(), nullable=False),
    pa.field("t_start", pa.float64(), nullable=False),
    pa.field("t_end", pa.float64(), nullable=False),
    pa.field("source", pa.string(), nullable=False, metadata={"doc": "asr|vlm|shot"}),
    pa.field("detail", pa.string(), nullable=False, metadata={"doc": "segment|word (asr), chapter|keyframe (vlm), boundary (shot)"}),
    pa.field("language", pa.string()),
    pa.field("text", pa.string(), nullable=False),
])

SUMMARIES = pa.schema([
    pa.field("asset_id", pa.string(), nullable=False),
    pa.field("summary", pa.string(), nullable=False),
    pa.field("language", pa.string()),
    pa.field("model", pa.string(), nullable=False),
    pa.field("engine", pa.string(), nullable=False),
    pa.field("frames_used", pa.int32(), nullable=False),
    pa.field("windows", pa.int32(), nullable=False, metadata={"doc": "1 when the whole video fit one context"}),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("raw_json", pa.string(), nullable=False, metadata={"doc": "the model's validated JSON answer"}),
])

PAGES = pa.schema([
    pa.field("asset_id", pa.string(), nullable=False),
    pa.field("page", pa.int32(), nullable=False, metadata={"doc": "1-based"}),
    pa.field("text", pa.string(), nullable=False),
    pa.field("images", pa.int32(), nullable=False),
    pa.field("chars", pa.int32(), nullable=False),
    pa.field("ocr_language", pa.string(), metadata={"doc": "Tesseract languages the page's text was read with "
                                                             "by OCR (a scan without a text layer), e.g. eng+deu; "
                                                             "null for text from the PDF's text layer"}),
])

METRICS = pa.schema([
    pa.field("job_id", pa.string(), nullable=False),
    pa.field("asset_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("wall_s", pa.float64(), nullable=False),
    pa.field("device_s", pa.float64(), nullable=False, metadata={"doc": "seconds holding an accelerator (GPU), else CPU"}),
    pa.field("accelerator", pa.string(), nullable=False, metadata={"doc": "GPU type (e.g. H100, A10G) or 'cpu'"}),
    pa.field("media_s", pa.float64(), metadata={"doc": "seconds of video/audio this stage processed"}),
    pa.field("pages", pa.int32()),
    pa.field("usd_per_hour", pa.float64(), nullable=False),
    pa.field("cost_usd", pa.float64(), nullable=False, metadata={"doc": "device_s x accelerator hourly price"}),
])

TABLES: dict[str, pa.Schema] = {
    "assets": ASSETS, "timeline": TIMELINE, "summaries": SUMMARIES, "pages": PAGES, "metrics": METRICS,
}


class SchemaError(ValueError):
    """Rows that do not fit a declared table schema."""


def conform(table: str, columns: Mapping[str, Any]) -> pa.Table:
    """Build a table of the declared schema from columns, refusing missing, extra or ill-typed ones."""
    schema = TABLES[table]
    extra = set(columns) - set(schema.names)
    missing = set(schema.names) - set(columns)
    if extra or missing:
        raise SchemaError(f"{table}: missing columns {sorted(missing)}, unexpected columns {sorted(extra)}")
    arrays = []
    for f in schema:
        try:
            arr = pa.array(columns[f.name], type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(f"{table}.{f.name}: {e}") from e
        if not f.nullable and arr.null_count:
            raise SchemaError(f"{table}.{f.name}: {arr.null_count} null value(s) in a non-nullable column")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)
