"""Multiple-choice questions about a video (Video-MME style): the prompt, the A–D answer schema, the parse.

The frames go first, each preceded by its time (actors/engines/vlm.py:messages), as in every request
of ours; then the subtitles at those frames when a condition gives them, the question, its options
and the instruction to answer with one letter. Decoding is greedy and constrained to
``{"answer": "A"|"B"|"C"|"D"}``, so every answer parses, whatever the model.
"""
from __future__ import annotations

import json
import re
from typing import Sequence

LETTERS = ("A", "B", "C", "D")

SYSTEM = ("You are a careful analyst of videos. Each image is a frame of one video, preceded by the time it "
          "was taken as [t=...s]. Answer multiple-choice questions about the video with the letter of the best "
          "option, as JSON following the schema.")

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": list(LETTERS)}},
          "required": ["answer"], "additionalProperties": False}

# The answer JSON is a handful of tokens; a little slack for tokenisers that split the letter oddly.
MAX_NEW_TOKENS = 16

_LETTER = re.compile(r"^\s*\(?([A-D])[\).:\s]")


def option_lines(options: Sequence[str]) -> list[str]:
    """Options as 'A. text' lines, whether the data gives them lettered ('A. text') or bare ('text')."""
    return [o.strip() if _LETTER.match(o.strip() + " ") else f"{letter}. {o.strip()}"
            for letter, o in zip(LETTERS, options)]


def user_text(question: str, options: Sequence[str], subtitles: Sequence[str] = ()) -> str:
    """The text after the frames: subtitles (if any), the question, its options, the instruction."""
    parts = []
    if subtitles:
        parts.append("This video's subtitles at the frames shown:\n" + "\n".join(subtitles))
    parts.append("Select the best answer to the following multiple-choice question based on the video.\n"
                 f"Question: {question.strip()}\n" + "\n".join(option_lines(options)))
    parts.append("Answer with the letter (A, B, C or D) of the best option.")
    return "\n\n".join(parts)


def parse(raw: str) -> str:
    """The letter chosen in a raw answer; '' when there is none (an engine failure, not a constrained answer)."""
    try:
        letter = json.loads(raw).get("answer", "")
    except (json.JSONDecodeError, AttributeError):
        found = _LETTER.match(raw + " ")
        return found.group(1) if found else ""
    return letter if letter in LETTERS else ""
