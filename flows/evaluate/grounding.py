"""``corpusflow eval grounding --truth FILE OUT``: are our timestamps where the known events are?

For corpora with known events (QVHighlights / Charades-STA style). FILE (CSV, JSON lines or Parquet,
local or ``s3://``) has one row per known thing: ``uri`` (the input's URI, or its path relative to the
corpus), ``kind`` and times ``t_start``/``t_end`` in seconds:

- ``event``: a moment worth a keyframe. **Hit@δ**: share of events with one of our keyframes within
  ±δ; **keyframe precision@δ**: share of our keyframes within ±δ of an event.
- ``boundary``: a chapter change at ``t_start``. Our chapter starts (after 0) are matched one to one
  to the true boundaries within ±δ, nearest first: **precision, recall, F1**.
- ``window``: the span that answers ``query``. With ``--answers FILE`` (same columns: ``uri, query,
  t_start, t_end``, e.g. collected from the API's ``/v1/ask``), each query's answered window is scored
  by temporal IoU: **R1@0.3/0.5/0.7** (share of queries whose first answer has IoU ≥ the threshold)
  and **mIoU**.

One row per input in ``OUT/eval_grounding`` plus an ``all`` row that pools every input's counts.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Optional

import numpy as np
import pyarrow as pa

KINDS = ("event", "boundary", "window")
IOU_THRESHOLDS = (0.3, 0.5, 0.7)

ROWS = pa.schema([
    pa.field("uri", pa.string()), pa.field("events", pa.int64()), pa.field("keyframes", pa.int64()),
    pa.field("hit", pa.float64()), pa.field("keyframe_precision", pa.float64()),
    pa.field("boundaries", pa.int64()), pa.field("chapter_starts", pa.int64()),
    pa.field("boundary_precision", pa.float64()), pa.field("boundary_recall", pa.float64()),
    pa.field("boundary_f1", pa.float64()), pa.field("windows", pa.int64()),
    pa.field("r1_at_0_3", pa.float64()), pa.field("r1_at_0_5", pa.float64()), pa.field("r1_at_0_7", pa.float64()),
    pa.field("miou", pa.float64()),
])


def read_rows(uri: str) -> list[dict]:
    """A CSV, JSON-lines or Parquet file's rows."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    from corpusflow.contracts import storage

    suffix = PurePosixPath(uri).suffix.lower()
    with storage.open_input(uri) as f:
        if suffix == ".parquet":
            table = pq.read_table(f)
        elif suffix in (".jsonl", ".json", ".ndjson"):
            table = pjson.read_json(f)
        elif suffix in (".csv", ".tsv"):
            table = pcsv.read_csv(f, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise ValueError(f"{uri}: give a .csv, .tsv, .jsonl or .parquet file")
    return table.to_pylist()


def match_within(truth: list[float], pred: list[float], delta: float) -> int:
    """One-to-one matches of predicted to true times within ±delta, closest pairs first."""
    pairs = sorted((abs(t - p), i, j) for i, t in enumerate(truth) for j, p in enumerate(pred) if abs(t - p) <= delta)
    used_t, used_p, n = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
            n += 1
    return n


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a == b)


def _ratio(num: float, den: float) -> Optional[float]:
    return num / den if den else None


def _f1(p: Optional[float], r: Optional[float]) -> Optional[float]:
    """F1; 0 when nothing true was found (no predictions at all included), None without true boundaries."""
    if r is None:
        return None
    if not r:
        return 0.0
    return 2 * p * r / (p + r) if p is not None else None


def _score(events: list[float], keyframes: list[float], boundaries: list[float], starts: list[float],
           ious: list[float], delta: float) -> dict:
    hits = sum(any(abs(e - k) <= delta for k in keyframes) for e in events)
    precise = sum(any(abs(e - k) <= delta for e in events) for k in keyframes)
    matched = match_within(boundaries, starts, delta)
    p, r = _ratio(matched, len(starts)), _ratio(matched, len(boundaries))
    out = {"events": len(events), "keyframes": len(keyframes), "hit": _ratio(hits, len(events)),
           "keyframe_precision": _ratio(precise, len(keyframes)) if events else None,
           "boundaries": len(boundaries), "chapter_starts": len(starts), "boundary_precision": p if boundaries else None,
           "boundary_recall": r, "boundary_f1": _f1(p if boundaries else None, r), "windows": len(ious),
           "miou": float(np.mean(ious)) if ious else None}
    for th in IOU_THRESHOLDS:
        out[f"r1_at_{str(th).replace('.', '_')}"] = _ratio(sum(v >= th for v in ious), len(ious))
    return out


def _owner(truth_uri: str, uris: list[str]) -> Optional[str]:
    """The input a truth row names: the same URI, or the one whose path ends with the row's relative path."""
    if truth_uri in uris:
        return truth_uri
    tail = "/" + truth_uri.lstrip("/")
    found = [u for u in uris if u.endswith(tail)]
    return found[0] if len(found) == 1 else None


def evaluate(out: str, truth: list[dict], answers: list[dict], delta: float) -> pa.Table:
    from corpusflow.flows.tables import read_table

    assets = read_table(out, "assets", ["asset_id", "uri", "status"]).to_pylist()
    uris = [a["uri"] for a in assets if a["status"] == "ok"]
    by_id = {a["asset_id"]: a["uri"] for a in assets if a["status"] == "ok"}
    keyframes: dict[str, list[float]] = {}
    starts: dict[str, list[float]] = {}
    for r in read_table(out, "timeline", ["asset_id", "t_start", "source", "detail"]).to_pylist():
        uri = by_id.get(r["asset_id"])
        if uri and r["source"] == "vlm" and r["detail"] == "keyframe":
            keyframes.setdefault(uri, []).append(r["t_start"])
        elif uri and r["source"] == "vlm" and r["detail"] == "chapter" and r["t_start"] > 0:
            starts.setdefault(uri, []).append(r["t_start"])
    known: dict[str, dict[str, list]] = {}
    for row in truth:
        kind, uri = str(row.get("kind", "")), _owner(str(row["uri"]), uris)
        if kind not in KINDS:
            raise ValueError(f"truth row {row}: kind must be one of {', '.join(KINDS)}")
        if uri is None:
            raise ValueError(f"truth row names {row['uri']!r}, which is not one (and only one) committed input of {out}")
        entry = known.setdefault(uri, {k: [] for k in KINDS})
        entry[kind].append(row)
    answered: dict[tuple[str, str], tuple[float, float]] = {}
    for row in answers:
        uri = _owner(str(row["uri"]), uris)
        if uri is not None:
            answered.setdefault((uri, str(row["query"])), (float(row["t_start"]), float(row["t_end"])))
    rows, pooled = [], {"events": [], "keyframes": [], "boundaries": [], "starts": [], "ious": []}
    for uri in sorted(known):
        k = known[uri]
        ious = [iou((float(w["t_start"]), float(w["t_end"])), answered[(uri, str(w["query"]))])
                if (uri, str(w["query"])) in answered else 0.0 for w in k["window"]]
        parts = {"events": [float(e["t_start"]) for e in k["event"]], "keyframes": keyframes.get(uri, []),
                 "boundaries": [float(b["t_start"]) for b in k["boundary"]], "starts": starts.get(uri, []),
                 "ious": ious}
        rows.append({"uri": uri, **_score(*parts.values(), delta)})
        # pooled over inputs: times are offset per input so no match crosses files
        offset = 1e7 * len(rows)
        for name, values in parts.items():
            pooled[name] += values if name == "ious" else [v + offset for v in values]
    rows.append({"uri": "all", **_score(*pooled.values(), delta)})
    return pa.Table.from_pylist(rows, schema=ROWS)
