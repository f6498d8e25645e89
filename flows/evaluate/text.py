"""Word and character error rates, on text normalised the way ASR and OCR are usually scored.

Normalisation: lower case, Unicode NFKC, punctuation dropped (apostrophes inside words kept), runs of
white space collapsed. WER and CER are edit distances (substitutions + deletions + insertions) over
the reference's length, summed over pairs before dividing, so long references weigh more.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (one row of the table at a time)."""
    prev = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return int(prev[-1])


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate of hypotheses against references (pairs in order), after :func:`normalise`."""
    pairs = [(normalise(r).split(), normalise(h).split()) for r, h in zip(refs, hyps, strict=True)]
    return sum(edits(r, h) for r, h in pairs) / max(1, sum(len(r) for r, _ in pairs))


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate (spaces count as characters), after :func:`normalise`."""
    pairs = [(normalise(r), normalise(h)) for r, h in zip(refs, hyps, strict=True)]
    return sum(edits(list(r), list(h)) for r, h in pairs) / max(1, sum(len(r) for r, _ in pairs))


def word_start_errors(truth: Sequence[tuple[float, float, str]], heard: Sequence[tuple[float, float, str]]) -> list[float]:
    """Heard minus true start time (s) of every word both agree on, matched in order (difflib's longest blocks)."""
    from difflib import SequenceMatcher

    ref = [normalise(w) for _, _, w in truth]
    hyp = [normalise(w) for _, _, w in heard]
    out = []
    for block in SequenceMatcher(a=ref, b=hyp, autojunk=False).get_matching_blocks():
        out += [heard[block.b + k][0] - truth[block.a + k][0] for k in range(block.size)]
    return out
