"""``corpusflow eval kg OUT``: reference-free scores of summaries and keyframes against each video's transcript."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from deltalake import DeltaTable

from corpusflow.contracts.schemas import TABLES, conform
from corpusflow.flows.cli import main
from corpusflow.flows.tables import replace_rows

TRANSCRIPT = [
    (0.0, 10.0, "Welcome to the manufacturing site. The tablets are pressed on the press line."),
    (10.0, 20.0, "Then the tablets are coated in the coating drum and dried."),
    (20.0, 30.0, "Every batch is sampled and the samples go to the quality control laboratory."),
    (30.0, 40.0, "In the laboratory the samples are tested for purity before the batch is released."),
]
GOOD = ("Tablets are pressed and coated at the manufacturing site. Samples of every batch are tested in the "
        "quality control laboratory before release.",
        [(5.0, "tablets on the press line"), (15.0, "coating drum"), (35.0, "laboratory testing samples")])
MADE_UP = ("Astronauts repair a telescope in orbit while a comet passes the galaxy.",
           [(5.0, "laboratory testing samples"), (15.0, "coating drum"), (35.0, "tablets on the press line")])


def _columns(table: str, rows: list[dict]) -> dict:
    return {name: [r[name] for r in rows] for name in TABLES[table].names}


def _out(root: Path | str) -> str:
    """A job's OUT holding two committed videos (local folder or s3:// prefix under ``root``)."""
    out = f"{root}/out"
    now = datetime.now(timezone.utc)
    assets, timeline, summaries = [], [], []
    for aid, (summary, keyframes) in {"good": GOOD, "made-up": MADE_UP}.items():
        assets.append({"asset_id": aid, "uri": f"/corpus/{aid}.mp4", "kind": "video", "format": "mp4", "bytes": 1,
                       "duration_s": 40.0, "pages": None, "status": "ok", "error_stage": None, "error": None,
                       "retryable": None, "modified": now, "config_fingerprint": "f", "job_id": "j",
                       "committed_at": now})
        timeline += [{"asset_id": aid, "t_start": a, "t_end": b, "source": "asr", "detail": "segment",
                      "language": "en", "text": t} for a, b, t in TRANSCRIPT]
        timeline += [{"asset_id": aid, "t_start": t, "t_end": t, "source": "vlm", "detail": "keyframe",
                      "language": None, "text": c} for t, c in keyframes]
        summaries.append({"asset_id": aid, "summary": summary, "language": "en", "model": "m", "engine": "e",
                          "frames_used": 8, "windows": 1, "attempts": 1, "raw_json": "{}"})
    ids = {"asset_id": ["good", "made-up"]}
    replace_rows(out, "timeline", conform("timeline", _columns("timeline", timeline)), ids)
    replace_rows(out, "summaries", conform("summaries", _columns("summaries", summaries)), ids)
    replace_rows(out, "assets", conform("assets", _columns("assets", assets)), {"uri": [a["uri"] for a in assets]})
    return out


def test_a_grounded_summary_scores_above_a_made_up_one(tmp_path, capsys):
    out = _out(tmp_path)
    assert main(["eval", "kg", out]) == 0
    assert "coverage" in capsys.readouterr().out

    rows = {r["asset_id"]: r for r in DeltaTable(f"{out}/eval_kg").to_pyarrow_table().to_pylist()}
    good, bad = rows["good"], rows["made-up"]
    assert good["grounding"] == 1.0 and bad["grounding"] == 0.0
    assert good["coverage"] > 0.4 and bad["coverage"] == 0.0
    assert good["temporal_consistency"] == 1.0 and bad["temporal_consistency"] == 0.0, "keyframes said in reverse"
    assert 0 < good["coherence"] <= 1 and good["keyframes"] == 3
    html = Path(out, "eval_kg.html").read_text()
    assert html.count("<svg") == 2 and "reconstruction" in html


def test_an_out_without_summaries_is_a_clear_refusal(tmp_path, capsys):
    assert main(["eval", "kg", str(tmp_path / "empty")]) == 1
    assert "no video with a summary" in capsys.readouterr().err


def test_out_on_s3(s3_bucket, capsys):
    out = _out(f"s3://{s3_bucket}/job")
    assert main(["eval", "kg", out]) == 0
    assert f"wrote {out}/eval_kg and {out}/eval_kg.html" in capsys.readouterr().out
    from corpusflow.contracts import storage

    assert storage.exists(f"{out}/eval_kg.html") and storage.exists(f"{out}/eval_kg/_delta_log")
