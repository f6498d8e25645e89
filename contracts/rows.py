"""Rows of every output table from one finished column batch: one definition for batch and online.

The batch job commits these rows (flows/tables.py); the online API returns them (serve_apps/), so a
response has exactly the shape of the tables.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from corpusflow.contracts.cost import cost_usd, usd_per_hour
from corpusflow.contracts.registry import STAGES
from corpusflow.contracts.schemas import TABLES, conform
from corpusflow.contracts.stage import RETRYABLE

# Stages whose <name>_wall_s / _device_s / _accel columns become metrics/ rows.
METRIC_STAGES = tuple(s.name for s in STAGES if s.metrics)
# Stages whose work is measured in seconds of media: their metrics rows carry the asset's duration.
_TIMED = frozenset(s.name for s in STAGES if s.unit in ("media_s", "video_s"))


def _opt(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _utc(value: Any) -> Any:
    """A numpy datetime64 (how Ray hands over a timestamp column) as a UTC datetime; None for none."""
    if value is None or (isinstance(value, np.datetime64) and np.isnat(value)):
        return None
    if isinstance(value, np.datetime64):
        return datetime.fromtimestamp(value.astype("datetime64[us]").astype(np.int64) / 1e6, tz=timezone.utc)
    return value


def status_of(kind: str, error: str) -> str:
    if error:
        return "error"
    return "skipped" if kind == "other" else "ok"


def rows_for_batch(batch: Mapping[str, np.ndarray], fingerprint: str, job_id: str,
                   prices: Mapping[str, float], shares: Mapping[str, float] | None = None) -> dict[str, pa.Table]:
    """Every output table's rows for one finished batch, schema-enforced (also used by the online API).

    ``shares`` gives, per stage, how many units of its accelerator one actor or task holds (0.5 GPU,
    2 CPUs…): a stage's device-seconds are its busy seconds times that share, so cost follows what
    was reserved.
    """
    shares = shares or {}
    cols: dict[str, dict[str, list[Any]]] = {t: {f: [] for f in TABLES[t].names} for t in TABLES}

    def add(table: str, **row: Any) -> None:
        for k, v in row.items():
            cols[table][k].append(v)

    now = datetime.now(timezone.utc)
    n = len(batch["uri"])
    get = lambda c, i, default=None: batch[c][i] if c in batch else default  # noqa: E731
    described: set[str] = set()  # identical bytes at several URIs: one set of data rows per content
    for i in range(n):
        aid, kind, err = str(batch["asset_id"][i]), str(batch["kind"][i]), str(batch["error"][i])
        duration = _opt(float(get("duration_s", i, float("nan"))))
        pages = int(get("pages", i, 0)) if kind == "pdf" and not err else None
        add("assets", asset_id=aid, uri=str(batch["uri"][i]), kind=kind, format=str(batch["format"][i]),
            bytes=int(batch["bytes"][i]), duration_s=duration if kind in ("video", "audio") else None,
            pages=pages, status=status_of(kind, err), error_stage=str(batch["error_stage"][i]) or None,
            error=err or None, retryable=bool(get(RETRYABLE, i, False)) if err else None,
            modified=_utc(get("modified", i)),
            config_fingerprint=fingerprint, job_id=job_id, committed_at=now)
        for stage in METRIC_STAGES:
            wall = get(f"{stage}_wall_s", i)
            if wall is None or math.isnan(float(wall)):
                continue
            accel = str(batch[f"{stage}_accel"][i]) or "cpu"
            device_s = float(batch[f"{stage}_device_s"][i]) * shares.get(stage, 1.0)
            media_s = duration if stage in _TIMED else None
            add("metrics", job_id=job_id, asset_id=aid, kind=kind, stage=stage, wall_s=float(wall),
                device_s=device_s, accelerator=accel, media_s=media_s,
                pages=pages if stage == "pdf" else None, usd_per_hour=usd_per_hour(accel, prices),
                cost_usd=cost_usd(device_s, accel, prices))
        if err or aid in described:
            continue
        described.add(aid)
        if kind in ("video", "audio") and "seg_start" in batch:
            lang = str(batch["language"][i]) or None
            for s, e, t in zip(batch["seg_start"][i], batch["seg_end"][i], batch["seg_text"][i]):
                add("timeline", asset_id=aid, t_start=float(s), t_end=float(e), source="asr", detail="segment",
                    language=lang, text=str(t))
            for s, e, t in zip(batch["word_start"][i], batch["word_end"][i], batch["word_text"][i]):
                add("timeline", asset_id=aid, t_start=float(s), t_end=float(e), source="asr", detail="word",
                    language=lang, text=str(t))
        if kind == "video":
            for t in get("shot_ts", i, ()):  # absent where frames were not sampled (online /v1/transcribe)
                add("timeline", asset_id=aid, t_start=float(t), t_end=float(t), source="shot", detail="boundary",
                    language=None, text="shot boundary")
            if "summary" in batch:
                for s, e, title in zip(batch["chapter_start"][i], batch["chapter_end"][i], batch["chapter_title"][i]):
                    add("timeline", asset_id=aid, t_start=float(s), t_end=float(e), source="vlm", detail="chapter",
                        language=None, text=str(title))
                for t, cap in zip(batch["keyframe_ts"][i], batch["keyframe_caption"][i]):
                    add("timeline", asset_id=aid, t_start=float(t), t_end=float(t), source="vlm", detail="keyframe",
                        language=None, text=str(cap))
                add("summaries", asset_id=aid, summary=str(batch["summary"][i]),
                    language=str(batch["language"][i]) or None, model=str(batch["vlm_model"][i]),
                    engine=str(batch["vlm_engine"][i]), frames_used=int(batch["frames_used"][i]),
                    windows=int(batch["vlm_windows"][i]), attempts=int(batch["vlm_attempts"][i]),
                    raw_json=str(batch["vlm_raw"][i]))
        if kind == "pdf":
            for p, (text, images, ocr) in enumerate(zip(batch["page_text"][i], batch["page_images"][i],
                                                        batch["page_ocr_language"][i]), start=1):
                add("pages", asset_id=aid, page=p, text=str(text), images=int(images), chars=len(str(text)),
                    ocr_language=str(ocr) or None)
    return {t: conform(t, c) for t, c in cols.items()}
