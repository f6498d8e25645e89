"""A transformers encoder (multilingual-e5, BGE-M3, the tiny-random BERT): mean or CLS pooling, normalised.

Pooling follows the model's sentence-transformers config (``1_Pooling/config.json``) when it has one,
else mean pooling. GPU when this actor was given one, else CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from corpusflow.actors.engines.embed import normalised
from corpusflow.actors.models.store import resolve
from corpusflow.contracts.search import EmbeddingModel


def _pooling(folder: Path) -> str:
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


class TransformersEmbedder:
    def __init__(self, model: EmbeddingModel, cache_dir: str):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from corpusflow.actors.models.device import torch_device

        hf_logging.disable_progress_bar()  # a weight-loading bar would land in `corpusflow search`'s answer

        folder = Path(resolve(model.source, "bert-embed", cache_dir))
        self.spec, self.device = model, torch_device()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        self.pooling = _pooling(folder)
        self.dim = int(self.model.config.hidden_size)

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), self.spec.batch_size):
            batch = [prefix + t for t in texts[i:i + self.spec.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.spec.max_tokens,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(pooled.cpu().numpy())
        return normalised(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    def passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.spec.passage_prefix)

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.spec.query_prefix)
