"""A tiny, randomly initialised BERT text encoder and BERT cross-encoder of the real architectures, built offline.

The ``tiny-random`` profile's embedder and reranker: the real transformers loading, tokenisation, pooling and
scoring code runs on them; their vectors and scores carry no meaning. The WordPiece vocabulary is single characters (ASCII and
Latin-1 letters, each also as a ``##`` continuation), so any text tokenises without a download.
"""
from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    chars = [chr(c) for c in (*range(0x21, 0x7F), *range(0xC0, 0x100)) if chr(c).isprintable()]
    return [*SPECIALS, *chars, *(f"##{c}" for c in chars if c.isalnum())]


def _tokenizer_and_config(dest: Path, seed: int, hidden: int, layers: int, heads: int, **extra: int):
    """Write the character WordPiece tokenizer to ``dest``, seed torch, and give the tiny ``BertConfig``."""
    import torch
    from transformers import BertConfig, BertTokenizerFast

    vocab = _vocab()
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(dest / "vocab.txt"), do_lower_case=True).save_pretrained(dest)
    torch.manual_seed(seed)
    return BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=hidden * 2, max_position_embeddings=512, pad_token_id=0, **extra)


def build_bert_embed(dest: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2) -> None:
    """Write a tiny ``BertModel`` with its tokenizer and a sentence-transformers mean-pooling config."""
    from transformers import BertModel

    dest = Path(dest)
    BertModel(_tokenizer_and_config(dest, seed, hidden, layers, heads)).eval().save_pretrained(dest)
    (dest / "1_Pooling").mkdir(exist_ok=True)
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden,
                                                                "pooling_mode_mean_tokens": True}))


def build_bert_cross_encoder(dest: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2) -> None:
    """Write a tiny ``BertForSequenceClassification`` with one output (the ms-marco cross-encoders' architecture)."""
    from transformers import BertForSequenceClassification

    dest = Path(dest)
    config = _tokenizer_and_config(dest, seed, hidden, layers, heads, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(dest)
