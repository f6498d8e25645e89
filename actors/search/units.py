"""Cut search units from the rows of the committed tables.

- speech: ASR segments, cut at sentence ends by their word times (a segment is a speech chunk of up
  to 30 s and may hold the end of one topic and the start of the next), joined into windows of
  ``window_s`` (between ``min_window_s`` and ``max_window_s``), closed at a sentence end where
  possible; the next window repeats the last ``overlap_s`` of speech, so a phrase cut by a boundary is
  still found whole.
- visual: every VLM chapter and keyframe description, with its times.
- pdf: each page's text in chunks of at most ``chunk_chars``, cut at paragraph or sentence ends.
- summary: the asset's summary, spanning the whole asset.

Every unit carries its asset's first URI, kind and duration, its language (from the row, else
detected from the text) and a ``unit_id`` hashed from all of it: an unchanged unit keeps its id, so
an incremental index run embeds only what is new.
"""
from __future__ import annotations

import bisect
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import pyarrow as pa

from corpusflow.contracts.search import UNITS, IndexConfig

_SENTENCE_END = re.compile(r"[.!?。！？…]['\")\]]*\s*$")
_SPLIT_AT = (re.compile(r"\n\s*\n"), re.compile(r"(?<=[.!?。！？])\s+"), re.compile(r"\s+"))


@dataclass(frozen=True)
class AssetInfo:
    uri: str
    kind: str
    duration_s: Optional[float]


def detect_language(text: str) -> str:
    """ISO 639-1 code of ``text`` (py3langid), '' for text too short to tell."""
    if len(text.strip()) < 20:
        return ""
    import py3langid

    return str(py3langid.classify(text)[0])


def _unit(asset_id: str, info: AssetInfo, modality: str, source: str, detail: str, text: str, language: str,
          t_start: Optional[float] = None, t_end: Optional[float] = None, page: Optional[int] = None) -> dict[str, Any]:
    language = language or detect_language(text)
    key = "\x1f".join(str(x) for x in (asset_id, info.uri, modality, source, detail, t_start, t_end, page, language, text))
    return {"unit_id": hashlib.sha256(key.encode()).hexdigest()[:32], "asset_id": asset_id, "uri": info.uri,
            "kind": info.kind, "modality": modality, "source": source, "detail": detail, "t_start": t_start,
            "t_end": t_end, "page": page, "duration_s": info.duration_s, "language": language, "text": text}


def speech_windows(segments: list[dict[str, Any]], cfg: IndexConfig) -> list[tuple[float, float, str, str]]:
    """(start, end, text, language) windows over one asset's ASR segments (dicts with t_start, t_end, text, language)."""
    segs = sorted((s for s in segments if str(s["text"]).strip()), key=lambda s: (s["t_start"], s["t_end"]))
    windows: list[tuple[float, float, str, str]] = []
    current: list[dict[str, Any]] = []

    def close() -> None:
        text = " ".join(str(s["text"]).strip() for s in current)
        language = Counter(str(s["language"] or "") for s in current).most_common(1)[0][0]
        windows.append((float(current[0]["t_start"]), float(current[-1]["t_end"]), text, language))

    for i, seg in enumerate(segs):
        if current and seg["t_end"] - current[0]["t_start"] > cfg.max_window_s:
            close()
            current = _overlap(current, cfg.overlap_s, seg)
        current.append(seg)
        length = seg["t_end"] - current[0]["t_start"]
        sentence_done = bool(_SENTENCE_END.search(str(seg["text"])))
        if length >= cfg.window_s or (length >= cfg.min_window_s and sentence_done):
            close()
            current = _overlap(current, cfg.overlap_s, segs[i + 1] if i + 1 < len(segs) else None)
    if current and (not windows or current[-1]["t_end"] > windows[-1][1]):
        close()
    return windows


def sentences(segments: list[dict[str, Any]], words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments cut at the sentence ends inside them, each piece timed by its words (t_start, t_end,
    text, language). A segment without aligned words stays whole."""
    words = sorted(words, key=lambda w: (w["t_start"], w["t_end"]))
    starts = [w["t_start"] for w in words]
    pieces: list[dict[str, Any]] = []
    for seg in segments:
        inside = [w for w in words[bisect.bisect_left(starts, seg["t_start"]):bisect.bisect_left(starts, seg["t_end"])]
                  if str(w["text"]).strip()]
        if not inside:
            pieces.append(seg)
            continue
        current: list[dict[str, Any]] = []
        for i, word in enumerate(inside):
            current.append(word)
            if _SENTENCE_END.search(str(word["text"])) or i == len(inside) - 1:
                pieces.append({"t_start": current[0]["t_start"], "t_end": current[-1]["t_end"],
                               "text": " ".join(str(w["text"]).strip() for w in current), "language": seg["language"]})
                current = []
    return pieces


def _overlap(window: list[dict[str, Any]], overlap_s: float, following: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trailing segments of ``window`` that fit in ``overlap_s``: the start of the next window."""
    if following is None:
        return []
    kept: list[dict[str, Any]] = []
    for seg in reversed(window):
        if window[-1]["t_end"] - seg["t_start"] > overlap_s:
            break
        kept.insert(0, seg)
    return kept


def page_chunks(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars``, cut at paragraph, then sentence, then word ends."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    for splitter in _SPLIT_AT:
        parts = [p for p in splitter.split(text) if p.strip()]
        if len(parts) > 1:
            break
    else:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    chunks, current = [], ""
    for part in parts:
        joined = f"{current} {part}".strip() if current else part.strip()
        if len(joined) <= max_chars:
            current = joined
            continue
        if current:
            chunks.append(current)
        current = ""
        if len(part) > max_chars:
            chunks.extend(page_chunks(part, max_chars))
        else:
            current = part.strip()
    if current:
        chunks.append(current)
    return chunks


def units_of_asset(asset_id: str, info: AssetInfo, timeline: Iterable[dict[str, Any]], pages: Iterable[dict[str, Any]],
                   summaries: Iterable[dict[str, Any]], cfg: IndexConfig) -> list[dict[str, Any]]:
    """Every unit of one asset, from its rows of the timeline, pages and summaries tables."""
    units, segments, words = [], [], []
    for row in timeline:
        if row["source"] == "asr" and row["detail"] == "segment":
            segments.append(row)
        elif row["source"] == "asr" and row["detail"] == "word":
            words.append(row)
        elif row["source"] == "vlm" and row["detail"] in ("chapter", "keyframe") and str(row["text"]).strip():
            units.append(_unit(asset_id, info, "visual", "vlm", row["detail"], str(row["text"]).strip(),
                               str(row["language"] or ""), float(row["t_start"]), float(row["t_end"])))
    for start, end, text, language in speech_windows(sentences(segments, words), cfg):
        units.append(_unit(asset_id, info, "speech", "asr", "window", text, language, start, end))
    for row in pages:
        for chunk in page_chunks(str(row["text"]), cfg.chunk_chars):
            units.append(_unit(asset_id, info, "pdf", "pdf", "chunk", chunk, "", page=int(row["page"])))
    for row in summaries:
        if str(row["summary"]).strip():
            end = info.duration_s if info.duration_s is not None else None
            units.append(_unit(asset_id, info, "summary", "summary", "summary", str(row["summary"]).strip(),
                               str(row["language"] or ""), 0.0 if end is not None else None, end))
    return units


def units_table(units: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(units, schema=UNITS)
