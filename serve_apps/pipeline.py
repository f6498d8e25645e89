"""The request's path through the stages, as the ingress drives it through DeploymentHandles.

Identify runs in the ingress (it only sniffs and hashes) and decides the route: PDFs go to the PDF
deployment, media to decode → ASR (→ frames → VLM for video). A failure in identify, decode, frame
sampling or PDF extraction means the input is unusable and becomes a 422; a model stage's failure stays
in the rows, as in the batch tables. Full queues become the configured overload status with ``Retry-After``, and so does a
replica that died under the request (Serve restarts it). Identify's hashing and the uploads' disk
I/O run on a small pool of the ingress's own, so large inputs cannot take the event loop's default
pool from every other request; a request that is cancelled (its deadline passed, its client left)
cancels the stage call it is waiting for.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow.fs as pafs
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from corpusflow.contracts import storage
from corpusflow.contracts.registry import spec
from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.contracts.stage import Batch
from corpusflow.serve_apps.guards import ApiError
from corpusflow.serve_apps.stages import load_stage

MEDIA_KINDS = ("video", "audio")


@dataclass(frozen=True)
class Source:
    """What a request names: an upload (in a temp file on the ingress's node) or an s3:// object."""

    uri: str  # what the client sees in the rows: s3://... or upload://<request>/<file name>
    size: int
    local_path: Optional[str] = None  # the upload's temp file on the ingress's node


def s3_source(uri: str, max_bytes: int) -> Source:
    """A Source for an (already allow-listed) S3 object; 404 when it does not exist, 413 when it is
    larger than ``max_bytes`` (from its metadata: nothing is read)."""
    fs, path = storage.filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise ApiError(502, f"cannot reach {uri}: {e}") from e
    if info.type != pafs.FileType.File:
        raise ApiError(404, f"{uri} does not exist")
    if info.size > max_bytes:
        raise ApiError(413, f"{uri} is {info.size / 2**20:.1f} MB; this server reads objects up to "
                            f"{max_bytes / 2**20:g} MB")
    return Source(uri=uri, size=info.size)


def _first_error(batch: Batch) -> tuple[str, str]:
    return str(batch["error_stage"][0]), str(batch["error"][0])


class Pipeline:
    """Stage calls for one request at a time; ``handles`` maps decode/pdf/asr/frames/vlm to their deployments."""

    def __init__(self, settings: ServeConfig, handles: dict[str, DeploymentHandle]):
        self.settings = settings
        self.identifier = load_stage(spec("identify").cls, settings.stage_config())
        self.handles = handles
        self.overload_headers = {"Retry-After": str(settings.retry_after_s)}
        self.inputs = ThreadPoolExecutor(settings.input_threads, thread_name_prefix="corpusflow-inputs")

    async def _call(self, deployment: str, method: str, *args: Any) -> Any:
        response = self.handles[deployment].options(method_name=method).remote(*args)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # nobody waits for the answer: free the replica for requests that do
            raise
        except RayActorError as e:
            raise ApiError(503, f"the {deployment} stage restarted during the request; retry later",
                           self.overload_headers) from e
        except BackPressureError as e:
            raise ApiError(self.settings.overload_status, f"the {deployment} stage is at capacity; retry later",
                           self.overload_headers) from e
        except DeploymentUnavailableError as e:
            raise ApiError(503, f"the {deployment} stage is unavailable; retry later", self.overload_headers) from e

    async def identify(self, source: Source) -> Batch:
        """The one-row batch for ``source`` after Identify; 422 when the bytes are unusable."""
        batch = {"uri": np.asarray([source.local_path or source.uri]), "bytes": np.asarray([source.size], np.int64),
                 "error_stage": np.asarray([""]), "error": np.asarray([""])}
        out = await asyncio.get_running_loop().run_in_executor(self.inputs, self.identifier, batch)
        out["uri"] = np.asarray([source.uri])
        stage, error = _first_error(out)
        if error:
            raise ApiError(422, f"unreadable input ({stage}): {error}")
        return out

    async def extract(self, batch: Batch, source: Source) -> Batch:
        """Decode media or extract a PDF; 422 for other kinds or inputs the stage cannot read."""
        kind = str(batch["kind"][0])
        if kind not in ("pdf", *MEDIA_KINDS):
            raise ApiError(422, f"unsupported input: detected {kind!r} ({batch['format'][0]}); "
                                "send a video, an audio file or a PDF")
        out = await self._call("pdf" if kind == "pdf" else "decode", "run", batch, await self._payload(source))
        stage, error = _first_error(out)
        if error:
            raise ApiError(422, f"malformed {kind} ({stage}): {error}")
        return out

    async def sample_frames(self, batch: Batch, source: Source) -> Batch:
        """A transcribed video's frames for the VLM (sampled after ASR, as in the batch job); 422 when none decode."""
        out = await self._call("frames", "run", batch, await self._payload(source))
        stage, error = _first_error(out)
        if error:
            raise ApiError(422, f"malformed video ({stage}): {error}")
        return out

    async def _payload(self, source: Source) -> Optional[bytes]:
        """An upload's bytes (the replica may be on another node), read for the one call that needs them."""
        if not source.local_path:
            return None
        return await asyncio.get_running_loop().run_in_executor(self.inputs, Path(source.local_path).read_bytes)

    async def transcribe(self, batch: Batch) -> Batch:
        return await self._call("asr", "run", batch)

    async def describe(self, batch: Batch) -> Batch:
        return await self._call("vlm", "run", batch)

    async def ask(self, batch: Batch, question: str) -> dict[str, Any]:
        """``{answer, timestamps}``; 422 when the VLM cannot answer about this video."""
        answer = await self._call("vlm", "ask", batch, question)
        if "error" in answer:
            raise ApiError(422, f"cannot answer about this video: {answer['error']}")
        return answer

    async def search(self, request: dict[str, Any], with_text: bool = False) -> dict[str, Any]:
        """The search deployment's answer (serve_apps/search.py); its refusals become ApiErrors."""
        out = await self._call("search", "search", request, with_text)
        if "error" in out:
            raise ApiError(int(out["error"]), str(out["detail"]))
        return out

    async def ask_corpus(self, question: str, passages: list[str]) -> dict[str, Any]:
        """``{answer, citations}`` (passage numbers) from the VLM's text path; 422 when it cannot answer."""
        answer = await self._call("vlm", "ask_corpus", question, passages)
        if "error" in answer:
            raise ApiError(422, f"cannot answer from the retrieved passages: {answer['error']}")
        return answer

    async def analyze(self, source: Source) -> Batch:
        batch = await self.extract(await self.identify(source), source)
        if str(batch["kind"][0]) in MEDIA_KINDS:
            batch = await self.transcribe(batch)
            if str(batch["kind"][0]) == "video" and not _first_error(batch)[1]:
                batch = await self.describe(await self.sample_frames(batch, source))
        return batch

    async def ready(self) -> dict[str, bool]:
        """Which downstream deployments answer a trivial call within two seconds."""

        async def one(name: str) -> bool:
            try:
                return bool(await asyncio.wait_for(self._call(name, "ready"), 2.0))
            except Exception:  # noqa: BLE001 - any failure means not ready
                return False

        names = sorted(self.handles)
        return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))
