"""Response bodies of the API, derived from the Arrow table schemas so online and batch rows match.

A field's type and nullability come from contracts/schemas.py; adding a column there adds it here.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import pyarrow as pa
from pydantic import BaseModel, Field, create_model

from corpusflow.contracts.schemas import ASSETS, PAGES, SUMMARIES, TIMELINE


def _python_type(t: pa.DataType) -> type:
    if pa.types.is_string(t):
        return str
    if pa.types.is_boolean(t):
        return bool
    if pa.types.is_integer(t):
        return int
    if pa.types.is_floating(t):
        return float
    if pa.types.is_timestamp(t):
        return datetime
    raise TypeError(f"no JSON type for Arrow type {t}")


def row_model(name: str, schema: pa.Schema) -> type[BaseModel]:
    """A pydantic model with one field per column; nullable columns are Optional."""
    fields: dict[str, Any] = {}
    for f in schema:
        py = _python_type(f.type)
        doc = (f.metadata or {}).get(b"doc", b"").decode() or None
        fields[f.name] = (Optional[py], Field(None, description=doc)) if f.nullable else (py, Field(description=doc))
    return create_model(name, **fields)


AssetRow = row_model("AssetRow", ASSETS)
TimelineRow = row_model("TimelineRow", TIMELINE)
SummaryRow = row_model("SummaryRow", SUMMARIES)
PageRow = row_model("PageRow", PAGES)


class AnalyzeOut(BaseModel):
    """One input's rows of the assets, timeline, summaries and pages tables."""

    asset: AssetRow  # type: ignore[valid-type]
    timeline: list[TimelineRow]  # type: ignore[valid-type]
    summary: Optional[SummaryRow]  # type: ignore[valid-type]
    pages: list[PageRow]  # type: ignore[valid-type]


class TranscribeOut(BaseModel):
    """The speech in an audio or video file: detected language, segments and words on its time axis."""

    asset: AssetRow  # type: ignore[valid-type]
    language: Optional[str]
    segments: list[TimelineRow]  # type: ignore[valid-type]
    words: list[TimelineRow]  # type: ignore[valid-type]


class AskOut(BaseModel):
    """An answer about a video, with the timestamps (seconds) of the frames and speech it relied on."""

    asset: AssetRow  # type: ignore[valid-type]
    question: str
    answer: str
    timestamps: list[float]


class ErrorOut(BaseModel):
    detail: str = Field(description="why the request was refused, in a sentence")
