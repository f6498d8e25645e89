"""``corpusflow eval videomme`` on a small generated copy of the Video-MME layout (questions Parquet, videos,
SRT subtitles), with real ASR (small-real) for the "our transcript" condition and the tiny VLM."""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from corpusflow.flows.cli import main
from corpusflow.flows.evaluate.stats import clustered_mean
from corpusflow.flows.evaluate.videomme import read_srt
from tests import media
from tests.spoken import script, speak

# videoID → (duration class, narration: (start s, sentence))
VIDEOS = {
    "vidA01": ("short", [(0.5, "The operator opens the red cabinet."), (4.0, "Three vials are placed on the tray.")]),
    "vidB02": ("medium", [(0.5, "A green light means the machine is ready."), (4.0, "The door closes after ten seconds.")]),
}
SECONDS = 7.0


def _srt(lines: list[tuple[float, float, str]]) -> str:
    def ts(t: float) -> str:
        return f"00:00:{int(t):02d},{int(round(t % 1 * 1000)):03d}"
    return "\n".join(f"{i}\n{ts(a)} --> {ts(b)}\n<i>{text}</i>\n" for i, (a, b, text) in enumerate(lines, 1))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videomme")
    questions = []
    for n, (vid, (duration, narration)) in enumerate(VIDEOS.items()):
        said = [(at, speak(text)) for at, text in narration]
        pcm, _ = script(said, SECONDS, said[0][1].rate)
        media.make_video(root / "data" / f"{vid}.mp4", seconds=SECONDS, size=(112, 84), speech=(pcm, said[0][1].rate))
        cues = [(at, at + len(s.pcm) / s.rate, s.text) for at, s in said]
        (root / "subtitle").mkdir(exist_ok=True)
        (root / "subtitle" / f"{vid}.srt").write_text(_srt(cues), encoding="utf-8")
        for k, task in enumerate(("Counting Problem", "Action Recognition", "Temporal Reasoning")):
            questions.append({"video_id": f"{n:03d}", "duration": duration, "domain": "Knowledge",
                              "sub_category": "Technology", "url": "", "videoID": vid,
                              "question_id": f"{n:03d}-{k + 1}", "task_type": task,
                              "question": f"Question {k + 1} about what happens?",
                              "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "ABCD"[k]})
    (root / "videomme").mkdir()
    pq.write_table(pa.Table.from_pylist(questions), root / "videomme" / "test-00000-of-00001.parquet")
    return root


def test_every_question_is_asked_under_every_condition_and_budget(data, tmp_path, model_cache, capsys):
    out = tmp_path / "out"
    assert main(["eval", "videomme", "--data", str(data), "--out", str(out), "--models", "small-real",
                 "--frames", "2,4", "--frame-size", "56", "--model-cache", model_cache]) == 0
    printed = capsys.readouterr().out
    assert "subs     4 frames: accuracy" in printed

    rows = DeltaTable(str(out / "eval_videomme")).to_pyarrow_table().to_pylist()
    assert len(rows) == 6 * 3 * 2
    assert {(r["condition"], r["frames"]) for r in rows} == {(c, f) for c in ("none", "subs", "asr") for f in (2, 4)}
    assert all(r["answer"] in "ABCD" and len(r["answer"]) == 1 for r in rows), "answers are constrained to A-D"
    assert all(r["correct"] == (r["answer"] == r["truth"]) for r in rows)
    lines = {(r["videoID"], r["condition"], r["frames"]): r["subtitle_lines"] for r in rows}
    assert all(v == 0 for (_, c, _), v in lines.items() if c == "none")
    assert all(v >= 1 for (_, c, f), v in lines.items() if c != "none" and f == 4), "frames at 0, 1.75, 3.5, 5.25 s"

    acc = DeltaTable(str(out / "eval_videomme_accuracy")).to_pyarrow_table().to_pylist()
    overall = {(r["condition"], r["frames"]): r for r in acc if r["task_type"] == "all" and r["duration"] == "all"}
    assert len(overall) == 6 and all(r["questions"] == 6 and r["videos"] == 2 for r in overall.values())
    cell = [r for r in acc if r["task_type"] == "Counting Problem" and r["duration"] == "short"]
    assert all(r["questions"] == 1 for r in cell)
    html = (out / "eval_videomme.html").read_text()
    assert "<svg" in html and "Counting Problem" in html


def test_our_transcript_condition_shows_what_was_said(data, tmp_path, model_cache):
    from corpusflow.contracts.config import StageConfig
    from corpusflow.flows.evaluate.videomme import Harness, lines_at

    harness = Harness(StageConfig(models="small-real", model_cache=model_cache,
                                  video={"fps": 30, "max_frames": 4, "frame_size": 56}), ["asr"])
    seen = harness.look(str(data / "data" / "vidA01.mp4"))
    from corpusflow.actors.prompts.video import Transcript

    said = " ".join(lines_at(Transcript(seen["seg_start"], seen["seg_end"], tuple(seen["seg_text"])), seen["frame_ts"]))
    assert "red cabinet" in said.lower() and "tray" in said.lower()


def test_srt_cues_and_clustered_standard_error():
    cues = read_srt("\ufeff1\n00:00:01,500 --> 00:00:03,000\n<i>Hello</i> there\n\n2\n00:01:00.25 --> 00:01:02.5\n{\\an8}Bye\n")
    assert list(cues.start) == [1.5, 60.25] and list(cues.end) == [3.0, 62.5] and cues.text == ("Hello there", "Bye")

    # Two videos, all right on one and all wrong on the other: the mean is 0.5 and the error is that of
    # two observations (0.5 each side), not of six independent questions.
    mean, se = clustered_mean([1, 1, 1, 0, 0, 0], ["a", "a", "a", "b", "b", "b"])
    assert mean == 0.5 and math.isclose(se, 0.5)
    assert math.isnan(clustered_mean([1, 0], ["a", "a"])[1])
