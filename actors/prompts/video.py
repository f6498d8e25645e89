"""The text of VLM prompts: system prompt, video metadata, timestamped transcript, shot cuts, task.

The research found that the audio transcript and the file's metadata in the prompt improve
long-video understanding (Video-MME +3.9 points, +7.9 on long videos), so every request carries
them. A transcript that does not fit is thinned evenly over the whole video, never cut after its
start, so the model still hears every part of a long video.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from corpusflow.actors.prompts.answer import format_ts

SYSTEM = ("You are a careful analyst of pharmaceutical and scientific videos. Each image is a frame of one "
          "video, preceded by the time it was taken as [t=...s]. Answer only with JSON following the schema. "
          "Use only the frame times given as timestamps.")

# A single transcript segment longer than this is shortened, so one monologue cannot crowd out the rest.
_MAX_SEGMENT_CHARS = 400
_MAX_META_CHARS = 1200
_MAX_SHOTS = 200


@dataclass(frozen=True)
class Transcript:
    """Timestamped speech: segment starts and ends in seconds and their text (may be empty)."""

    start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    end: np.ndarray = field(default_factory=lambda: np.zeros(0))
    text: tuple[str, ...] = ()

    def between(self, t0: float, t1: float) -> "Transcript":
        """The segments that overlap [t0, t1]."""
        keep = [i for i in range(len(self.text)) if self.end[i] >= t0 and self.start[i] <= t1]
        return Transcript(self.start[keep], self.end[keep], tuple(self.text[i] for i in keep))


@dataclass(frozen=True)
class VideoMeta:
    """What is known about the file besides its frames."""

    uri: str
    duration_s: float
    language: str = ""
    meta_json: str = ""
    shot_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _segment_line(start: float, end: float, text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_SEGMENT_CHARS:
        text = text[:_MAX_SEGMENT_CHARS - 1] + "…"
    return f"[{format_ts(start)}-{format_ts(end)}s] {text}"


def transcript_text(transcript: Transcript, max_chars: int) -> str:
    """Transcript lines within ``max_chars``; when too long, segments picked evenly over the whole video."""
    lines = [_segment_line(s, e, t) for s, e, t in zip(transcript.start, transcript.end, transcript.text)
             if t.strip()]

    def render(k: int) -> str:
        if k >= len(lines):
            return "\n".join(lines)
        picked = np.unique(np.round(np.linspace(0, len(lines) - 1, k)).astype(int))
        return f"({len(picked)} of {len(lines)} segments, spread over the video)\n" + \
            "\n".join(lines[i] for i in picked)

    lo, hi = 0, len(lines)  # the most segments whose text fits: fit(lo) holds, fit(hi + 1) does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(render(mid)) <= max_chars:
            lo = mid
        else:
            hi = mid - 1
    return render(lo) if lo else ""


def _metadata(meta: VideoMeta) -> str:
    parts = [f"File: {os.path.basename(meta.uri.rstrip('/'))}"]
    if meta.duration_s and np.isfinite(meta.duration_s):
        parts.append(f"Duration: {format_ts(meta.duration_s)} s")
    if meta.language:
        parts.append(f"Spoken language: {meta.language}")
    if meta.meta_json:
        try:
            compact = json.dumps(json.loads(meta.meta_json), separators=(",", ":"), ensure_ascii=False)
        except json.JSONDecodeError:
            compact = meta.meta_json
        parts.append(f"Container metadata: {compact[:_MAX_META_CHARS]}")
    if len(meta.shot_ts):
        cuts = ", ".join(format_ts(t) for t in meta.shot_ts[:_MAX_SHOTS])
        parts.append(f"Shot changes at (s): {cuts}")
    return "\n".join(parts)


def user_text(meta: VideoMeta, transcript: str, task: str, note: str = "") -> str:
    """The text that follows the frames: metadata, transcript, the task and, on a retry, what went wrong."""
    parts = [_metadata(meta)]
    if transcript:
        parts.append("Transcript:\n" + transcript)
    parts.append(task)
    if note:
        parts.append(note)
    return "\n\n".join(parts)


DESCRIBE_TASK = ("Task: summarise the whole video, split it into chapters (start and end times), and pick the "
                 "keyframes that best show its content, each with a caption.")


def window_task(index: int, count: int, t0: float, t1: float) -> str:
    return (f"Task: these frames are part {index} of {count} of a longer video, from {format_ts(t0)} s to "
            f"{format_ts(t1)} s. Summarise this part, split it into chapters and pick its keyframes.")


def final_task(window_answers: list[str]) -> str:
    """Merge task: the windows' JSON descriptions in time order, to become one answer for the whole video."""
    listed = "\n".join(f"Part {i}: {a}" for i, a in enumerate(window_answers, 1))
    return ("Descriptions of consecutive, overlapping parts of the video:\n" + listed + "\n\n"
            "Task: combine them into one description of the whole video: one summary, chapters over the "
            "whole video, and its best keyframes. Use only timestamps that appear in the parts.")


def ask_task(question: str) -> str:
    return ("Task: answer the question about the video, citing the frame times that support the answer.\n"
            f"Question: {question}")


def retry_note(reason: str, max_chars: int) -> str:
    """Told to the model on a retry, so a deterministic decoder does not repeat the same answer."""
    return f"Your previous answer was rejected: {reason}"[:max_chars]
