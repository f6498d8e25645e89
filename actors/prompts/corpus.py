"""Asking across the corpus: retrieved passages in, an answer citing only those passages out.

Citations are grounded by construction, as frame timestamps are for one video: the answer's
``citations`` field is an enum of the passage numbers shown, so the model can only cite a moment or
page that was retrieved; the caller maps the numbers back to their URIs, times and pages.
"""
from __future__ import annotations

from corpusflow.actors.prompts.answer import AnswerError, _Answer, _parse

SYSTEM = ("You answer questions about a corpus of videos, audio recordings and documents from numbered passages "
          "retrieved from it. Answer only with JSON following the schema. Cite the numbers of the passages the "
          "answer rests on; say so when the passages do not answer the question.")
_MAX_PASSAGE_CHARS = 1200
_MAX_CITATIONS = 8


class CorpusAnswer(_Answer):
    answer: str
    citations: list[int]


def corpus_task(question: str, passages: list[str]) -> str:
    listed = "\n\n".join(f"[{i}] {p[:_MAX_PASSAGE_CHARS]}" for i, p in enumerate(passages, 1))
    return f"Passages:\n{listed}\n\nTask: answer the question from these passages.\nQuestion: {question}"


def corpus_schema(n_passages: int, answer_chars: int) -> dict:
    """The answer (bounded length) and up to 8 citations, each one of the passage numbers 1..n."""
    if n_passages < 1:
        raise ValueError("an answer across the corpus needs at least one retrieved passage")
    return {"type": "object", "additionalProperties": False, "required": ["answer", "citations"],
            "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": max(16, answer_chars)},
                           "citations": {"type": "array", "items": {"enum": list(range(1, n_passages + 1))},
                                         "minItems": 0, "maxItems": min(_MAX_CITATIONS, n_passages)}}}


def validate_corpus(raw: str, n_passages: int) -> CorpusAnswer:
    """The parsed answer, or AnswerError when it cites a passage that was not shown."""
    answer = _parse(raw, CorpusAnswer)
    bad = [c for c in answer.citations if not 1 <= c <= n_passages]
    if bad:
        raise AnswerError(f"the answer cites passages {bad}, but only 1 to {n_passages} were given")
    return answer
