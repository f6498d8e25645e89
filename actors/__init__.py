"""Stage classes of corpusflow, usable by Ray Data ``map_batches`` and by Ray Serve alike."""
from __future__ import annotations

import importlib


def stage_class(path: str) -> type:
    """The stage class named ``module.Class`` (e.g. ``corpusflow.actors.asr.Transcribe``), imported now.

    The registry names stage classes by path (contracts sit below actors); the Ray Data adapter and the
    Serve deployments both resolve them here.
    """
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
