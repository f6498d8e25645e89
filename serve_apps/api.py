"""The HTTP API: versioned routes, limits, error mapping and metrics, over a :class:`Pipeline`.

Every ``/v1`` route takes ``multipart/form-data`` with either ``file`` (an upload) or ``uri`` (an
allow-listed ``s3://`` object), and needs the API key: the key check is a dependency of the ``/v1``
router, so it holds under any route prefix. Bodies past ``max_request_mb`` get 413 while they are
read; a client may shorten the deadline with ``X-Request-Timeout`` but never extend it past the
server's. ``/healthz``, ``/readyz``, ``/metrics`` and the docs need no key (probes and scrapers).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any, Awaitable, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Header, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corpusflow.contracts.search import AskRequest, AskResult, SearchRequest, SearchResult
from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.contracts.stage import Batch
from corpusflow.contracts.rows import rows_for_batch
from corpusflow.serve_apps.guards import ApiError, api_key_dependency, load_api_keys
from corpusflow.serve_apps.models import AnalyzeOut, AskOut, ErrorOut, TranscribeOut
from corpusflow.serve_apps.pipeline import MEDIA_KINDS, Pipeline
from corpusflow.serve_apps.streaming import add_stream_route, refuse
from corpusflow.serve_apps.uploads import MAX_QUESTION_CHARS, openapi_form, request_input

API_VERSION = "v1"
log = logging.getLogger("ray.serve")
_ERRORS = {400: "malformed request or URI", 401: "missing or invalid API key", 403: "URI outside the allow-list",
           404: "URI names no object", 413: "request body too large", 422: "unusable input or parameters",
           429: "over capacity; see Retry-After", 503: "over capacity or starting; see Retry-After",
           504: "deadline passed"}
RESPONSES: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut, "description": d} for s, d in _ERRORS.items()}

Deadline = Annotated[Optional[float], Header(alias="X-Request-Timeout", gt=0, le=3600,
                                             description="seconds; capped at the server's request timeout")]


class RequestMetrics:
    """Prometheus series of this ingress replica, for every response including 401, 413 and 422.

    ASGI middleware outermost, so refusals made before a route runs are counted too; paths outside
    the API's own routes share one label, so random URLs cannot blow up the series count. Routes are
    labelled without the route prefix (Serve keeps it in ``root_path``), as the app declares them.
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, routes: frozenset[str]):
        self.app, self.routes = app, routes
        self.requests = Counter("corpusflow_requests", "API requests by route and status",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("corpusflow_request_seconds", "API request latency", ["route"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=registry)
        self.in_flight = Gauge("corpusflow_requests_in_flight", "API requests being served", registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = get_route_path(scope)
        route = path if path in self.routes else "other"
        status, t0 = 500, time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.in_flight.dec()
            self.requests.labels(route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - t0)


def build_api(settings: ServeConfig, pipeline: Pipeline, stream: Optional[DeploymentHandle] = None) -> FastAPI:
    """The FastAPI app (with the ``/v1/stream`` WebSocket when ``stream`` is given, and the search routes
    when ``settings.index`` names an index); raises ConfigError when no API key is configured (it fails closed)."""
    digests = load_api_keys(settings.api_keys_env, settings.api_keys_file)
    registry = CollectorRegistry()
    fingerprint = settings.stage_config().fingerprint()
    prices = settings.stage_config().usd_per_hour
    app = FastAPI(title="corpusflow", version=API_VERSION, max_body_size=settings.max_request_bytes,
                  description="Video, audio and PDF analysis with the same stages and row shapes as the batch tables.")
    v1 = APIRouter(prefix=f"/{API_VERSION}", responses=RESPONSES,
                   dependencies=[Depends(api_key_dependency(settings.api_key_header, digests))])

    @app.exception_handler(ApiError)
    async def _api_error(conn: HTTPConnection, e: ApiError) -> Optional[JSONResponse]:
        if isinstance(conn, WebSocket):  # e.g. the key dependency of /v1/stream: refused before the upgrade
            return await refuse(conn, e)
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    def tables(batch: Batch) -> dict[str, list[dict[str, Any]]]:
        return {t: tbl.to_pylist() for t, tbl in rows_for_batch(batch, fingerprint, "online", prices).items()}

    async def served(timeout_s: Optional[float], work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` under the deadline; any failure is an answer, a replica never dies of a request."""
        deadline = min(timeout_s or settings.request_timeout_s, settings.request_timeout_s)
        try:
            return await asyncio.wait_for(work(), deadline)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no answer within {deadline:g} s") from None
        except (ApiError, HTTPException):  # our refusals, and the body limit's 413
            raise
        except Exception as e:  # noqa: BLE001 - logged here, answered as 500; the replica keeps serving
            incident = uuid.uuid4().hex[:12]
            log.exception("request failed (incident %s)", incident)
            raise ApiError(500, f"internal error (incident {incident}); the server log has the details") from e

    def given(request: Request) -> Any:
        return request_input(request, settings, pipeline.inputs)

    @v1.post("/analyze", response_model=AnalyzeOut, openapi_extra=openapi_form())
    async def analyze(request: Request, x_request_timeout: Deadline = None) -> dict[str, Any]:
        """Everything the batch job writes for one input: its asset row, timeline, summary and pages."""

        async def work() -> dict[str, Any]:
            async with given(request) as (source, _):
                rows = tables(await pipeline.analyze(source))
            return {"asset": rows["assets"][0], "timeline": rows["timeline"],
                    "summary": rows["summaries"][0] if rows["summaries"] else None, "pages": rows["pages"]}

        return await served(x_request_timeout, work)

    @v1.post("/transcribe", response_model=TranscribeOut, openapi_extra=openapi_form())
    async def transcribe(request: Request, x_request_timeout: Deadline = None) -> dict[str, Any]:
        """Speech of an audio or video file: language, segments and words with timestamps."""

        async def work() -> dict[str, Any]:
            async with given(request) as (source, _):
                batch = await pipeline.identify(source)
                _require_kind(batch, MEDIA_KINDS, "transcribe needs audio or video")
                batch = await pipeline.transcribe(await pipeline.extract(batch, source))
            _raise_stage_error(batch, "transcription")
            rows = tables(batch)
            asr = [r for r in rows["timeline"] if r["source"] == "asr"]
            return {"asset": rows["assets"][0], "language": str(batch["language"][0]) or None,
                    "segments": [r for r in asr if r["detail"] == "segment"],
                    "words": [r for r in asr if r["detail"] == "word"]}

        return await served(x_request_timeout, work)

    @v1.post("/ask", response_model=AskOut, openapi_extra=openapi_form(question=True))
    async def ask(request: Request, x_request_timeout: Deadline = None) -> dict[str, Any]:
        """An answer grounded in the video's frames and transcript, with the timestamps it relied on."""

        async def work() -> dict[str, Any]:
            async with given(request) as (source, form):
                question = form.text("question", MAX_QUESTION_CHARS, required=True)
                batch = await pipeline.identify(source)
                _require_kind(batch, ("video",), "ask needs a video")
                batch = await pipeline.transcribe(await pipeline.extract(batch, source))
                _raise_stage_error(batch, "transcription")
                answer = await pipeline.ask(await pipeline.sample_frames(batch, source), question)
            return {"asset": tables(batch)["assets"][0], "question": question, **answer}

        return await served(x_request_timeout, work)

    if settings.index:
        @v1.post("/search", response_model=SearchResult)
        async def search(body: SearchRequest, x_request_timeout: Deadline = None) -> dict[str, Any]:
            """Ranked moments (video/audio, with times) and pages (PDF) across the corpus for a query in any language."""
            return await served(x_request_timeout, lambda: pipeline.search(body.model_dump(mode="json")))

        @v1.post("/search/ask", response_model=AskResult)
        async def ask_corpus(body: AskRequest, x_request_timeout: Deadline = None) -> dict[str, Any]:
            """An answer across the corpus: retrieve, then answer from the retrieved passages, citing only
            moments and pages that were retrieved."""
            try:
                request = SearchRequest.model_validate({"limit": 8, **body.search, "query": body.question})
            except ValidationError as e:
                raise ApiError(422, f"search.{'.'.join(map(str, e.errors()[0]['loc']))}: {e.errors()[0]['msg']}") from None

            async def work() -> dict[str, Any]:
                found = await pipeline.search(request.model_dump(mode="json"), with_text=True)
                hits = found["hits"]
                if not hits:
                    return {"question": body.question, "answer": "Nothing in the corpus matches the question.",
                            "citations": [], "hits": []}
                answer = await pipeline.ask_corpus(body.question, found["texts"])
                cited = [hits[n - 1] for n in dict.fromkeys(answer["citations"])]
                keys = ("asset_id", "uri", "t_start", "t_end", "page", "link")
                return {"question": body.question, "answer": answer["answer"], "hits": hits,
                        "citations": [{k: h[k] for k in keys} for h in cited]}

            return await served(x_request_timeout, work)

    @app.get("/healthz", responses={200: {"description": "the ingress is alive"}})
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "a stage deployment does not answer"}})
    async def readyz() -> JSONResponse:
        stages = await pipeline.ready()
        return JSONResponse({"ready": all(stages.values()), "stages": stages},
                            status_code=200 if all(stages.values()) else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus exposition of this ingress replica's request counters and latency histogram."""
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if stream is not None:
        add_stream_route(v1, settings, stream)
    app.include_router(v1)

    routes = frozenset(r.path for r in (*app.routes, *v1.routes) if hasattr(r, "path"))  # an included router is one entry
    app.add_middleware(RequestMetrics, registry=registry, routes=routes)  # added last: runs first
    return app


def _require_kind(batch: Batch, kinds: tuple[str, ...], message: str) -> None:
    kind = str(batch["kind"][0])
    if kind not in kinds:
        raise ApiError(422, f"{message}; got {kind!r} ({batch['format'][0]})")


def _raise_stage_error(batch: Batch, what: str) -> None:
    if str(batch["error"][0]):
        raise ApiError(500, f"{what} failed ({batch['error_stage'][0]}): {batch['error'][0]}")
