"""Describe: one VLM answer per video (summary, chapters, keyframes), grounded on the sampled frames.

The whole video goes into one context (frames evenly subsampled to the engine's frame budget) with
its transcript and metadata: the paper found that cutting long videos into independent pieces
breaks temporal coherence. Only when that prompt exceeds the model's context are overlapping
windows described, followed by one pass that merges the window descriptions with the full
transcript into one answer whose timestamps come from all frames. Requests of all videos in a batch
go to the engine together; an invalid answer is re-asked with the reason, then recorded as the
asset's error.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from corpusflow.actors.models.device import reserved_accelerator
from corpusflow.actors.prompts.answer import AnswerError, AskAnswer, VideoAnswer, ask_schema_for, schema_for, validate, \
    validate_ask
from corpusflow.actors.engines.vlm import VlmEngine, VlmRequest, load_engine
from corpusflow.actors.prompts import corpus
from corpusflow.actors.prompts.video import DESCRIBE_TASK, SYSTEM, Transcript, VideoMeta, ask_task, final_task, retry_note, \
    transcript_text, user_text, window_task
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import Row, RowOutcome, Stage, StageContract, StageFailure

# Prompt tokens held back for the note a retry adds, so a retried prompt still fits the context.
_NOTE_TOKENS = 160
# Shortest a window's description may be cut to in the merge prompt.
_MIN_WINDOW_CHARS = 48
# Share of the measured characters-per-token that answer sizes count on: languages and symbols denser
# than the English sample spend more tokens per character, and the answer must still close in time.
_CHARS_PER_TOKEN_MARGIN = 0.5


@dataclass
class _Job:
    """One engine request and its answer; ``make(note)`` rebuilds the request for a retry."""

    make: Callable[[str], VlmRequest]
    check: Callable[[str], Any]
    request: VlmRequest
    attempts: int = 0
    raw: str = ""
    answer: Any = None
    error: str = ""
    engine_s: float = 0.0


@dataclass
class _Video:
    frame_ts: np.ndarray
    duration_s: float
    meta: VideoMeta
    transcript: Transcript
    jobs: list[_Job]            # one job when the video fit one context, else one per window
    windows: list[tuple[float, float]]
    frames_used: int
    prep_s: float
    final: _Job | None = None


def even_indices(n: int, k: int) -> np.ndarray:
    """Indices of ``min(n, k)`` items spread evenly over ``n``, first and last included."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def video_inputs(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, VideoMeta, Transcript]:
    """A decoded, transcribed row → (frames, timestamps, metadata, transcript) for a prompt."""
    frames, ts = frames_and_times(row["frames"], row["frame_ts"])
    known = row["duration_s"] is not None and np.isfinite(row["duration_s"]) and row["duration_s"] > 0
    duration = float(row["duration_s"]) if known else float(ts.max())  # the container may not say
    meta = VideoMeta(uri=str(row["uri"]), duration_s=duration, language=str(row["language"] or ""),
                     meta_json=str(row["meta_json"] or ""), shot_ts=np.asarray(row["shot_ts"], dtype=np.float64))
    transcript = Transcript(np.asarray(row["seg_start"], dtype=np.float64),
                            np.asarray(row["seg_end"], dtype=np.float64), tuple(str(t) for t in row["seg_text"]))
    return frames, ts, meta, transcript


def frames_and_times(frames: np.ndarray, frame_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A row's frames as one (n, H, W, 3) array with float timestamps; a row without frames fails."""
    frames, ts = np.asarray(frames), np.asarray(frame_ts, dtype=np.float64)
    if frames.ndim != 4 or len(frames) == 0:
        raise StageFailure("no frames were sampled from this video, so there is nothing to look at")
    if len(frames) != len(ts):
        raise StageFailure(f"{len(frames)} frames but {len(ts)} frame timestamps were sampled")
    return frames, ts


def answer_columns(answer: VideoAnswer) -> dict[str, Any]:
    """A valid answer as Describe's summary, chapter and keyframe columns (the vLLM path's too)."""
    return {"summary": answer.summary,
            "chapter_start": _f64([c.start_s for c in answer.chapters]),
            "chapter_end": _f64([c.end_s for c in answer.chapters]),
            "chapter_title": [c.title for c in answer.chapters],
            "keyframe_ts": _f64([k.t_s for k in answer.keyframes]),
            "keyframe_caption": [k.caption for k in answer.keyframes]}


def _failure(job: _Job, where: str) -> str:
    if not job.attempts:  # the engine itself failed; its message says how
        return job.error
    return f"the VLM gave no valid answer{where} in {job.attempts} attempt(s): {job.error}"


def _f64(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


class Describe(Stage):
    """Ray Data / Serve stage: a decoded, transcribed video → summary, chapters and keyframes (and ``ask``)."""

    contract = StageContract(
        name="vlm", kinds=("video",),
        reads=("asset_id", "uri", "duration_s", "meta_json", "frames", "frame_ts", "shot_ts", "language",
               "seg_start", "seg_end", "seg_text"),
        writes={"summary": "str", "chapter_start": "tensor[float64]", "chapter_end": "tensor[float64]",
                "chapter_title": "list[str]", "keyframe_ts": "tensor[float64]", "keyframe_caption": "list[str]",
                "vlm_raw": "str", "vlm_model": "str", "vlm_engine": "str", "vlm_attempts": "int64",
                "vlm_windows": "int64", "frames_used": "int64"},
        drops=("frames",),
    )

    def __init__(self, config: StageConfig, engine: VlmEngine | None = None):
        super().__init__(config)
        self.vlm = config.vlm
        self.engine = engine or load_engine(config.profile, config.model_cache)
        self.accelerator = reserved_accelerator()
        self._limit = self.engine.max_model_len - self.vlm.max_new_tokens - _NOTE_TOKENS
        per_token = max(1.0, _CHARS_PER_TOKEN_MARGIN * self._chars_per_token())
        self._answer_chars = int(self.vlm.max_new_tokens * per_token)
        schema_for([99999.99], self._answer_chars)  # a budget too small for any answer fails here, not per row

    @property
    def admits_concurrent_calls(self) -> bool:  # type: ignore[override]
        return self.engine.admits_concurrent_calls

    def _chars_per_token(self) -> float:
        """Characters per token of this engine's tokenizer on English prose (1 for a byte-level one)."""
        empty = VlmRequest(np.zeros((0, 1, 1, 3), dtype=np.uint8), np.zeros(0), "", "", {}, 1)
        sample = DESCRIBE_TASK * 4
        tokens = self.engine.count_tokens(replace(empty, user=sample)) - self.engine.count_tokens(empty)
        return len(sample) / max(tokens, 1)

    # -- building requests -------------------------------------------------------------------------------

    def _fit(self, frames: np.ndarray, ts: np.ndarray, meta: VideoMeta, transcript: Transcript, task: str,
             schema: dict, thin: bool) -> Callable[[str], VlmRequest] | None:
        """A request builder whose prompt fits the context, thinning the transcript if ``thin``; else None."""
        chars = self.vlm.max_transcript_chars
        while True:
            text = transcript_text(transcript, chars)

            def make(reason: str, text: str = text) -> VlmRequest:
                note = retry_note(reason, _NOTE_TOKENS - 2) if reason else ""
                return VlmRequest(frames, ts, SYSTEM, user_text(meta, text, task, note), schema,
                                  self.vlm.max_new_tokens)

            if self.engine.count_tokens(make("")) <= self._limit:
                return make
            if not thin or not text:
                return None
            chars = len(text) // 2

    def _job(self, make: Callable[[str], VlmRequest], check: Callable[[str], Any]) -> _Job:
        return _Job(make=make, check=check, request=make(""))

    def _plan(self, row: dict[str, Any]) -> _Video:
        t0 = time.perf_counter()
        frames, ts, meta, transcript = video_inputs(row)
        duration = meta.duration_s
        sel = even_indices(len(frames), self.engine.max_frames)
        make = self._fit(frames[sel], ts[sel], meta, transcript, DESCRIBE_TASK,
                         schema_for(ts[sel], self._answer_chars), thin=False)
        if make is not None:
            job = self._job(make, lambda raw, s=ts[sel]: validate(raw, s, duration))
            return _Video(ts, duration, meta, transcript, [job], [(0.0, duration)], len(sel),
                          time.perf_counter() - t0)
        jobs, spans = self._windows(frames, ts, meta, transcript)
        return _Video(ts, duration, meta, transcript, jobs, spans, len(frames), time.perf_counter() - t0)

    def _windows(self, frames: np.ndarray, ts: np.ndarray, meta: VideoMeta,
                 transcript: Transcript) -> tuple[list[_Job], list[tuple[float, float]]]:
        """Overlapping windows of as many frames as fit one context each, covering every sampled frame."""
        n = len(frames)
        size = min(self.engine.max_frames, n)
        while size >= 1:
            overlap = min(self.vlm.window_overlap_frames, size - 1)
            step = size - overlap
            starts = sorted({min(s, n - size) for s in range(0, max(n - overlap, 1), step)})
            jobs, spans = [], []
            for k, a in enumerate(starts, 1):
                b = a + size
                t0 = 0.0 if a == 0 else float(ts[a])
                t1 = meta.duration_s if b >= n else float(ts[b])
                task = window_task(k, len(starts), t0, t1) if len(starts) > 1 else DESCRIBE_TASK
                make = self._fit(frames[a:b], ts[a:b], meta, transcript.between(t0, t1), task,
                                 schema_for(ts[a:b], self._answer_chars), thin=True)
                if make is None:
                    break
                jobs.append(self._job(make, lambda raw, s=ts[a:b]: validate(raw, s, meta.duration_s)))
                spans.append((t0, t1))
            else:
                return jobs, spans
            size = size - max(1, size // 8)
        raise StageFailure(f"not even one frame fits the model's context of {self.engine.max_model_len} tokens "
                           f"with {self.vlm.max_new_tokens} new tokens; lower video.frame_size or "
                           "vlm.max_new_tokens, or raise max_model_len")

    def _final(self, video: _Video) -> _Job:
        """The merge pass: the windows' answers plus the full transcript, timestamps from all frames.

        Window answers that together overflow the context are shortened alike, before giving up.
        """
        parts = [json.dumps(j.answer.model_dump(), separators=(",", ":"), ensure_ascii=False) for j in video.jobs]
        empty = np.zeros((0, 1, 1, 3), dtype=np.uint8)
        schema = schema_for(video.frame_ts, self._answer_chars)
        cap = max(len(p) for p in parts)
        while cap >= _MIN_WINDOW_CHARS:
            task = final_task([p if len(p) <= cap else p[:cap - 1] + "…" for p in parts])
            make = self._fit(empty, np.zeros(0), video.meta, video.transcript, task, schema, thin=True)
            if make is not None:
                return self._job(make, lambda raw: validate(raw, video.frame_ts, video.duration_s))
            cap //= 2
        raise StageFailure(f"the descriptions of its {len(video.jobs)} windows do not fit one context of "
                           f"{self.engine.max_model_len} tokens; raise max_model_len or lower video.max_frames")

    # -- asking the engine -------------------------------------------------------------------------------

    def _settle(self, jobs: list[_Job]) -> None:
        """Ask the engine for all jobs at once; re-ask those with invalid answers, up to the retry limit."""
        pending = list(jobs)
        for attempt in range(1 + self.vlm.retries):
            if not pending:
                return
            t0 = time.perf_counter()
            try:
                raws = self.engine.generate([j.request for j in pending])
            except Exception as e:  # noqa: BLE001 - recorded on the rows it hit, the batch goes on
                for j in pending:
                    j.error = f"the {self.engine.name} engine failed: {type(e).__name__}: {e}"
                return
            share = (time.perf_counter() - t0) / len(pending)
            again = []
            for j, raw in zip(pending, raws):
                j.attempts, j.raw, j.engine_s = j.attempts + 1, raw, j.engine_s + share
                try:
                    j.answer, j.error = j.check(raw), ""
                except AnswerError as e:
                    j.error = str(e)
                    if attempt < self.vlm.retries:
                        j.request = j.make(j.error)
                        again.append(j)
            pending = again

    # -- the stage ---------------------------------------------------------------------------------------

    def process(self, rows: list[Row]) -> Sequence[RowOutcome]:
        videos: dict[int, _Video] = {}
        failed: dict[int, Exception] = {}
        for i, row in enumerate(rows):
            try:
                videos[i] = self._plan(row)
            except Exception as e:  # noqa: BLE001 - one bad video must not kill the batch
                failed[i] = e
        self._settle([j for v in videos.values() for j in v.jobs])
        for i, v in videos.items():
            if len(v.jobs) > 1 and all(j.answer is not None for j in v.jobs):
                try:
                    v.final = self._final(v)
                except Exception as e:  # noqa: BLE001
                    failed[i] = e
        self._settle([v.final for v in videos.values() if v.final is not None])
        outcomes = []
        for i in range(len(rows)):
            v = videos.get(i)
            if v is None:
                outcomes.append(RowOutcome(error=failed[i]))
                continue
            shown, why = self._outcome(v) if i not in failed else (None, "")
            error = failed.get(i) or (StageFailure(why) if why else None)
            outcomes.append(self._row_outcome(v, shown, None if error else shown, error))
        return outcomes

    @staticmethod
    def _outcome(v: _Video) -> tuple[_Job | None, str]:
        """The job whose answer (or failure) the row shows, and why the row failed ("" if it did not)."""
        for k, j in enumerate(v.jobs, 1):
            if j.answer is None:
                where = f" for window {k} of {len(v.jobs)} ({v.windows[k - 1][0]:g} s to " \
                        f"{v.windows[k - 1][1]:g} s)" if len(v.jobs) > 1 else ""
                return j, _failure(j, where)
        job = v.final if len(v.jobs) > 1 else v.jobs[0]
        if job is None:
            return None, ""  # the merge pass could not be built; the row already holds why
        return job, "" if job.answer is not None else _failure(job, " when merging the windows")

    def _row_outcome(self, v: _Video, shown: _Job | None, answered: _Job | None,
                     error: Exception | None) -> RowOutcome:
        answer: VideoAnswer | None = answered.answer if answered is not None else None
        engine_s = sum(j.engine_s for j in [*v.jobs, *([v.final] if v.final else [])])
        values = {
            **(answer_columns(answer) if answer else {}),
            # On a failure here the rejected text is kept: it is what a person needs to see why.
            "vlm_raw": shown.raw if shown is not None else "",
            "vlm_model": self.engine.model_id, "vlm_engine": self.engine.name,
            "vlm_attempts": shown.attempts if shown is not None else 0,
            "vlm_windows": len(v.jobs), "frames_used": v.frames_used,
        }
        return RowOutcome(values, error, wall_s=v.prep_s + engine_s, device_s=engine_s)

    # -- online question answering ---------------------------------------------------------------------

    def ask_passages(self, question: str, passages: list[str]) -> corpus.CorpusAnswer:
        """Answer a question from retrieved passages (text only), citing passage numbers; StageFailure when it cannot."""
        no_frames = np.zeros((0, 1, 1, 3), dtype=np.uint8)
        schema = corpus.corpus_schema(len(passages), self._answer_chars // 2)
        shown = list(passages)
        while True:
            def make(reason: str, shown: list[str] = shown) -> VlmRequest:
                note = retry_note(reason, _NOTE_TOKENS - 2) if reason else ""
                user = corpus.corpus_task(question, shown) + (f"\n\n{note}" if note else "")
                return VlmRequest(no_frames, np.zeros(0), corpus.SYSTEM, user, schema, self.vlm.max_new_tokens)

            if self.engine.count_tokens(make("")) <= self._limit:
                break
            if len(shown) == 1:
                raise StageFailure(f"the question and one passage do not fit the model's context of "
                                   f"{self.engine.max_model_len} tokens")
            shown = shown[:-1]  # the lowest-ranked passage goes first
        job = self._job(make, lambda raw, n=len(shown): corpus.validate_corpus(raw, n))
        self._settle([job])
        if job.answer is None:
            raise StageFailure(f"the model gave no valid answer in {job.attempts} attempt(s): {job.error}")
        return job.answer

    def ask(self, frames: np.ndarray, frame_ts: np.ndarray, transcript: Transcript, meta: VideoMeta,
            question: str) -> AskAnswer:
        """Answer a question about one video, citing frame times; raises StageFailure when it cannot."""
        frames, frame_ts = frames_and_times(frames, frame_ts)
        sel, make = even_indices(len(frames), self.engine.max_frames), None
        while make is None and len(sel):
            schema = ask_schema_for(frame_ts[sel], self._answer_chars)
            make = self._fit(frames[sel], frame_ts[sel], meta, transcript, ask_task(question), schema, thin=True)
            if make is None:  # fewer frames, still spread over the whole video
                sel = sel[even_indices(len(sel), len(sel) * 3 // 4)] if len(sel) > 1 else sel[:0]
        if make is None:
            raise StageFailure(f"the question does not fit the model's context of {self.engine.max_model_len} tokens")
        job = self._job(make, lambda raw, s=frame_ts[sel]: validate_ask(raw, s, meta.duration_s))
        self._settle([job])
        if job.answer is None:
            raise StageFailure(f"the VLM gave no valid answer in {job.attempts} attempt(s): {job.error}")
        return job.answer
