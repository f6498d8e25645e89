"""What the ingress checks before doing any work: the API key, and where a requested URI points.

The key check is a dependency of the ``/v1`` router, so it guards every route the router holds
(HTTP and WebSocket) whatever prefix the app is mounted under: a path test would have to know the
prefix (Serve keeps it in ``scope["path"]``), a route's dependency does not. Routes read their body
after it, so an unauthenticated client is refused before its upload is read. Keys are compared as
SHA-256 digests, so the comparison time does not depend on how much matched.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import PurePosixPath
from typing import Awaitable, Callable, Iterable, Optional

from fastapi import Security
from fastapi.security import APIKeyHeader

from corpusflow.contracts.config import ConfigError


class ApiError(Exception):
    """A request the API refuses, with its HTTP status, a sentence for the client and extra headers."""

    def __init__(self, status: int, detail: str, headers: Optional[dict[str, str]] = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_api_keys(env_var: str, path: Optional[str]) -> frozenset[bytes]:
    """Digests of the keys in ``$env_var`` (comma-separated) and ``path`` (one per line); at least one."""
    keys = [k.strip() for k in os.environ.get(env_var, "").split(",")]
    if path:
        try:
            keys += [line.strip() for line in open(os.path.expanduser(path), encoding="utf-8")]
        except OSError as e:
            raise ConfigError(f"api_keys_file {path!r}: {e}") from e
    digests = frozenset(_digest(k) for k in keys if k)
    if not digests:
        raise ConfigError(f"no API keys: set ${env_var} (comma-separated) or api_keys_file")
    return digests


def key_matches(candidate: Optional[str], digests: Iterable[bytes]) -> bool:
    if not candidate:
        return False
    d = _digest(candidate)
    return any([hmac.compare_digest(d, k) for k in digests])  # list: compare with every key, no early exit


def api_key_dependency(header: str, digests: frozenset[bytes]) -> Callable[[Optional[str]], Awaitable[None]]:
    """A dependency refusing a request or WebSocket without a valid key in ``header`` with 401."""
    scheme = APIKeyHeader(name=header, auto_error=False, description="required on every /v1 route")

    async def require_api_key(key: Optional[str] = Security(scheme)) -> None:
        if not key_matches(key, digests):
            raise ApiError(401, "missing or invalid API key", {"WWW-Authenticate": "ApiKey"})

    return require_api_key


def check_uri(uri: str, allowed_prefixes: tuple[str, ...]) -> str:
    """``uri`` if it names an object under an allow-listed ``s3://`` prefix; else an ApiError.

    Only S3 is fetched: http(s) would let a client make the server fetch arbitrary hosts, and local
    paths would expose the server's own files.
    """
    uri = uri.strip()
    if not uri.startswith("s3://"):
        raise ApiError(400, "uri must be an s3://bucket/key URI; http(s) and local paths are not fetched")
    key = uri[len("s3://"):]
    parts = PurePosixPath(key).parts
    if not key or key.endswith("/") or any(p in ("..", ".") for p in key.split("/")) or len(parts) < 2:
        raise ApiError(400, f"uri {uri!r} does not name an object (s3://bucket/key)")
    if not any(uri.startswith(p) for p in allowed_prefixes):
        raise ApiError(403, f"uri {uri!r} is outside the locations this server may read")
    return uri
