"""Cross-encoder reranking: each (query, unit text) pair of the first fused hits scored by one model, best first.

The query function (query.py) hands its fused candidates to a :class:`~corpusflow.actors.search.query.Reranker`;
this is the one we ship, chosen by name from the models profile's ``rerankers`` (`corpusflow search --rerank
NAME`, the ``rerank`` field of ``POST /v1/search``): any transformers sequence-classification model with one
output, from a Hugging Face id, a folder or an s3:// prefix, or the tiny random BERT cross-encoder of tests.
A cross-encoder reads query and passage together, so it weighs what a bi-encoder's single vector and BM25's
word counts cannot (negation, which entity does what); it costs one forward pass per candidate, hence only the
first ``candidates`` are rescored. GPU when the process has one, else CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from corpusflow.actors.models.store import resolve
from corpusflow.contracts.config import ModelsProfile
from corpusflow.contracts.search import RerankerModel


class UnknownReranker(ValueError):
    """A request named a reranker the models profile does not have."""


class CrossEncoderReranker:
    def __init__(self, name: str, model: RerankerModel, cache_dir: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from corpusflow.actors.models.device import torch_device

        hf_logging.disable_progress_bar()  # a weight-loading bar would land in `corpusflow search`'s answer
        folder = Path(resolve(model.source, "bert-rerank", cache_dir))
        self.name, self.spec, self.device = name, model, torch_device()
        self.depth = model.candidates
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reranker {name!r} ({model.source}) has {self.model.config.num_labels} outputs; "
                             "a cross-encoder with one relevance score is needed")

    def scores(self, query: str, texts: list[str]) -> list[float]:
        """The model's relevance score of each text for ``query`` (higher is better)."""
        import torch

        out: list[float] = []
        for i in range(0, len(texts), self.spec.batch_size):
            batch = texts[i:i + self.spec.batch_size]
            enc = self.tokenizer([query] * len(batch), batch, padding=True, truncation="only_second",
                                 max_length=self.spec.max_tokens, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out.extend(self.model(**enc).logits[:, 0].float().cpu().tolist())
        return out

    def rerank(self, query: str, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        head, tail = hits[:self.depth], hits[self.depth:]
        for hit, score in zip(head, self.scores(query, [h["text"] for h in head])):
            hit["score"] = score
        head.sort(key=lambda h: -h["score"])  # stable: equal scores keep the fused order
        for rank, hit in enumerate(head, 1):
            hit["matched"] = {**hit["matched"], "rerank": rank}
        return head + tail


def load_reranker(name: str, profile: ModelsProfile, cache_dir: str) -> CrossEncoderReranker:
    if name not in profile.rerankers:
        have = ", ".join(sorted(profile.rerankers)) or "none"
        raise UnknownReranker(f"no reranker {name!r} in models profile {profile.name!r} (it has: {have})")
    return CrossEncoderReranker(name, profile.rerankers[name], cache_dir)
