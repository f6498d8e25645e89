"""What every configuration shares: one strict pydantic base, one YAML reader, one way to report mistakes.

Job, serve, placement and models-profile files are all read here and validated by models derived
from :class:`StrictModel`, so a typo'd key is refused everywhere alike and every mistake reaches the
user as ``path.to.field: what is wrong`` before Ray or a GPU is touched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration a person must fix; the message says what and where."""


M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML (or JSON) document at ``path``; ``what`` names it in errors ('job config', ...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Like :func:`read_yaml`, for documents that must be a mapping at the top level (empty → {})."""
    data = read_yaml(path, what) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def validated(model: type[M], data: Any, what: str) -> M:
    """``model`` built from ``data``, or a ConfigError listing every mistake with its path."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # A validator's own ValueError already says what is wrong; pydantic's "Value error, " adds nothing.
        lines = [f"  {'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg'].removeprefix('Value error, ')}"
                 for err in e.errors()]
        raise ConfigError(f"invalid {what}:\n" + "\n".join(lines)) from None
