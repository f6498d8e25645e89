"""One way to reach a path: a local folder or ``s3://bucket/prefix``, through pyarrow.fs.

S3 uses the AWS default credential chain; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points it
at an S3-compatible store. The output tables go through Delta Lake (flows/tables.py), which takes
:func:`delta_options` for the same store.
"""
from __future__ import annotations

import functools
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterator, Optional

import pyarrow.fs as pafs


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    modified: Optional[datetime] = None  # UTC; with uri and size, what tells an unchanged file without reading it


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


# S3 answers SlowDown/503 under load and drops connections now and then: the AWS SDK's standard
# retry mode backs off exponentially with jitter, up to this many attempts per request.
S3_ATTEMPTS = 10


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _s3() -> pafs.S3FileSystem:
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)
    endpoint = _endpoint()
    if endpoint:
        scheme = "http" if endpoint.startswith("http://") else "https"
        return pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[-1], scheme=scheme,
                                 region=_region(), allow_bucket_creation=False, retry_strategy=retry)
    return pafs.S3FileSystem(region=_region(), retry_strategy=retry)


def delta_options(uri: str) -> dict[str, str]:
    """Storage options for Delta Lake (delta-rs) at ``uri``: the same endpoint and region as ours.

    Credentials come from delta-rs's own AWS chain. ``conditional_put=etag`` makes concurrent
    writers safe on S3 without a lock table: a log entry is written only if none exists yet.
    """
    if not is_s3(uri):
        return {}
    options = {"AWS_REGION": _region(), "conditional_put": "etag", "max_retries": str(S3_ATTEMPTS)}
    endpoint = _endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path for a local path or s3:// URI."""
    if is_s3(uri):
        return _s3(), uri[len("s3://"):].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported location {uri!r}: use a local folder or s3://bucket/prefix")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def contains(outer: str, inner: str) -> bool:
    """Whether location ``inner`` is ``outer`` or lies under it (same filesystem, normalised paths)."""
    if is_s3(outer) != is_s3(inner):
        return False
    a, b = filesystem(outer)[1].rstrip("/"), filesystem(inner)[1].rstrip("/")
    return b == a or b.startswith(a + "/")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _to_uri(base_uri: str, fs_path: str) -> str:
    return "s3://" + fs_path if is_s3(base_uri) else fs_path


def list_files(uri: str) -> list[FileEntry]:
    """Every regular file under ``uri`` (recursive), sorted; hidden and ``_``-prefixed names included
    (each input gets its row: a video under ``_archive/`` is processed, a ``.DS_Store`` skipped).

    ``uri`` may also name a single file.
    """
    return sorted(iter_files(uri), key=lambda e: e.uri)


def iter_files(uri: str) -> Iterator[FileEntry]:
    """The files of :func:`list_files`, streamed: S3 one page of up to 1,000 keys at a time (in key
    order), a local folder one directory at a time, so a caller that keeps few of them holds few.

    Sizes and modified times are what :func:`list_files` always gave (they decide whether a committed
    file is unchanged).
    """
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"corpus {uri!r} does not exist")
    if info.type == pafs.FileType.File:
        yield FileEntry(_to_uri(uri, path), info.size, info.mtime)
        return
    if is_s3(uri):
        bucket, _, prefix = path.partition("/")
        pages = _boto_s3(_endpoint(), _region()).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # a zero-byte "folder" made by a console is no file
                    yield FileEntry(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]),
                                    obj["LastModified"].astimezone(timezone.utc))
        return
    folders = [path]
    while folders:
        here = fs.get_file_info(pafs.FileSelector(folders.pop(), recursive=False))
        for f in sorted(here, key=lambda f: f.path, reverse=True):
            if f.type == pafs.FileType.Directory:
                folders.append(f.path)
        for f in sorted(here, key=lambda f: f.path):
            if f.type == pafs.FileType.File:
                yield FileEntry(f.path, f.size, f.mtime)


def open_input(uri: str) -> BinaryIO:
    """A streaming, seekable reader (S3 reads are ranged requests, memory stays bounded)."""
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def read_stream(uri: str, chunk: int) -> Iterator[bytes]:
    """The bytes at ``uri`` in pieces of ``chunk``, from one streamed read.

    On S3 a read cut while the body streams (a dropped connection: the SDK's retries cover a request,
    not a body half received) resumes at its offset, up to S3_ATTEMPTS cuts in a row, with jittered
    backoff; a missing or forbidden object fails at once.
    """
    offset, cuts = 0, 0
    while True:
        try:
            with open_input(uri) as f:
                if offset:
                    f.seek(offset)
                while data := f.read(chunk):
                    offset += len(data)
                    cuts = 0
                    yield data
            return
        except (FileNotFoundError, PermissionError):
            raise
        except OSError:
            cuts += 1
            if not is_s3(uri) or cuts >= S3_ATTEMPTS:
                raise
            time.sleep(random.uniform(0, min(5.0, 0.1 * 2 ** cuts)))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_names(uri: str, suffix: str = "") -> list[str]:
    """Names (not paths) of the files directly under ``uri`` that end with ``suffix``."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def age_s(uri: str) -> float:
    """Seconds since the file at ``uri`` was last written."""
    fs, path = filesystem(uri)
    mtime = fs.get_file_info(path).mtime
    return (datetime.now(timezone.utc) - mtime).total_seconds() if mtime else 0.0


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.delete_file(path)


def delete_tree(uri: str) -> None:
    """Delete the folder at ``uri`` and everything under it; nothing there is fine."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def read_text(uri: str) -> str:
    """A small text file whole; FileNotFoundError when there is none."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


@functools.cache
def _boto_s3(endpoint: Optional[str], region: str) -> Any:
    """boto3's S3 client, for the one request pyarrow cannot make: a conditional PUT."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"mode": "standard", "max_attempts": S3_ATTEMPTS}))


def create_new(uri: str, text: str) -> bool:
    """Write a small file at ``uri`` only if none is there: True if this call created it.

    Of several writers racing for one name, exactly one gets True, and a reader never sees the file
    half-written: a hard link of a finished temporary file locally, a conditional PUT
    (``If-None-Match: *``) on S3. A PUT retried after a lost reply finds its own file: callers write
    something that tells them it is theirs.
    """
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = uri[len("s3://"):].split("/", 1)
        try:
            _boto_s3(_endpoint(), _region()).put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True
    path = filesystem(uri)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def write_json(text: str, uri: str) -> None:
    """Write a small text file in one piece (job summaries)."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
