"""The search deployment: OUT's index opened read-only, queried with the same function as `corpusflow search`.

Each replica holds a reader of the newest index version and the query-side embedder of that
version's model. Every ``index_refresh_s`` it looks at ``_latest.json`` (one small read): a newer
version (a new model) or newer units are picked up without a restart; the embedder is reloaded only
when the model changed. A request naming a reranker of the models profile (``rerank``) gets it loaded once
per replica and kept. Queries run in a thread (LanceDB and the embedder release the GIL), so one
replica serves concurrent requests. Answers are plain dicts: ``{"error": status, "detail": ...}``
for a request the index cannot answer, mapped to HTTP by the ingress.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional

from pydantic import ValidationError
from ray import serve

from corpusflow.actors.engines.embed import Embedder, load_embedder
from corpusflow.actors.search.query import QueryError, search
from corpusflow.actors.search.rerank import CrossEncoderReranker, UnknownReranker, load_reranker
from corpusflow.actors.search.store import IndexReader, SearchIndexError
from corpusflow.contracts.config import load_profile
from corpusflow.contracts.search import EmbeddingModel, SearchRequest
from corpusflow.contracts.serve_config import ServeConfig


@serve.deployment
class SearchServer:
    def __init__(self, settings: dict[str, Any]):
        self.settings = ServeConfig.model_validate(settings)
        self.out = str(self.settings.index)
        self.reader: Optional[IndexReader] = None
        self.embedder: Optional[Embedder] = None
        self.model: Optional[dict[str, Any]] = None
        self.checked = 0.0
        self.lock = threading.Lock()
        self.rerankers: dict[str, CrossEncoderReranker] = {}

    def _current(self) -> IndexReader:
        """The reader (and embedder) of the newest version, looked up at most every index_refresh_s."""
        with self.lock:
            now = time.monotonic()
            if self.reader is None:
                self.reader = IndexReader(self.out)
            elif now - self.checked >= self.settings.index_refresh_s:
                self.reader.refresh()
            self.checked = now
            model = self.reader.info.get("model")
            if model != self.model:
                self.embedder = load_embedder(EmbeddingModel.model_validate(model or {}),
                                              self.settings.stage_config().model_cache)
                self.model = model
            return self.reader

    def _reranker(self, name: str) -> CrossEncoderReranker:
        with self.lock:
            if name not in self.rerankers:
                self.rerankers[name] = load_reranker(name, load_profile(self.settings.models),
                                                     self.settings.stage_config().model_cache)
            return self.rerankers[name]

    def _search(self, request: dict[str, Any], with_text: bool) -> dict[str, Any]:
        try:
            req = SearchRequest.model_validate(request)
            reader = self._current()
            result = search(reader, self.embedder, req, self._reranker(req.rerank) if req.rerank else None)
            out = result.model_dump(mode="json")
            if with_text:  # the passages an answer across the corpus is built from
                texts = reader.texts([h.unit_id for h in result.hits])
                out["texts"] = [texts.get(h.unit_id, h.snippet) for h in result.hits]
            return out
        except ValidationError as e:
            first = e.errors()[0]
            return {"error": 422, "detail": f"{'.'.join(map(str, first['loc']))}: {first['msg']}"}
        except (QueryError, UnknownReranker) as e:
            return {"error": 422, "detail": str(e)}
        except SearchIndexError as e:
            return {"error": 503, "detail": str(e)}

    async def search(self, request: dict[str, Any], with_text: bool = False) -> dict[str, Any]:
        """A SearchResult as a dict (with ``texts``, each hit's full unit text, when asked), or an error dict."""
        return await asyncio.get_running_loop().run_in_executor(None, self._search, request, with_text)

    async def ready(self) -> bool:
        return True
