"""``corpusflow search OUT "query"``: ranked moments and pages from OUT's search index, readable or as JSON."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pydantic import ValidationError

from corpusflow.contracts.base import ConfigError
from corpusflow.contracts.config import default_cache, load_profile
from corpusflow.contracts.search import MODALITIES, EmbeddingModel, Hit, SearchRequest, SearchResult


def _where(hit: Hit) -> str:
    if hit.page is not None:
        return f"page {hit.page}"
    if hit.t_start is not None and hit.t_end is not None:
        return f"{_clock(hit.t_start)}–{_clock(hit.t_end)}"
    return ""


def _clock(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


# What a hit's score is, by the retrievers it came from (a reranked hit's is the cross-encoder's).
SCORE_MEANING = {"hybrid": "score: how far a hit stands out from this query's candidates (fused z-score; 0 = average)",
                 "lexical": "score: BM25 relevance of the hit's words to the query's (higher is better)",
                 "semantic": "score: cosine similarity of meaning, query to hit (1 = same)"}


def to_text(result: SearchResult) -> str:
    notice = [f"NOTE: {result.notice}"] if result.notice else []
    if not result.hits:
        return "\n".join([f"no hits for {result.query!r} (index {result.index_version})", *notice])
    ranked = result.mode if result.ranked_by == result.mode else f"{result.mode} → {result.ranked_by}"
    lines = [f"{len(result.hits)} hits for {result.query!r} ({ranked}, index {result.index_version}); "
             + SCORE_MEANING[result.ranked_by], *notice]
    for h in result.hits:
        found = ", ".join(f"{r} #{rank}" for r, rank in sorted(h.matched.items()))
        lines.append(f"{h.rank:3d}. {h.uri}  {_where(h)}  [{h.modality}{', ' + h.language if h.language else ''}]  "
                     f"score {h.score:.3f} ({found})")
        lines.append(f"     {h.snippet}")
        lines.append(f"     {h.link}")
    if result.next_page_token:
        lines.append(f"more: --page-token {result.next_page_token}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corpusflow search", description=__doc__)
    p.add_argument("out", help="a job's OUT, indexed by `corpusflow index` or `corpusflow run`")
    p.add_argument("query", help="what to look for, in any language")
    p.add_argument("--json", action="store_true", help="print the result as JSON (the /v1/search answer)")
    p.add_argument("--mode", choices=("hybrid", "semantic", "lexical"), default="hybrid")
    p.add_argument("--modality", action="append", choices=MODALITIES, help="search only these units (repeatable)")
    p.add_argument("--kind", action="append", choices=("video", "audio", "pdf"), help="only assets of this kind")
    p.add_argument("--language", action="append", help="only units in this language (ISO 639-1; repeatable)")
    p.add_argument("--asset", action="append", help="only this asset id (repeatable)")
    p.add_argument("--uri-prefix", help="only assets whose URI starts with this")
    p.add_argument("--min-duration", type=float, help="only media at least this many seconds long")
    p.add_argument("--max-duration", type=float, help="only media at most this many seconds long")
    p.add_argument("--from", dest="t_from", type=float, help="only moments ending after this second")
    p.add_argument("--to", dest="t_to", type=float, help="only moments starting before this second")
    p.add_argument("--group-by", choices=("moment", "asset"), default="moment")
    p.add_argument("--limit", type=int, default=10, help="hits per page (at most 50)")
    p.add_argument("--page-token", help="the token a previous page printed")
    p.add_argument("--version", help="search this index version instead of the newest")
    p.add_argument("--rerank", metavar="NAME", help="rescore the first hits with this reranker of the models profile")
    p.add_argument("--models", default="small-real", help="models profile the reranker is named in (built-in name or YAML)")
    p.add_argument("--model-cache", help="folder for the embedding and reranker models (default: the per-user cache)")
    return p.parse_args(list(argv))


def request_of(args: argparse.Namespace) -> SearchRequest:
    fields = {"query": args.query, "mode": args.mode, "modalities": args.modality, "kinds": args.kind,
              "languages": args.language, "asset_ids": args.asset, "uri_prefix": args.uri_prefix,
              "min_duration_s": args.min_duration, "max_duration_s": args.max_duration, "t_from": args.t_from,
              "t_to": args.t_to, "group_by": args.group_by, "limit": args.limit, "page_token": args.page_token,
              "rerank": args.rerank}
    return SearchRequest.model_validate({k: v for k, v in fields.items() if v is not None})


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        req = request_of(args)
    except ValidationError as e:
        print("corpusflow search: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()),
              file=sys.stderr)
        return 2
    from corpusflow.actors.engines.embed import load_embedder
    from corpusflow.actors.search.query import QueryError, search
    from corpusflow.actors.search.rerank import UnknownReranker, load_reranker
    from corpusflow.actors.search.store import IndexReader, SearchIndexError

    cache = args.model_cache or default_cache("models")
    try:
        reranker = load_reranker(req.rerank, load_profile(args.models), cache) if req.rerank else None
        reader = IndexReader(args.out, args.version)
        embedder = None
        if req.mode != "lexical":
            model = EmbeddingModel.model_validate(reader.info.get("model") or {})
            embedder = load_embedder(model, cache)
        result = search(reader, embedder, req, reranker)
    except (SearchIndexError, QueryError, UnknownReranker, ConfigError) as e:
        print(f"corpusflow search: {e}", file=sys.stderr)
        return 2
    print(result.model_dump_json(indent=1) if args.json else to_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
