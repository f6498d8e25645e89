"""The one query function: the CLI (`corpusflow search`) and the API (`POST /v1/search`) both call :func:`search`.

Lexical (BM25 over the language-tokenised full-text columns) and semantic (cosine over the unit
vectors) retrieval run side by side with the same SQL filter (see POSTFILTER_OVERFETCH); hybrid fuses
their scores: each retriever's scores are standardised (z-scores against its own first FUSION_POOL
candidates for this query) and a unit's fused score is a convex combination of the two, with
SEMANTIC_WEIGHT on the dense side; a unit one retriever did not return gets that retriever's lowest
z in the pool. A z-score says how far a candidate stands out from what that retriever found for this
query, so BM25 counts where it is evidence: one page holding a rare query word stands out, while
many pages sharing a common one ("dose", "inspección") score alike and get small z-scores. Each hit
says which retrievers found it and at which rank. A :class:`Reranker`, when given, reorders the fused
candidates before paging. Page tokens carry the offset and a hash of the request, so a token cannot
page through a different query. An index whose embedder failed its probe (actors/search/embedder_check.py)
is searched by words alone in hybrid mode, and every result says why.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Protocol

from corpusflow.actors.engines.embed import Embedder
from corpusflow.actors.search.embedder_check import untrusted_notice
from corpusflow.actors.search.store import IndexReader
from corpusflow.contracts.config import RANDOM_SOURCE
from corpusflow.contracts.search import MAX_DEPTH, RETRIEVERS, Hit, SearchRequest, SearchResult

# A filter that usually keeps much of the index (kind, modality, language, duration, time window) is applied
# to this many times the wanted candidates, fetched unfiltered: a pre-filter would first resolve the filter
# over every unit (tens of ms at 10^6 units), while the best candidates that pass are the same either way.
POSTFILTER_OVERFETCH = 6
# Hybrid fusion (docs/architecture.md, "Hybrid fusion"): z-scores against each retriever's first FUSION_POOL
# candidates, weighted SEMANTIC_WEIGHT : 1 - SEMANTIC_WEIGHT. The pool is what a default query (10 hits) fetches
# anyway, so fusion reads no extra rows, and it is fixed, so every page of a query is ranked against the same
# candidates. The weight was chosen on the even-numbered queries of benchmarks/search_quality.py; the odd ones
# are held out (docs/quality.md, "Search").
FUSION_POOL = 11
SEMANTIC_WEIGHT = 0.65
SNIPPET_CHARS = 240
_COLUMNS = ["unit_id", "asset_id", "uri", "kind", "modality", "source", "t_start", "t_end", "page", "language", "text"]
_WORD = re.compile(r"\w+", re.UNICODE)
# Hybrid runs its two retrievers side by side; threads outlive queries (starting two per query costs ms).
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="search")


class QueryError(ValueError):
    """A request the index cannot answer as asked (a page token of another query, ...)."""


class Reranker(Protocol):
    """Reorders fused candidates (a cross-encoder: actors/search/rerank.py); returns the same hits, best first."""

    depth: int  # how many fused candidates it wants to see: the retrievers fetch at least this many

    def rerank(self, query: str, hits: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(_sql(v) for v in values)})"


def where_clause(req: SearchRequest) -> Optional[str]:
    """The SQL pre-filter both retrievers apply before ranking (so filters never empty a page of hits)."""
    parts = []
    if set(req.modalities) != {"speech", "visual", "pdf", "summary"}:
        parts.append(_in("modality", req.modalities))
    if req.asset_ids:
        parts.append(_in("asset_id", req.asset_ids))
    if req.kinds:
        parts.append(_in("kind", req.kinds))
    if req.languages:
        parts.append(_in("language", req.languages))
    if req.uri_prefix:
        parts.append(f"starts_with(uri, {_sql(req.uri_prefix)})")
    if req.min_duration_s is not None:
        parts.append(f"duration_s >= {float(req.min_duration_s)!r}")
    if req.max_duration_s is not None:
        parts.append(f"duration_s <= {float(req.max_duration_s)!r}")
    if req.t_from is not None:
        parts.append(f"t_end >= {float(req.t_from)!r}")
    if req.t_to is not None:
        parts.append(f"t_start <= {float(req.t_to)!r}")
    return " AND ".join(parts) or None


def _fingerprint(req: SearchRequest) -> str:
    keyed = req.model_dump(exclude={"page_token", "limit"})
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _offset(req: SearchRequest) -> int:
    if not req.page_token:
        return 0
    try:
        token = json.loads(base64.urlsafe_b64decode(req.page_token.encode()))
        offset, of = int(token["o"]), str(token["q"])
    except (ValueError, KeyError, TypeError) as e:
        raise QueryError("page_token is not one this server issued") from e
    if of != _fingerprint(req):
        raise QueryError("page_token belongs to another query or other filters")
    return offset


def _token(req: SearchRequest, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": _fingerprint(req)}).encode()).decode()


def link(uri: str, t_start: Optional[float], t_end: Optional[float], page: Optional[int]) -> str:
    """A deep link: Media Fragments ``#t=start,end`` for moments, ``#page=N`` (PDF open parameters) for pages."""
    if page is not None:
        return f"{uri}#page={page}"
    if t_start is not None and t_end is not None:
        return f"{uri}#t={t_start:.1f},{t_end:.1f}"
    return uri


def snippet(text: str, query: str, chars: int = SNIPPET_CHARS) -> str:
    """Up to ``chars`` of ``text`` around the first query word it contains (its start when none)."""
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    lowered = text.lower()
    hits = [lowered.find(w.lower()) for w in _WORD.findall(query) if len(w) > 2]
    at = min((h for h in hits if h >= 0), default=0)
    start = max(0, min(at - chars // 3, len(text) - chars))
    cut = text[start:start + chars]
    return ("…" if start else "") + cut + ("…" if start + chars < len(text) else "")


def _ranked(table: Any, score: str) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for r in rows:
        r["_retriever_score"] = (1.0 - r[score]) if score == "_distance" else r[score]
    return rows


def standardised(scores: list[float], pool: int = FUSION_POOL) -> tuple[list[float], float]:
    """z-scores of one retriever's ``scores`` (best first) against its first ``pool``, and the lowest z in that pool,
    which every unit outside the pool gets (also one this retriever did not return): a unit's fused score then
    never depends on how deep a page made the retrievers look. Fewer than two scores, or all equal: zeros."""
    ref = scores[:pool]
    spread = statistics.pstdev(ref) if len(ref) > 1 else 0.0
    if spread == 0.0:
        return [0.0] * len(scores), 0.0
    mean = statistics.fmean(ref)
    floor = (min(ref) - mean) / spread
    return [(x - mean) / spread for x in ref] + [floor] * (len(scores) - len(ref)), floor


def fuse(lists: dict[str, list[dict[str, Any]]], semantic_weight: float = SEMANTIC_WEIGHT) -> dict[str, dict[str, Any]]:
    """Hybrid: the units of both retrievers' lists (rows with ``_retriever_score``, best first), each scored
    ``semantic_weight * z_semantic + (1 - semantic_weight) * z_lexical``."""
    weights = {"semantic": semantic_weight, "lexical": 1.0 - semantic_weight}
    fused: dict[str, dict[str, Any]] = {}
    floors = {}
    for name, rows in lists.items():
        z, floors[name] = standardised([r["_retriever_score"] for r in rows])
        for rank, (row, value) in enumerate(zip(rows, z), 1):
            unit = fused.setdefault(row["unit_id"], {**row, "matched": {}, "z": {}})
            unit["matched"][name] = rank
            unit["z"][name] = value
    for unit in fused.values():
        unit["score"] = sum(w * unit["z"].get(name, floors[name]) for name, w in weights.items())
    return fused


def search(reader: IndexReader, embedder: Optional[Embedder], req: SearchRequest,
           reranker: Optional[Reranker] = None) -> SearchResult:
    """Ranked hits for ``req`` over the reader's index version (``embedder`` may be None for lexical mode)."""
    offset = _offset(req)
    want = offset + req.limit
    if want > MAX_DEPTH:
        raise QueryError(f"pages reach at most {MAX_DEPTH} hits deep; narrow the query with filters")
    per_hit = 5 if req.group_by == "asset" else 1  # units fetched per hit wanted: an asset gathers several
    depth = min(MAX_DEPTH, want * per_hit + 1)
    if req.mode == "hybrid":
        depth = max(depth, FUSION_POOL)  # the pool the z-scores are taken against
    if req.rerank and reranker is None:
        raise QueryError(f"reranker {req.rerank!r} was asked for but not loaded")
    if reranker is not None:
        depth = max(depth, min(reranker.depth * per_hit + 1, MAX_DEPTH))
    where = where_clause(req)
    if req.mode != "lexical" and embedder is None:
        raise QueryError("semantic search needs the index's embedding model")

    # Asset ids and URI prefixes pick a few assets: pre-filter those (the filter is cheap, few units pass).
    selective = bool(req.asset_ids or req.uri_prefix)

    def filtered(retrieve: Any, first: Any, **kwargs: Any) -> Any:
        if where and not selective:
            rows = retrieve(first, where, depth * POSTFILTER_OVERFETCH, _COLUMNS, prefilter=False, **kwargs)
            if rows.num_rows >= depth:
                return rows.slice(0, depth)
        return retrieve(first, where, depth, _COLUMNS, **kwargs)  # no filter, a selective one, or too few passed

    def lexical() -> list[dict[str, Any]]:
        # A language filter also narrows BM25 to those languages' columns: fewer indices to search, and
        # the best candidates that are left pass the rest of the filter more often.
        return _ranked(filtered(reader.text_search, req.query, languages=req.languages), "_score")

    def semantic() -> list[dict[str, Any]]:
        assert embedder is not None
        vector = embedder.queries([req.query])[0]
        return _ranked(filtered(reader.vector_search, vector), "_distance")

    retrievers = {"lexical": lexical, "semantic": semantic}
    notice = untrusted_embedder(reader)
    # An embedder that failed its probe at index time adds only noise: hybrid ranks by words alone.
    mode = "lexical" if req.mode == "hybrid" and notice else req.mode
    wanted = RETRIEVERS if mode == "hybrid" else (mode,)
    # Hybrid: BM25 runs while the query is embedded and the vectors searched (both release the GIL), so a
    # query waits for the slower retriever, not for both.
    futures = {name: _POOL.submit(retrievers[name]) for name in wanted}
    lists = {name: future.result() for name, future in futures.items()}
    if mode == "hybrid":
        fused = fuse(lists)
    else:
        fused = {r["unit_id"]: {**r, "matched": {mode: rank}, "score": r["_retriever_score"]}
                 for rank, r in enumerate(lists[mode], 1)}
    ranked = sorted(fused.values(), key=lambda u: (-u["score"], min(u["matched"].values()), u["unit_id"]))
    if req.group_by == "asset":
        best: dict[str, dict[str, Any]] = {}
        for unit in ranked:
            best.setdefault(unit["asset_id"], unit)
        ranked = list(best.values())
    if reranker is not None:
        ranked = reranker.rerank(req.query, ranked)
    page = ranked[offset:want]
    hits = [Hit(rank=offset + i + 1, unit_id=u["unit_id"], score=round(float(u["score"]), 6), asset_id=u["asset_id"], uri=u["uri"],
                kind=u["kind"], modality=u["modality"], source=u["source"], t_start=u["t_start"], t_end=u["t_end"],
                page=u["page"], language=u["language"], snippet=snippet(u["text"], req.query), matched=u["matched"],
                link=link(u["uri"], u["t_start"], u["t_end"], u["page"]))
            for i, u in enumerate(page)]
    more = len(ranked) > want and want < MAX_DEPTH
    return SearchResult(query=req.query, mode=req.mode, ranked_by=mode, index_version=reader.version, hits=hits,
                        next_page_token=_token(req, want) if more else None, notice=notice)


def untrusted_embedder(reader: IndexReader) -> Optional[str]:
    """Why the index's vectors are not to be trusted (a sentence for the result header), or None when they are.

    The index job records its embedder's probe (actors/search/embedder_check.py); an index written before
    that is judged by its model's source."""
    source = str((reader.info.get("model") or {}).get("source"))
    check = reader.info.get("embedder_check")
    if check is None:
        return untrusted_notice(None, source) if source == RANDOM_SOURCE else None
    return None if check["trusted"] else untrusted_notice(check, source)
