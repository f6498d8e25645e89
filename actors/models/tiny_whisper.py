"""Tiny, randomly initialised Whisper and wav2vec2 checkpoints of the real architectures, built offline.

Used by the ``tiny-random`` profile and the tests: the real loading code (faster-whisper/CTranslate2,
whisperX alignment, transformers) runs on them; what they transcribe is noise. The Whisper tokenizer
has large-v3's id layout — 50257 text tokens (bytes, then byte-pair merges we generate), then
<|endoftext|>, <|startoftranscript|>, 100 language tokens, task tokens, <|notimestamps|> and 1501
timestamp tokens (51866 in all) — because CTranslate2 treats a Whisper model as multilingual only
with a vocabulary that large, and language detection, prompts and timestamp ids depend on the layout.
"""
from __future__ import annotations

import json
import tempfile
from itertools import product
from pathlib import Path

N_MELS = 128  # large-v3's mel bins
N_TEXT_TOKENS = 50257
N_TIMESTAMPS = 1501  # <|0.00|> … <|30.00|>
AFTER_LANGUAGES = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                   "<|notimestamps|>")
SPACE_ID = ord(" ")  # byte tokens come first in byte order; Whisper suppresses a leading blank
ALIGN_CHARS = "abcdefghijklmnopqrstuvwxyz'"


def _languages() -> list[str]:
    """Whisper's language codes in token order (large-v3: 100, ending with 'yue')."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [code for code in LANGUAGES if code in _LANGUAGE_CODES]


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order (what ByteLevel emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = {b: b for b in printable}
    stand_in.update({b: 256 + i for i, b in enumerate(b for b in range(256) if b not in printable)})
    return [chr(stand_in[b]) for b in range(256)]


def _text_vocab() -> tuple[dict[str, int], list[str]]:
    """Bytes plus generated merges of letters and 'Ġ' (space) up to Whisper's 50257 text tokens."""
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    letters = [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "Ġ"]
    pairs = list(product(letters, letters))
    triples = [(a + b, c) for (a, b), c in product(pairs, letters)]
    merges = []
    for left, right in (*pairs, *triples):
        if len(vocab) == N_TEXT_TOKENS:
            break
        vocab[left + right] = len(vocab)
        merges.append(f"{left} {right}")
    return vocab, merges


def _whisper_tokenizer_json(languages: list[str]) -> tuple[dict, dict[str, int]]:
    """tokenizer.json content and the ids of the special tokens."""
    vocab, merges = _text_vocab()
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in languages), *AFTER_LANGUAGES]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]
    ids = {t: len(vocab) + i for i, t in enumerate([*specials, *timestamps])}
    added = [{"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t in specials} for t in (*specials, *timestamps)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": added, "pre_tokenizer": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    return tok, {t: ids[t] for t in specials}


def build_whisper_hf(dest: Path, seed: int = 0, d_model: int = 64, layers: int = 2, heads: int = 4,
                     decoder_layers: int | None = None) -> None:
    """Write a tiny multilingual ``WhisperForConditionalGeneration`` with tokenizer and processor (transformers layout).

    The sizes also give the real architectures with random weights (benchmarks): large-v3 is 1280 wide
    with 32 + 32 layers and 20 heads; large-v3-turbo the same with 4 decoder layers.
    """
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration)

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    languages = _languages()
    tok, ids = _whisper_tokenizer_json(languages)
    vocab_size = max(ids.values()) + 1 + N_TIMESTAMPS  # 51866, as large-v3
    (dest / "tokenizer.json").write_text(json.dumps(tok))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "model_max_length": 448, "errors": "replace",
        "unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "extra_special_tokens": [t for t in ids if t != "<|endoftext|>"],
    }))
    WhisperFeatureExtractor(feature_size=N_MELS).save_pretrained(dest)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=N_MELS, d_model=d_model, encoder_layers=layers,
        decoder_layers=decoder_layers or layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=d_model * 4,
        decoder_ffn_dim=d_model * 4, max_source_positions=1500, max_target_positions=448,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        begin_suppress_tokens=None, suppress_tokens=None,  # generation settings live in generation_config
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=448, suppress_tokens=[], begin_suppress_tokens=[SPACE_ID, eot],
        is_multilingual=True, no_timestamps_token_id=ids["<|notimestamps|>"],
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in languages},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        alignment_heads=[[(decoder_layers or layers) - 1, h] for h in range(heads)],
    )
    model.save_pretrained(dest)


def build_whisper_ct2(dest: Path) -> None:
    """Write a tiny random Whisper in faster-whisper layout: CTranslate2 model.bin plus tokenizer and processor."""
    from ctranslate2.converters import TransformersConverter

    with tempfile.TemporaryDirectory(prefix="tiny-whisper-hf-") as hf:
        build_whisper_hf(Path(hf))
        converter = TransformersConverter(hf, copy_files=["tokenizer.json", "preprocessor_config.json"])
        converter.convert(str(dest), quantization="float32", force=True)


def build_wav2vec2(dest: Path, seed: int = 0) -> None:
    """Write a tiny random ``Wav2Vec2ForCTC`` with a lower-case character vocabulary, as whisperX's aligner loads it."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c: 5 + i for i, c in enumerate(ALIGN_CHARS)})
    with tempfile.TemporaryDirectory(prefix="tiny-w2v2-vocab-") as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="<unk>", pad_token="<pad>",
                                         word_delimiter_token="|", do_lower_case=True)
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                        do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(dest)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32, 32, 32, 32, 32), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, pad_token_id=0, ctc_loss_reduction="mean",
        do_stable_layer_norm=False, feat_extract_norm="group",
    )
    torch.manual_seed(seed)
    Wav2Vec2ForCTC(config).eval().save_pretrained(dest)
