"""vLLM's compile artifacts kept beside the weights, so a node pays the compile once per model and versions.

vLLM compiles its model with torch.compile (Inductor, Triton kernels) at every engine start: minutes
on a cold node, tens of seconds with the artifacts on disk. This module gives each model one folder
in ``model_cache``, keyed by what the artifacts depend on beyond vLLM's own hash (the model source, the
GPU type, vLLM's and torch's versions); vLLM, Inductor and Triton write there through their cache
variables (:func:`cache_env`). Where the model comes from ``s3://``, the folder is shared through the
same store: :func:`local_compile_cache` brings a published copy down before the engine starts, and
:func:`publish_compile_cache` uploads a node's folder once it holds artifacts that the store lacks,
so the next node of the same type and versions starts warm.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow.fs as pafs

from corpusflow.actors.models.store import _node_lock, _sync_s3
from corpusflow.contracts import storage

_SUFFIX = ".vllm-compile"  # beside an s3:// model prefix: <prefix>.vllm-compile/<key>/


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "none"


def cache_key(source: str, accelerator: str) -> str:
    """What the artifacts depend on outside vLLM's own per-config hash (which keys the folders inside)."""
    parts = {"model": source, "accelerator": accelerator, "vllm": _version("vllm"), "torch": _version("torch")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def shared_uri(source: str, key: str) -> str | None:
    """Where the store keeps a model's artifacts: beside its ``s3://`` weights; None for other sources."""
    return f"{source.rstrip('/')}{_SUFFIX}/{key}" if source.startswith("s3://") else None


def local_compile_cache(source: str, accelerator: str, cache_dir: str) -> str:
    """This node's artifact folder for the model, filled from the store first when it has a copy and we do not."""
    key = cache_key(source, accelerator)
    dest = Path(os.path.expanduser(cache_dir)) / "vllm-compile" / key
    uri = shared_uri(source, key)
    with _node_lock(dest):
        if uri and not _populated(dest):
            try:
                _sync_s3(uri, dest.with_name(key + ".s3"))
            except FileNotFoundError:  # nothing published yet: this node compiles and publishes
                pass
            else:
                if dest.exists():
                    os.rename(dest, dest.with_name(key + ".stale"))
                os.rename(dest.with_name(key + ".s3"), dest)
        dest.mkdir(parents=True, exist_ok=True)
    return str(dest)


def cache_env(folder: str) -> dict[str, str]:
    """Environment variables that put vLLM's, Inductor's and Triton's caches into ``folder``."""
    return {"VLLM_CACHE_ROOT": folder, "TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "inductor"),
            "TRITON_CACHE_DIR": os.path.join(folder, "triton")}


def publish_compile_cache(source: str, accelerator: str, cache_dir: str) -> bool:
    """Upload this node's artifacts beside the ``s3://`` weights unless the store has them; True if uploaded."""
    key = cache_key(source, accelerator)
    uri = shared_uri(source, key)
    local = Path(os.path.expanduser(cache_dir)) / "vllm-compile" / key
    if uri is None or not _populated(local):
        return False
    fs, root = storage.filesystem(uri)
    if fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        return False  # another node published first; its copy is as good
    for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        target = f"{root}/{path.relative_to(local).as_posix()}"
        with open(path, "rb") as src, fs.open_output_stream(target) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
    return True


def _populated(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
