"""What the VLM must answer: pydantic models, the JSON schemas that constrain decoding, validation.

Timestamps are grounded by construction: every timestamp field is an enum of the sampled frames'
timestamps, so the model picks a frame instead of inventing a time (the weakness the paper measured).
String lengths and array sizes are bounded by a character budget (the caller derives it from
``max_new_tokens``) so that constrained decoding must close the JSON in time, even for a randomly
initialised model.
"""
from __future__ import annotations

import json
import math
from typing import Callable, Sequence, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

# Timestamps are offered (and compared) at this many decimals: 10 ms is finer than any frame rate we sample.
TS_DECIMALS = 2
# Characters held back from the budget, for rounding.
_SAFETY_CHARS = 8
_SKELETON = len('{"summary": "", "chapters": [], "keyframes": []}')
# Widest timestamp as JSON ("99999.99", 27 h); sizes assume it so they do not vary per video.
_TS_CHARS = 8
# Shortest title or caption worth asking for.
_MIN_TEXT = 8


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Chapter(_Answer):
    start_s: float
    end_s: float
    title: str


class Keyframe(_Answer):
    t_s: float
    caption: str


class VideoAnswer(_Answer):
    summary: str
    chapters: list[Chapter]
    keyframes: list[Keyframe]


class AskAnswer(_Answer):
    answer: str
    timestamps: list[float]


class AnswerError(ValueError):
    """An answer that cannot be used; the message says why in words a person understands."""


def grid(frame_ts: Sequence[float] | np.ndarray) -> list[float]:
    """The timestamps a model may choose from: the sampled frames' times, rounded, unique, sorted."""
    return sorted({round(float(t), TS_DECIMALS) for t in np.asarray(frame_ts, dtype=np.float64)})


def format_ts(t: float) -> str:
    """How a timestamp reads in prompts: '12.0', '12.5', '12.25' (the value the schema offers)."""
    s = f"{round(float(t), TS_DECIMALS):.{TS_DECIMALS}f}"
    return s[:-1] if s.endswith("0") else s


def _string(min_len: int, max_len: int) -> dict:
    return {"type": "string", "minLength": min_len, "maxLength": max_len}


def _obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _array(items: dict, max_items: int, min_items: int = 1) -> dict:
    return {"type": "array", "items": items, "minItems": min_items, "maxItems": max_items}


def _sizes(budget_chars: int) -> tuple[int, int, int, int]:
    """Summary length, chapter count, keyframe count and title/caption length within ``budget_chars``.

    Sizes depend on the budget alone, not on the video: a grammar engine compiles each distinct
    string-length rule once (seconds for a 150k vocabulary) and reuses it for every later schema.
    Titles and captions share one length for the same reason.
    """
    share = (budget_chars - _SAFETY_CHARS - _SKELETON) // 3
    per_chapter = len('{"start_s": , "end_s": , "title": ""}, ') + 2 * _TS_CHARS
    per_keyframe = len('{"t_s": , "caption": ""}, ') + _TS_CHARS
    if share < per_chapter + _MIN_TEXT:
        need = 3 * (per_chapter + _MIN_TEXT) + _SAFETY_CHARS + _SKELETON
        raise ValueError(f"an answer of {budget_chars} characters leaves no room for one chapter and one "
                         f"keyframe; it needs at least {need}: raise vlm.max_new_tokens")
    n_ch = max(1, min(12, share // (per_chapter + 48)))
    n_kf = max(1, min(16, share // (per_keyframe + 64)))
    return share, n_ch, n_kf, min(share // n_ch - per_chapter, share // n_kf - per_keyframe)


def _enum(frame_ts: Sequence[float] | np.ndarray) -> dict:
    ts = grid(frame_ts)
    if not ts:
        raise ValueError("an answer about a video needs at least one sampled frame timestamp")
    if max(len(json.dumps(t)) for t in ts) > _TS_CHARS:
        raise ValueError(f"timestamps beyond {_TS_CHARS} characters are not supported")
    return {"enum": ts}


def schema_for(frame_ts: Sequence[float] | np.ndarray, budget_chars: int = 512) -> dict:
    """JSON schema of a :class:`VideoAnswer` whose timestamps are the sampled frames' times.

    Every string and array is bounded so that the whole answer, written out, is at most
    ``budget_chars`` characters long.
    """
    enum = _enum(frame_ts)
    summary, n_ch, n_kf, text = _sizes(budget_chars)
    return _obj({
        "summary": _string(1, summary),
        "chapters": _array(_obj({"start_s": enum, "end_s": enum, "title": _string(1, text)}), n_ch),
        "keyframes": _array(_obj({"t_s": enum, "caption": _string(1, text)}), n_kf),
    })


def ask_schema_for(frame_ts: Sequence[float] | np.ndarray, budget_chars: int = 512) -> dict:
    """JSON schema of an :class:`AskAnswer`: an answer as long as a summary, up to 8 cited frame times."""
    enum = _enum(frame_ts)
    summary = _sizes(budget_chars)[0]  # same length rule as the summary's: compiled once for both
    return _obj({"answer": _string(1, summary), "timestamps": _array(enum, min(8, len(enum["enum"])), min_items=0)})


_M = TypeVar("_M", bound=_Answer)


def _parse(raw: str, model: type[_M]) -> _M:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        hint = "" if raw.rstrip().endswith("}") else " (it looks cut off, e.g. at the token limit)"
        raise AnswerError(f"the model's answer is not valid JSON{hint}: {e.msg} at character {e.pos}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the answer"
        raise AnswerError(f"the model's answer does not have the expected fields: {where}: {first['msg']}") from None


def _time_checker(frame_ts: Sequence[float] | np.ndarray, duration_s: float) -> Callable[[str, float], None]:
    allowed = np.asarray(grid(frame_ts))
    end = float(duration_s) if duration_s is not None and math.isfinite(duration_s) and duration_s > 0 else \
        float(allowed.max(initial=0.0))

    def check(what: str, t: float) -> None:
        if not math.isfinite(t) or t < 0 or t > end + 10 ** -TS_DECIMALS:
            raise AnswerError(f"{what} is at {t:g} s, outside the video (0 to {end:g} s)")
        if allowed.size and np.abs(allowed - t).min() > 10 ** -(TS_DECIMALS + 1):
            raise AnswerError(f"{what} is at {t:g} s, which is not the time of any sampled frame")
    return check


def validate(raw: str, frame_ts: Sequence[float] | np.ndarray, duration_s: float) -> VideoAnswer:
    """The parsed answer, or :class:`AnswerError` saying what is wrong with it."""
    answer = _parse(raw, VideoAnswer)
    check = _time_checker(frame_ts, duration_s)
    for i, ch in enumerate(answer.chapters, 1):
        check(f"chapter {i} start", ch.start_s)
        check(f"chapter {i} end", ch.end_s)
        if ch.end_s < ch.start_s:
            raise AnswerError(f"chapter {i} ends at {ch.end_s:g} s, before it starts at {ch.start_s:g} s")
    for i, kf in enumerate(answer.keyframes, 1):
        check(f"keyframe {i}", kf.t_s)
    return answer


def validate_ask(raw: str, frame_ts: Sequence[float] | np.ndarray, duration_s: float) -> AskAnswer:
    """The parsed answer to a question, or :class:`AnswerError` saying what is wrong with it."""
    answer = _parse(raw, AskAnswer)
    check = _time_checker(frame_ts, duration_s)
    for i, t in enumerate(answer.timestamps, 1):
        check(f"cited timestamp {i}", t)
    return answer
