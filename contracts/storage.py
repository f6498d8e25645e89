"""One way to reach a path: a local folder or ``s3://bucket/prefix``, through pyarrow.fs.

S3 uses the AWS default credential chain; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points it
at an S3-compatible store. Writes are atomic: a reader sees a whole file or none.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _s3() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint:
        scheme = "http" if endpoint.startswith("http://") else "https"
        return pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[-1], scheme=scheme,
                                 region=region, allow_bucket_creation=False)
    return pafs.S3FileSystem(region=region)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path for a local path or s3:// URI."""
    if is_s3(uri):
        return _s3(), uri[len("s3://"):].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported location {uri!r}: use a local folder or s3://bucket/prefix")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _to_uri(base_uri: str, fs_path: str) -> str:
    return "s3://" + fs_path if is_s3(base_uri) else fs_path


def list_files(uri: str) -> list[FileEntry]:
    """Every regular file under ``uri`` (recursive), sorted; hidden and ``_``-prefixed names skipped.

    ``uri`` may also name a single file.
    """
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"corpus {uri!r} does not exist")
    if info.type == pafs.FileType.File:
        return [FileEntry(_to_uri(uri, path), info.size)]
    out = []
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = f.path[len(path):].lstrip("/")
        if f.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        out.append(FileEntry(_to_uri(uri, f.path), f.size))
    return sorted(out, key=lambda e: e.uri)


def open_input(uri: str) -> BinaryIO:
    """A streaming, seekable reader (S3 reads are ranged requests, memory stays bounded)."""
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_parquet(uri: str) -> list[str]:
    """Names (not paths) of the committed Parquet files directly under ``uri``."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))


def write_parquet_atomic(table: pa.Table, uri: str) -> None:
    """Write ``table`` so that ``uri`` holds either the whole file or nothing.

    Local: write a hidden temporary file beside it, then rename. S3: a single object upload, which
    S3 makes visible only when complete.
    """
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if is_s3(uri):
        pq.write_table(table, path, filesystem=fs)
        return
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    os.replace(tmp, path)


def read_parquet(uri: str) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.delete_file(path)


def write_json(text: str, uri: str) -> None:
    """Write a small text file in one piece (job summaries)."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
