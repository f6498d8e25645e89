"""``corpusflow eval grounding``: keyframes, chapter boundaries and answered windows against known events."""
from __future__ import annotations

import json
import math

from deltalake import DeltaTable

from corpusflow.flows.cli import main
from tests.test_eval_kg import _out  # two committed videos, /corpus/good.mp4 and /corpus/made-up.mp4


def test_hits_boundaries_and_windows_are_scored_within_delta(tmp_path, capsys):
    out = _out(tmp_path)  # good.mp4 keyframes at 5, 15, 35 s; no chapters
    truth = tmp_path / "truth.jsonl"
    rows = [{"uri": "good.mp4", "kind": "event", "t_start": 6.0, "t_end": 6.0},     # keyframe at 5: hit
            {"uri": "good.mp4", "kind": "event", "t_start": 25.0, "t_end": 25.0},   # nothing near
            {"uri": "good.mp4", "kind": "boundary", "t_start": 20.0, "t_end": 20.0},
            {"uri": "/corpus/made-up.mp4", "kind": "window", "t_start": 10.0, "t_end": 20.0, "query": "coating?"},
            {"uri": "/corpus/made-up.mp4", "kind": "window", "t_start": 0.0, "t_end": 10.0, "query": "press?"}]
    truth.write_text("\n".join(json.dumps(r) for r in rows))
    answers = tmp_path / "answers.csv"
    answers.write_text("uri,query,t_start,t_end\nmade-up.mp4,coating?,12,20\nmade-up.mp4,press?,30,40\n")
    assert main(["eval", "grounding", "--truth", str(truth), "--answers", str(answers), "--delta", "2", out]) == 0
    assert "keyframe Hit@2s 0.500" in capsys.readouterr().out

    got = {r["uri"]: r for r in DeltaTable(f"{out}/eval_grounding").to_pyarrow_table().to_pylist()}
    good, made_up = got["/corpus/good.mp4"], got["/corpus/made-up.mp4"]
    assert good["hit"] == 0.5 and math.isclose(good["keyframe_precision"], 1 / 3)
    assert good["boundary_recall"] == 0.0 and good["boundary_f1"] == 0.0 and good["boundary_precision"] is None
    assert made_up["windows"] == 2 and made_up["miou"] == 0.4 and made_up["r1_at_0_7"] == 0.5
    assert made_up["r1_at_0_3"] == 0.5 and got["all"]["events"] == 2 and got["all"]["windows"] == 2


def test_a_truth_row_for_an_unknown_input_is_refused(tmp_path, capsys):
    out = _out(tmp_path)
    truth = tmp_path / "truth.csv"
    truth.write_text("uri,kind,t_start,t_end\nelsewhere.mp4,event,1,1\n")
    assert main(["eval", "grounding", "--truth", str(truth), out]) == 2
    assert "elsewhere.mp4" in capsys.readouterr().err
