"""A ``/v1`` request's input, read once: form fields into memory (bounded), the file straight to disk.

Why not FastAPI's ``File``/``Form`` parameters: FastAPI reads the whole body before any dependency
runs, so a client without a key could make the ingress read and spool an upload before its 401, and
the spooled upload had to be read into memory and copied again to get a path Identify can open. Here
a route reads its body after the key check, and the file part goes to one file in a private temp dir
as it arrives, so the ingress holds a bounded amount of a request in memory whatever its size.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import uuid
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, AsyncIterator, BinaryIO, Optional
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from corpusflow.contracts.serve_config import ServeConfig
from corpusflow.serve_apps.guards import ApiError, check_uri
from corpusflow.serve_apps.pipeline import Source, s3_source

MAX_URI_CHARS = 2048
MAX_QUESTION_CHARS = 2000
MAX_FIELD_BYTES = 8192  # any text field; the routes' own bounds are tighter
MAX_PARTS = 8


@dataclass
class Form:
    """The text fields of a request and, when it sent one, where its file's bytes are."""

    fields: dict[str, str] = field(default_factory=dict)
    file_name: Optional[str] = None
    path: Optional[str] = None
    size: int = 0

    def text(self, name: str, max_chars: int, required: bool = False) -> Optional[str]:
        """The field ``name`` (None when absent or empty); 422 when too long, or missing but required."""
        value = self.fields.get(name) or None
        if value is None and required:
            raise ApiError(422, f"'{name}' is required: 1 to {max_chars} characters")
        if value is not None and len(value) > max_chars:
            raise ApiError(422, f"'{name}' is longer than {max_chars} characters")
        return value


def openapi_form(question: bool = False) -> dict[str, Any]:
    """The request body a ``/v1`` route documents (it reads the body itself, so FastAPI cannot infer it)."""
    props: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "the video, audio or PDF file"},
        "uri": {"type": "string", "maxLength": MAX_URI_CHARS, "description": "s3://bucket/key under an allow-listed prefix"},
    }
    if question:
        props["question"] = {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION_CHARS,
                             "description": "a question about the video"}
    schema = {"type": "object", "properties": props, "required": ["question"] if question else []}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _safe_name(name: Optional[str]) -> str:
    base = os.path.basename(name or "") or "upload"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:120]


class _Parts:
    """python-multipart callbacks: headers say which part it is; data goes to its field or to the file."""

    def __init__(self, directory: str):
        self.directory, self.form = directory, Form()
        self.pending: list[bytes] = []  # file bytes parsed from the last chunk, written off the event loop
        self.file: Optional[BinaryIO] = None
        self._header, self._value, self._disposition = b"", b"", b""
        self._name, self._field, self._parts, self._in_file = "", bytearray(), 0, False

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(422, f"a request has at most {MAX_PARTS} form fields")
        self._disposition, self._field, self._in_file = b"", bytearray(), False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(422, "every form part needs a name (Content-Disposition: form-data; name=...)")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if self._name != "file" or self.file is not None:
            raise ApiError(422, f"send one file, in the field 'file' (got a file in {self._name!r})")
        self.form.file_name = options[b"filename"].decode("utf-8", "replace")
        # The suffix words Identify's messages ("a .mp4 that is not a video").
        self.form.path = os.path.join(self.directory, "upload" + PurePosixPath(_safe_name(self.form.file_name)).suffix)
        self.file, self._in_file = open(self.form.path, "wb"), True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(data[start:end])
            self.form.size += end - start
            return
        if len(self._field) + end - start > MAX_FIELD_BYTES:
            raise ApiError(422, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")
        self._field += data[start:end]

    def on_part_end(self) -> None:
        if not self._in_file:
            self.form.fields[self._name] = self._field.decode("utf-8", "replace")


async def read_form(request: Request, directory: str, pool: Executor) -> Form:
    """The request's form; the file part is written to ``directory`` by ``pool`` as it arrives.

    The body's size is bounded by the app's ``max_body_size`` (413 while it is read).
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type == b"application/x-www-form-urlencoded":
        fields = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        return Form(fields=dict(fields[:MAX_PARTS]))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(422, "send multipart/form-data with 'file' (an upload) or 'uri' (an s3:// URI)")
    parts = _Parts(directory)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if parts.pending and parts.file is not None:
                data, parts.pending = b"".join(parts.pending), []
                await loop.run_in_executor(pool, parts.file.write, data)
        parser.finalize()
    except FormParserError as e:
        raise ApiError(422, f"malformed multipart body: {e}") from None
    finally:
        if parts.file is not None:
            parts.file.close()
    return parts.form


@asynccontextmanager
async def request_input(request: Request, settings: ServeConfig, pool: Executor) -> AsyncIterator[tuple[Source, Form]]:
    """The request's input and form; an upload lives in a private temp dir that is removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="corpusflow-request-")
    try:
        form = await read_form(request, tmp, pool)
        uri = form.text("uri", MAX_URI_CHARS)
        if (form.path is None) == (uri is None):
            raise ApiError(422, "send exactly one of 'file' (an upload) or 'uri' (an s3:// URI)")
        if uri is not None:
            checked = check_uri(uri, settings.allowed_uri_prefixes)
            source = await asyncio.get_running_loop().run_in_executor(pool, s3_source, checked, settings.max_uri_bytes)
        elif not form.size:
            raise ApiError(422, "the uploaded file is empty")
        else:
            source = Source(uri=f"upload://{uuid.uuid4().hex}/{_safe_name(form.file_name)}", size=form.size,
                            local_path=form.path)
        yield source, form
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
