"""``corpusflow eval videomme``: multiple-choice accuracy on a copy of Video-MME, with and without subtitles.

The data folder (local or ``s3://``) is laid out as Video-MME is distributed: one or more Parquet files of
questions (``question_id, videoID, duration, domain, sub_category, task_type, question, options,
answer``), the videos named ``<videoID>.<ext>`` anywhere under it, and the subtitles as
``<videoID>.srt``. Every video is decoded once at the largest frame budget (frames spread evenly over
the whole video, the job's own decoder), and asked each question under each condition × frame budget:

- ``none``: frames only;
- ``subs``: the official subtitle lines shown at the sampled frames (as the published harnesses do);
- ``asr``: the same selection from our own ASR timeline (the profile's ASR, the job's VAD and engine).

Prompts are ours (actors/prompts/choice.py), the engine is the profile's VLM engine, decoding greedy and
constrained to A–D. Results: ``OUT/eval_videomme`` (one row per question × condition × budget),
``OUT/eval_videomme_accuracy`` (accuracy by condition × budget × task type × duration, with a standard
error clustered by video) and ``OUT/eval_videomme.html``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpusflow.actors.prompts import choice
from corpusflow.actors.prompts.video import Transcript
from corpusflow.contracts import storage
from corpusflow.contracts.config import StageConfig

log = logging.getLogger(__name__)

CONDITIONS = ("none", "subs", "asr")
QUESTION_COLUMNS = ("question_id", "videoID", "duration", "task_type", "question", "options", "answer")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")

ROWS = pa.schema([
    pa.field("question_id", pa.string()), pa.field("videoID", pa.string()), pa.field("duration", pa.string()),
    pa.field("task_type", pa.string()), pa.field("condition", pa.string()), pa.field("frames", pa.int32()),
    pa.field("subtitle_lines", pa.int32()), pa.field("raw", pa.string()), pa.field("answer", pa.string()),
    pa.field("truth", pa.string()), pa.field("correct", pa.bool_()),
])
ACCURACY = pa.schema([
    pa.field("condition", pa.string()), pa.field("frames", pa.int32()), pa.field("task_type", pa.string()),
    pa.field("duration", pa.string()), pa.field("questions", pa.int64()), pa.field("videos", pa.int64()),
    pa.field("accuracy", pa.float64()), pa.field("se", pa.float64()),
])

_SRT_TIME = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)\s*-->\s*(\d+):(\d+):(\d+)[,.](\d+)")
_TAG = re.compile(r"<[^>]+>|\{[^}]*\}")


def read_srt(text: str) -> Transcript:
    """SubRip cues as a transcript (start, end, text), tags such as <i> or {\\an8} removed."""
    starts, ends, texts = [], [], []
    for block in re.split(r"\r?\n\s*\r?\n", text.strip().lstrip("\ufeff")):
        lines = block.strip().splitlines()
        for k, line in enumerate(lines):
            m = _SRT_TIME.search(line)
            if m:
                g = [int(x) for x in m.groups()]
                starts.append(g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 10 ** len(m.group(4)))
                ends.append(g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 10 ** len(m.group(8)))
                texts.append(" ".join(_TAG.sub("", x).strip() for x in lines[k + 1:]).strip())
                break
    return Transcript(np.asarray(starts, np.float64), np.asarray(ends, np.float64), tuple(texts))


def lines_at(transcript: Transcript, times: np.ndarray) -> list[str]:
    """The transcript lines showing at any of ``times``, each once, in time order."""
    keep = [i for i in range(len(transcript.text))
            if transcript.text[i] and np.any((transcript.start[i] <= times) & (times <= transcript.end[i]))]
    return [transcript.text[i] for i in keep]


@dataclass(frozen=True)
class Layout:
    """A Video-MME copy: its questions and where each video and subtitle file is, by videoID."""

    questions: pa.Table
    videos: dict[str, str]
    subtitles: dict[str, str]


def find(data: str) -> Layout:
    files = [f.uri for f in storage.list_files(data)]
    by_stem: dict[str, dict[str, str]] = {"video": {}, "srt": {}}
    tables = []
    for uri in files:
        name = PurePosixPath(uri)
        if name.suffix == ".parquet":
            fs, path = storage.filesystem(uri)
            tables.append(pq.read_table(path, filesystem=fs, columns=list(QUESTION_COLUMNS)))
        elif name.suffix.lower() in VIDEO_SUFFIXES:
            by_stem["video"][name.stem] = uri
        elif name.suffix.lower() == ".srt":
            by_stem["srt"][name.stem] = uri
    if not tables:
        raise FileNotFoundError(f"no Parquet file of questions under {data!r}")
    return Layout(pa.concat_tables(tables), by_stem["video"], by_stem["srt"])


class Harness:
    """The profile's models, loaded once: the job's decoder (with its speech detection), ASR and frame
    sampler, and the VLM engine."""

    def __init__(self, config: StageConfig, conditions: Sequence[str]):
        from corpusflow.actors.decode import DecodeMedia
        from corpusflow.actors.engines.vlm import load_engine
        from corpusflow.actors.frames import SampleFrames

        self.config = config
        self.decode = DecodeMedia(config)
        self.frames = SampleFrames(config)
        self.engine = load_engine(config.profile, config.model_cache)
        self.asr = None
        if "asr" in conditions:
            from corpusflow.actors.asr import Transcribe

            self.asr = Transcribe(config)

    def look(self, uri: str) -> dict[str, Any]:
        """One video decoded (frames at the largest budget), and transcribed when a condition needs it."""
        batch = {"uri": np.asarray([uri]), "kind": np.asarray(["video"]), "asset_id": np.asarray([uri]),
                 "error_stage": np.asarray([""]), "error": np.asarray([""])}
        batch = self.decode(batch)
        if self.asr is not None and not batch["error"][0]:
            batch = self.asr(batch)
        return {k: v[0] for k, v in self.frames(batch).items()}

    def ask(self, frames: np.ndarray, ts: np.ndarray, questions: list[dict], subtitles: list[str]) -> list[str]:
        """Raw answers to the questions about these frames, subtitles thinned evenly if the prompt is too long."""
        from corpusflow.actors.engines.vlm import VlmRequest

        def requests(lines: list[str]) -> list[VlmRequest]:
            return [VlmRequest(frames, ts, choice.SYSTEM, choice.user_text(q["question"], q["options"], lines),
                               choice.SCHEMA, choice.MAX_NEW_TOKENS) for q in questions]

        limit = self.engine.max_model_len - choice.MAX_NEW_TOKENS
        lines = subtitles
        while max(self.engine.count_tokens(r) for r in requests(lines)) > limit:
            if not lines:
                raise ValueError(f"{len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} and the question do "
                                 f"not fit the model's context of {self.engine.max_model_len} tokens; lower --frames "
                                 "or --frame-size, or use a profile with a larger max_model_len")
            lines = [lines[i] for i in np.unique(np.linspace(0, len(lines) - 1, len(lines) // 2).astype(int))]
        return self.engine.generate(requests(lines))


def evaluate(data: str, config: StageConfig, budgets: Sequence[int], conditions: Sequence[str],
             max_videos: Optional[int] = None) -> pa.Table:
    """One row per question × condition × frame budget (schema :data:`ROWS`)."""
    from corpusflow.actors.vlm import even_indices

    layout = find(data)
    harness = Harness(config, conditions)
    by_video: dict[str, list[dict]] = {}
    for q in layout.questions.to_pylist():
        by_video.setdefault(str(q["videoID"]), []).append(q)
    rows: list[dict] = []
    for n, (video, questions) in enumerate(sorted(by_video.items())):
        if max_videos is not None and n >= max_videos:
            break
        if video not in layout.videos:
            log.warning("video %s is not under %s: its %d questions are left out", video, data, len(questions))
            continue
        seen = harness.look(layout.videos[video])
        if seen["error"]:
            log.warning("video %s could not be used: %s", video, seen["error"])
            continue
        tracks = {"none": Transcript()}
        if "subs" in conditions:
            tracks["subs"] = _subtitles(layout.subtitles.get(video))
        if "asr" in conditions:
            tracks["asr"] = Transcript(np.asarray(seen["seg_start"]), np.asarray(seen["seg_end"]),
                                       tuple(str(t) for t in seen["seg_text"]))
        for budget in budgets:
            idx = even_indices(len(seen["frame_ts"]), budget)
            frames, ts = np.asarray(seen["frames"])[idx], np.asarray(seen["frame_ts"], np.float64)[idx]
            for condition in conditions:
                lines = lines_at(tracks[condition], ts)
                for q, raw in zip(questions, harness.ask(frames, ts, questions, lines)):
                    letter, truth = choice.parse(raw), str(q["answer"]).strip()
                    rows.append({"question_id": str(q["question_id"]), "videoID": video,
                                 "duration": str(q["duration"]), "task_type": str(q["task_type"]),
                                 "condition": condition, "frames": len(idx), "subtitle_lines": len(lines),
                                 "raw": raw, "answer": letter, "truth": truth, "correct": letter == truth})
        log.info("video %s: %d questions asked", video, len(questions))
    return pa.Table.from_pylist(rows, schema=ROWS)


def _subtitles(uri: Optional[str]) -> Transcript:
    """A video's official subtitles; none for a video without a subtitle file (Video-MME has a few)."""
    if not uri:
        return Transcript()
    with storage.open_input(uri) as f:
        return read_srt(f.read().decode("utf-8", errors="replace"))


def accuracy(rows: pa.Table) -> pa.Table:
    """Accuracy per condition × frames × task type × duration, plus 'all' margins, SE clustered by video."""
    from corpusflow.flows.evaluate.stats import clustered_mean

    groups: dict[tuple, list[dict]] = {}
    for r in rows.to_pylist():
        for task in (r["task_type"], "all"):
            for duration in (r["duration"], "all"):
                groups.setdefault((r["condition"], r["frames"], task, duration), []).append(r)
    out = []
    for (condition, frames, task, duration), rs in sorted(groups.items()):
        acc, se = clustered_mean([float(r["correct"]) for r in rs], [r["videoID"] for r in rs])
        out.append({"condition": condition, "frames": frames, "task_type": task, "duration": duration,
                    "questions": len(rs), "videos": len({r["videoID"] for r in rs}), "accuracy": acc, "se": se})
    return pa.Table.from_pylist(out, schema=ACCURACY)


def plot(acc: pa.Table) -> str:
    """Accuracy by duration for each condition × frame budget, with ±1 clustered SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from corpusflow.flows.evaluate.output import svg

    rows = [r for r in acc.to_pylist() if r["task_type"] == "all"]
    durations = sorted({r["duration"] for r in rows}, key=lambda d: (d == "all", d))
    series = sorted({(r["condition"], r["frames"]) for r in rows}, key=lambda s: (s[1], CONDITIONS.index(s[0])))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(durations) * max(1, len(series)) / 3), 3.6))
    width = 0.8 / max(1, len(series))
    for k, (condition, frames) in enumerate(series):
        got = {r["duration"]: r for r in rows if (r["condition"], r["frames"]) == (condition, frames)}
        xs = [i + k * width for i, d in enumerate(durations) if d in got]
        ys = [got[d]["accuracy"] for d in durations if d in got]
        err = [0.0 if np.isnan(got[d]["se"]) else got[d]["se"] for d in durations if d in got]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=f"{condition}, {frames} frames")
    ax.axhline(0.25, color="#999", linestyle=":", linewidth=1, label="chance (1 of 4)")
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(durations))], durations)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (±1 SE, clustered by video)")
    ax.legend(fontsize=7, ncol=2)
    return svg(fig)
