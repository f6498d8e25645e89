"""The embedding stage of the search index job: unit text → vector, as an actor pool (model loaded once).

All texts of a batch go through the embedder together; a batch the embedder refuses is retried one
text at a time, so a single bad text becomes that unit's error row, not the batch's.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from corpusflow.actors.engines.embed import load_embedder
from corpusflow.contracts.stage import Row, RowOutcome, Stage, StageContract, outcome_of


class Embed(Stage):
    contract = StageContract(name="embed", reads=("text",), writes={"vector": "tensor[float32]"}, metrics=False)

    def __init__(self, config):
        super().__init__(config)
        self.embedder = self.load_model(lambda: load_embedder(config.profile.embedding, config.model_cache),
                                        f"embedding model {config.profile.embedding.source}")

    def process(self, rows: list[Row]) -> Sequence[RowOutcome]:
        texts = [str(r["text"]) for r in rows]
        t0 = time.perf_counter()
        try:
            vectors = self.embedder.passages(texts)
        except Exception:  # noqa: BLE001 - find the row at fault instead of failing them all
            return [outcome_of(self._one, r) for r in rows]
        share = (time.perf_counter() - t0) / max(len(rows), 1)
        return [RowOutcome({"vector": np.ascontiguousarray(v, dtype=np.float32)}, wall_s=share) for v in vectors]

    def _one(self, row: Row) -> dict[str, np.ndarray]:
        return {"vector": np.ascontiguousarray(self.embedder.passages([str(row["text"])])[0], dtype=np.float32)}
