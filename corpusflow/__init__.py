"""corpusflow: a multimodal corpus (video, audio, PDF) → typed Parquet tables, with Ray Data and Ray Serve.

One package namespace over the repository's top-level folders, which the product brief fixes:
``corpusflow.contracts``, ``corpusflow.actors``, ``corpusflow.flows``, ``corpusflow.serve_apps``.
An installed wheel maps those folders under ``corpusflow/`` (pyproject.toml ``package-dir``). A
source checkout that is not installed — the working directory ``ray job submit --working-dir .``
ships — holds them beside this folder, so there the repository root joins this package's path.
"""
from __future__ import annotations

from pathlib import Path

SUBPACKAGES = ("contracts", "actors", "flows", "serve_apps")

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and all((_checkout / p / "__init__.py").is_file() for p in SUBPACKAGES):
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821 - a package's own __path__
