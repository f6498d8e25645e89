"""The live-video WebSocket ``/v1/stream``: a deployment holding the streaming VLM once per replica
and a bounded number of :class:`corpusflow.actors.streaming.StreamSession`, and the ingress route relaying to it.

A session lives on the replica that opened it. Every call for it carries the session id as Serve's
multiplexed model id, and that replica registers the id through ``@serve.multiplexed``, so Serve's
router sends the session's calls there. Routing by model id is a preference in Serve (a replica that
is not known to hold the id may be picked), so every replica also checks that it owns the session and
answers ``None`` when it does not; the ingress then asks again. A session is never silently recreated
elsewhere. The protocol is documented in docs/streaming.md ("Endpoint").

A replica bounds what one message can cost before decoding it: at most the session's frames per
chunk, and no frame larger than ``max_frame_scale`` × the session's ``frame_pixels``, judged from the
image header (Pillow's decompression-bomb limit is set to the same bound). The model runs one call
at a time on one worker thread (serve_apps/exclusive.py), so a cancelled call cannot let another in
beside it, and a session's memory is freed only after its running call ended.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from corpusflow.contracts.config import load_profile
from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.serve_apps.exclusive import Exclusive
from corpusflow.serve_apps.guards import ApiError, check_uri

ROUTE = "/v1/stream"
CLOSE_UNAUTHORIZED = 4401  # the 4000 range is the application's own; 4401 mirrors HTTP 401
CLOSE_TRY_LATER = 1013     # RFC 6455 "try again later": the replica is at its session bound
CLOSE_LOST = 1011          # the session's replica does not answer for it any more
CLOSE_IDLE = 4408          # mirrors HTTP 408: no message within the idle timeout
CLOSE_CODES = {401: CLOSE_UNAUTHORIZED, 503: CLOSE_TRY_LATER}  # refusals where no HTTP answer can be sent
ROUTING_ATTEMPTS = 8       # calls that may land on a replica not holding the session before giving up
MAX_QUESTION_CHARS = 2000
log = logging.getLogger("ray.serve")


class BadMessage(ValueError):
    """A client message the protocol does not allow; answered with an error message (with the HTTP
    status it would have: 413 too large, else 422), and the session goes on."""

    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.status = status


@dataclass
class _Live:
    session: Any  # corpusflow.actors.streaming.StreamSession (imported lazily: the ingress never loads torch)
    last_used: float = field(default_factory=time.monotonic)
    last_t: float = -math.inf


@serve.deployment
class StreamServer:
    """The streaming model once per replica; sessions up to ``max_sessions_per_replica``, one at a time
    on the model (a replica's sessions share it, and its forwards are serialized)."""

    def __init__(self, settings: dict[str, Any]):
        from corpusflow.actors.models.device import torch_device
        from corpusflow.actors.streaming import StreamConfig, load_streaming_model

        serve_cfg = ServeConfig.model_validate(settings)
        self.settings = serve_cfg.streaming
        self.cfg = StreamConfig.model_validate(self.settings.session)
        source = self.settings.model or load_profile(serve_cfg.models).vlm
        self.model, self.processor = load_streaming_model(source, serve_cfg.model_cache, device=torch_device())
        self.max_frame_pixels = int(self.settings.max_frame_scale * self.cfg.frame_pixels)
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self.max_frame_pixels  # Pillow refuses twice this from the header alone
        self.sessions: dict[str, _Live] = {}
        self.opening: set[str] = set()  # sessions being created, counted against the bound
        self.compute = Exclusive("stream-model")
        self._reaper: Optional[asyncio.Task] = None

        async def register(session_id: str) -> str:
            """Tells Serve's router this replica holds ``session_id`` (the cached 'model' is the id itself)."""
            if session_id not in self.sessions:
                raise KeyError(f"session {session_id} is not on this replica")
            return session_id

        # Closed ids linger in the registry until least recently used; every call touches its own id.
        self._register = serve.multiplexed(max_num_models_per_replica=4 * self.settings.max_sessions_per_replica)(
            register)

    async def open(self, session_id: str) -> dict[str, Any]:
        """``{"fps", "frames_per_chunk"}``, or ``{"refused": reason}`` when the replica is at its bound."""
        if self._reaper is None:  # started on the replica's event loop, by its first session
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())
        bound = self.settings.max_sessions_per_replica
        if len(self.sessions) + len(self.opening) >= bound:
            return {"refused": f"this replica is at its limit of {bound} live stream(s); retry later"}
        from corpusflow.actors.streaming import StreamSession

        self.opening.add(session_id)  # before the first await: concurrent opens cannot pass the bound together
        try:
            session = await self.compute.run(StreamSession, self.model, self.processor, self.cfg)
        finally:
            self.opening.discard(session_id)
        self.sessions[session_id] = _Live(session)
        await self._register(session_id)
        return {"fps": self.cfg.fps, "frames_per_chunk": session.frames_per_chunk}

    async def push(self, session_id: str, images: list[bytes], t: float) -> Optional[list[dict[str, Any]]]:
        """One second of encoded frames (JPEG/PNG) at stream second ``t`` → commentary and memory messages."""
        live = await self._live(session_id)
        if live is None:
            return None
        try:
            frames = await asyncio.to_thread(decode_images, images, live.session.frames_per_chunk,
                                             self.max_frame_pixels)
        except BadMessage as e:
            return [error(str(e), e.status)]
        return await self._push(live, frames, t)

    async def ask(self, session_id: str, question: str) -> Optional[list[dict[str, Any]]]:
        live = await self._live(session_id)
        if live is None:
            return None
        try:
            answer = await self.compute.run(live.session.ask, question)
        except Exception as e:  # noqa: BLE001 - a failed question is an answer, not a dead session
            return [error(f"the question could not be answered: {e}")]
        return [{"type": "answer", "text": answer.text, "timestamps": [float(t) for t in answer.timestamps]}]

    async def play(self, session_id: str, uri: str) -> AsyncIterator[Optional[list[dict[str, Any]]]]:
        """Play an (already allow-listed) video into the session at real-time speed, one chunk per second."""
        live = await self._live(session_id)
        if live is None:
            yield None
            return
        side = max(28, math.isqrt(self.cfg.frame_pixels) // 28 * 28)
        chunks = _video_chunks(uri, self.cfg.fps, live.session.frames_per_chunk, side)
        start, offset, played = time.monotonic(), max(live.last_t + 1, 0.0), 0
        while True:
            try:
                item = await asyncio.to_thread(next, chunks, None)
            except Exception as e:  # noqa: BLE001 - an undecodable video ends playback, not the session
                from corpusflow.actors.decode import describe_error

                yield [error(describe_error("the video", e))]
                return
            if item is None or live.session.closed:
                break
            second, frames = item
            await asyncio.sleep(max(0.0, start + second - time.monotonic()))
            yield await self._push(live, frames, offset + second)
            played += 1
        yield [{"type": "played", "uri": uri, "seconds": played}]

    async def close(self, session_id: str) -> dict[str, int]:
        """Free the session's memory; ``{"freed_bytes": ...}`` (0 when this replica does not hold it)."""
        live = self.sessions.pop(session_id, None)
        if live is None:
            return {"freed_bytes": 0}
        freed = live.session.memory_bytes()
        await self.compute.run_to_end(live.session.close)  # after the session's running call, never under it
        return {"freed_bytes": freed}

    async def stats(self) -> dict[str, Any]:
        """Live sessions on this replica and the device memory they hold."""
        return {"sessions": len(self.sessions), "max_sessions": self.settings.max_sessions_per_replica,
                "memory_bytes": sum(s.session.memory_bytes() for s in self.sessions.values()),
                "reports": {sid: s.session.memory_report() for sid, s in self.sessions.items()}}

    async def ready(self) -> bool:
        return True

    async def _live(self, session_id: str) -> Optional[_Live]:
        live = self.sessions.get(session_id)
        if live is not None:
            live.last_used = time.monotonic()
            await self._register(session_id)
        return live

    async def _push(self, live: _Live, frames: np.ndarray, t: float) -> list[dict[str, Any]]:
        if not t > live.last_t:
            return [error(f"chunk times must increase: got t={t:g} after t={live.last_t:g}")]
        try:
            said = await self.compute.run(live.session.push_chunk, frames, t)
        except (ValueError, RuntimeError) as e:  # a bad chunk, or the session closed meanwhile
            return [error(str(e))]
        live.last_t, live.last_used = t, time.monotonic()  # a long playback keeps its session alive
        return [{"type": "commentary", "t": c.t, "text": c.text} for c in said] + [
            {"type": "memory", "t": t, "bytes": live.session.memory_bytes()}]

    async def _reap_idle(self) -> None:
        """Every few seconds, close sessions whose ingress went away without closing them (a crashed
        ingress replica): their memory is freed even when nobody opens a new session."""
        idle = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(min(max(idle / 4, 0.5), 30.0))
            horizon = time.monotonic() - idle
            for sid in [sid for sid, live in self.sessions.items() if live.last_used < horizon]:
                log.info("closing streaming session %s: idle for %g s", sid, idle)
                await self.close(sid)


def error(reason: str, status: int = 422) -> dict[str, Any]:
    """An error message; ``status`` is the HTTP status the refusal would have (413 too large, 422 unusable)."""
    return {"type": "error", "status": status, "reason": reason}


def decode_images(images: list[bytes], max_frames: int, max_pixels: int) -> np.ndarray:
    """(k, H, W, 3) uint8 from JPEG/PNG bytes that all share one size; the count and each image's
    size are checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    if len(images) > max_frames:
        raise BadMessage(f"a chunk has at most {max_frames} frames; got {len(images)}", 413)
    frames = []
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                if img.width * img.height > max_pixels:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height}")
                frames.append(np.asarray(img.convert("RGB")))
        except Image.DecompressionBombError:
            raise BadMessage(f"frame {i} has more than the {max_pixels} pixels a frame may have here; "
                             "send frames at the stream's size", 413) from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise BadMessage(f"frame {i} is not a readable JPEG or PNG image ({e})") from None
    if len({f.shape for f in frames}) > 1:
        raise BadMessage(f"the frames of one chunk must share one size, got {sorted({f.shape for f in frames})}")
    return np.stack(frames)


def _video_chunks(uri: str, fps: float, per_chunk: int, side: int) -> Iterator[tuple[int, np.ndarray]]:
    """(second, frames) of a video: frames at ``fps``, grouped by whole second, at most ``per_chunk`` each."""
    from corpusflow.actors.decode import open_media, picture_streams
    from corpusflow.actors.frames import frame_dims, upright_rgb

    with open_media(uri) as container:
        streams = picture_streams(container)
        if not streams:
            raise ValueError("it has no video stream")
        vs, second, chunk, target = streams[0], 0, [], 0.0
        for frame in container.decode(vs):
            if frame.time is None or frame.time + 1e-6 < target:
                continue
            if int(frame.time) != second and chunk:
                yield second, np.stack(chunk)
                chunk = []
            second, target = int(frame.time), frame.time + 1 / fps
            if len(chunk) < per_chunk:
                chunk.append(upright_rgb(frame, *frame_dims(frame.width, frame.height, side)))
        if chunk:
            yield second, np.stack(chunk)


@dataclass
class _Client:
    """What the ingress keeps for one WebSocket: the session's handle, pacing of binary frames, playback."""

    handle: DeploymentHandle
    session_id: str
    frames_per_chunk: int
    next_t: float = 0.0
    binary: list[bytes] = field(default_factory=list)
    playing: Optional[asyncio.Task] = None

    async def call(self, method: str, *args: Any) -> list[dict[str, Any]]:
        """A call to the session's replica, asked again when it lands on a replica not holding it."""
        for _ in range(ROUTING_ATTEMPTS):
            try:
                out = await getattr(self.handle, method).remote(self.session_id, *args)
            except RayActorError:  # the replica died: the session went with it
                break
            if out is not None:
                return out
        raise SessionLost(f"the server lost streaming session {self.session_id}")


class SessionLost(RuntimeError):
    """No replica answers for the session (its replica restarted or was removed)."""


def parse(message: dict[str, Any]) -> dict[str, Any]:
    """A client message as a dict with a valid ``type`` and fields; raises BadMessage with the reason."""
    if message.get("bytes") is not None:
        return {"type": "binary_frame", "data": message["bytes"]}
    text = message.get("text") or ""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadMessage(f"messages are JSON objects or binary frames; this one is not JSON ({e.msg})") from None
    if not isinstance(msg, dict):
        raise BadMessage("a message must be a JSON object with a 'type'")
    kind = msg.get("type")
    if kind == "frames":
        t, frames = msg.get("t"), msg.get("frames")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise BadMessage("'frames' needs 't': the chunk's stream second, a number >= 0")
        if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
            raise BadMessage("'frames' needs 'frames': a non-empty list of base64 JPEG/PNG strings")
        try:
            images = [base64.b64decode(f, validate=True) for f in frames]
        except (binascii.Error, ValueError):
            raise BadMessage("'frames' entries must be base64 strings") from None
        return {"type": "frames", "t": float(t), "images": images}
    if kind == "ask":
        q = msg.get("question")
        if not isinstance(q, str) or not q.strip() or len(q) > MAX_QUESTION_CHARS:
            raise BadMessage(f"'ask' needs 'question': 1..{MAX_QUESTION_CHARS} characters")
        return {"type": "ask", "question": q}
    if kind == "play":
        if not isinstance(msg.get("uri"), str):
            raise BadMessage("'play' needs 'uri': an s3:// video under an allow-listed prefix")
        return {"type": "play", "uri": msg["uri"]}
    if kind == "close":
        return {"type": "close"}
    raise BadMessage(f"unknown message type {kind!r}; expected frames, ask, play or close")


def add_stream_route(v1: APIRouter, settings: ServeConfig, stream: DeploymentHandle) -> None:
    """Register ``/stream`` on the ``/v1`` router, whose key dependency refuses clients without a key."""
    cfg = settings.streaming
    max_bytes = int(cfg.max_message_mb * 2**20)

    @v1.websocket(ROUTE.removeprefix("/v1"))
    async def stream_ws(ws: WebSocket) -> None:
        session_id = uuid.uuid4().hex
        handle = stream.options(multiplexed_model_id=session_id)
        try:
            opened = await handle.open.remote(session_id)
        except Exception:  # noqa: BLE001 - e.g. the deployment's queue is full or it is starting
            log.exception("opening a streaming session failed")
            opened = {"refused": "streaming is not available right now; retry later"}
        if "refused" in opened:
            raise ApiError(503, opened["refused"], {"Retry-After": str(settings.retry_after_s)})
        client = _Client(handle, session_id, opened["frames_per_chunk"])
        try:
            await ws.accept()
            await ws.send_json({"type": "session", "id": session_id, **opened})
            await _relay(ws, client, settings, max_bytes)
        except WebSocketDisconnect:
            pass
        except SessionLost as e:
            await _close(ws, CLOSE_LOST, str(e))
        finally:
            if client.playing:
                client.playing.cancel()
            await asyncio.shield(handle.close.remote(session_id))


async def _relay(ws: WebSocket, client: _Client, settings: ServeConfig, max_bytes: int) -> None:
    """Client messages to the session until the client closes, goes idle, or disconnects."""
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), settings.streaming.idle_timeout_s)
        except asyncio.TimeoutError:
            if client.playing and not client.playing.done():
                continue
            return await _close(ws, CLOSE_IDLE, f"no message for {settings.streaming.idle_timeout_s:g} s")
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if len(message.get("bytes") or message.get("text") or "") > max_bytes:
            await ws.send_json(error(f"message larger than {settings.streaming.max_message_mb:g} MB", 413))
            continue
        try:
            msg = parse(message)
        except BadMessage as e:
            await ws.send_json(error(str(e), e.status))
            continue
        if msg["type"] == "close":
            return await _close(ws, 1000, "closed by the client")
        for out in await _handle(ws, client, msg, settings):
            await ws.send_json(out)


async def _handle(ws: WebSocket, client: _Client, msg: dict[str, Any], settings: ServeConfig) -> list[dict[str, Any]]:
    busy = client.playing is not None and not client.playing.done()
    if msg["type"] in ("frames", "binary_frame", "play") and busy:
        return [error("a video is playing into this session; send frames or play again once it has played")]
    if msg["type"] == "ask":
        return await client.call("ask", msg["question"])
    if msg["type"] == "frames":
        client.next_t = msg["t"] + 1
        return await client.call("push", msg["images"], msg["t"])
    if msg["type"] == "binary_frame":
        client.binary.append(msg["data"])
        if len(client.binary) < client.frames_per_chunk:
            return []
        images, client.binary = client.binary, []
        t, client.next_t = client.next_t, client.next_t + 1
        return await client.call("push", images, t)
    try:
        uri = check_uri(msg["uri"], settings.streaming.allowed_video_prefixes)
    except ApiError as e:
        return [error(e.detail)]
    client.playing = asyncio.create_task(_play(ws, client, uri))
    return []


async def _play(ws: WebSocket, client: _Client, uri: str) -> None:
    """Relay a playback's messages; routing misses restart it on the right replica before anything played."""
    for _ in range(ROUTING_ATTEMPTS):
        async for out in client.handle.options(stream=True).play.remote(client.session_id, uri):
            if out is None:
                break
            for m in out:
                if "t" in m:
                    client.next_t = max(client.next_t, m["t"] + 1)
                await ws.send_json(m)
        else:
            return
    await ws.send_json(error(f"the server lost streaming session {client.session_id}"))


async def refuse(ws: WebSocket, e: ApiError) -> None:
    """Refuse before the upgrade: an HTTP answer where the server supports it, else accept and close."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        return await ws.send_denial_response(JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers))
    await ws.accept()
    await _close(ws, CLOSE_CODES.get(e.status, CLOSE_LOST), e.detail)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    await ws.close(code=code, reason=reason[:120])  # a close frame's reason is at most 123 bytes
