"""Resolve a model source to a local folder, once per node.

A source is a Hugging Face id (``org/name``), a local folder, an ``s3://`` prefix (synced into the
node's cache under a file lock, so concurrent actors on one node download it once), or
``tiny-random`` (a tiny randomly initialised model of the real architecture, built offline).
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow.fs as pafs

from contracts import storage

TINY = "tiny-random"


@contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sync_s3(uri: str, dest: Path) -> None:
    fs, root = storage.filesystem(uri)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
    if not infos:
        raise FileNotFoundError(f"no model files under {uri}")
    tmp = dest.with_name(dest.name + ".partial")
    for info in infos:
        target = tmp / info.path[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
    tmp.rename(dest)


def resolve(source: str, kind: str, cache_dir: str, build_tiny: Callable[[Path], None] | None = None) -> str:
    """A local path (or, for hub ids, the id itself when already a local snapshot is not needed).

    ``kind`` names the model family and keys the cache; ``build_tiny(dest)`` writes the tiny random
    model when ``source`` is ``tiny-random``.
    """
    cache = Path(os.path.expanduser(cache_dir))
    if source == TINY:
        if build_tiny is None:
            raise ValueError(f"no tiny-random builder for {kind}")
        # Keyed by the builder's source so a changed builder never reuses an old cache.
        code = inspect.getsource(sys.modules[build_tiny.__module__]).encode()
        dest = cache / "tiny-random" / f"{kind}-{hashlib.sha256(code).hexdigest()[:10]}"
        with _node_lock(dest):
            if not (dest / ".complete").exists():
                dest.mkdir(parents=True, exist_ok=True)
                build_tiny(dest)
                (dest / ".complete").touch()
        return str(dest)
    if source.startswith("s3://"):
        dest = cache / "s3" / hashlib.sha256(source.encode()).hexdigest()[:16]
        with _node_lock(dest):
            if not dest.exists():
                _sync_s3(source, dest)
        return str(dest)
    if os.path.isdir(os.path.expanduser(source)):
        return os.path.expanduser(source)
    if source.count("/") == 1 and not source.startswith(("/", ".")):
        from huggingface_hub import snapshot_download
        return snapshot_download(source)
    raise FileNotFoundError(f"model source {source!r} is not a folder, an s3:// prefix, a Hugging Face id or {TINY!r}")
