"""``corpusflow config-reference``: every option of the job, models profile, serve and placement configs.

The page is generated from the config models themselves (contracts/), so it cannot drift from what is
validated: each option's dotted name, type with its bounds, default and the field's description.
``docs/config.md`` is this command's output; tests/test_config_reference.py fails when the models
change and the page was not regenerated (``corpusflow config-reference > docs/config.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence, Union

from pydantic import BaseModel, RootModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from corpusflow.contracts.config import BUILTIN_PROFILES, JobConfig, ModelsProfile
from corpusflow.contracts.placement import Placement
from corpusflow.contracts.serve_config import ServeConfig

# What the key of a mapping of settings stands for, by the mapping's field name.
_KEYS = {"engine_options": "accelerator", "resources": "stage", "rerankers": "name", "deployments": "deployment",
         "stages": "stage", "targets": "accelerator"}

_SECTIONS = (
    ("Job config", JobConfig, "`corpusflow run CORPUS --out OUT --config job.yaml`: a YAML (or JSON) mapping of these "
     "keys, nested as the dots say (`video.fps: 0.5` is `video:` then `  fps: 0.5`). `corpus` and `out` come from the "
     "command line; `--models` and `--fps` override `models` and `video.fps`. The whole file is validated before Ray "
     "starts; an unknown key is an error."),
    ("Models profile", ModelsProfile, "`--models profile.yaml` (or `models:` of a job or serve config): where each "
     "model comes from. A source is a Hugging Face id, a local folder, an `s3://` prefix (synced once per node into "
     "`model_cache`), `package:module/folder` (weights an installed Python package ships) or `tiny-random`."),
    ("Serve config", ServeConfig, "`corpusflow serve --config serve.yaml`, or the `args` of serve_apps/config.yaml "
     "for `serve deploy`: the online API's limits and each deployment's shape."),
    ("Placement", Placement, "`corpusflow plan --placement placement.yaml`: where each stage may run in a mixed "
     "cluster and with which actor resources; without it the plan uses `DEFAULT_PLACEMENT` "
     "(contracts/placement.py)."),
)


def _args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _model(annotation: Any) -> Optional[type[BaseModel]]:
    """The settings model an annotation holds (alone or as ``Optional``), None for anything else."""
    if _is_union(annotation):
        inner = [a for a in _args(annotation) if a is not type(None)]
        return _model(inner[0]) if len(inner) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _mapping_of_models(annotation: Any) -> Optional[type[BaseModel]]:
    """M for ``dict[str, M]`` (and a root model holding one), None otherwise."""
    if isinstance(annotation, type) and issubclass(annotation, RootModel):
        return _mapping_of_models(annotation.model_fields["root"].annotation)
    if typing.get_origin(annotation) is dict:
        return _model(_args(annotation)[1])
    return None


def _uniform(model: type[BaseModel]) -> Optional[type[BaseModel]]:
    """M for a model whose every field is an M (a named set of alike settings, e.g. the deployments)."""
    kinds = {f.annotation for f in model.model_fields.values()}
    return _model(next(iter(kinds))) if len(kinds) == 1 else None


def type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in _args(annotation))
    if _is_union(annotation):
        return " or ".join(type_name(a) for a in _args(annotation))
    origin = typing.get_origin(annotation)
    if origin in (dict, typing.Mapping):
        key, value = _args(annotation)
        return f"map of {type_name(key)} to {type_name(value)}"
    if origin in (list, tuple):
        return f"list of {type_name(_args(annotation)[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if annotation is typing.Any:
        return "any"
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
        getattr(annotation, "__name__", str(annotation)), str(annotation))


def _bounds(field: FieldInfo) -> str:
    marks = []
    for m in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("min_length", "min length"),
                           ("max_length", "max length"), ("pattern", "matches")):
            value = getattr(m, attr, None)
            if value is not None:
                marks.append(f"{sign} `{value}`" if attr == "pattern" else f"{sign} {value}")
    return ", " + ", ".join(marks) if marks else ""


def _show(value: Any) -> str:
    text = json.dumps(to_jsonable_python(value), ensure_ascii=False, separators=(", ", ": "))
    return "`" + text.replace("|", "\\|") + "`"


def _changes(value: Any, model: type[BaseModel]) -> Any:
    """A mapping of settings as the values that differ from ``model``'s defaults (the rows below it)."""
    if isinstance(value, RootModel):
        value = value.root
    if isinstance(value, BaseModel):
        value = {k: getattr(value, k) for k in type(value).model_fields}
    return {k: v.model_dump(mode="json", exclude_defaults=True) for k, v in value.items()}


def _default(field: FieldInfo, instance: Optional[BaseModel], name: str) -> Any:
    """The default of option ``name``: from the enclosing settings' own default where it has one."""
    if instance is not None:
        return getattr(instance, name)
    return field.get_default(call_default_factory=True)


def _cell(text: Optional[str]) -> str:
    return " ".join((text or "").split()).replace("``", "`").replace("|", "\\|")


def _then(first: Optional[str], second: str) -> str:
    return _cell(f"{first.rstrip('. ')}. {second}" if first else second)


def rows(model: type[BaseModel], prefix: str = "",
         instance: Optional[BaseModel] = None) -> Iterator[tuple[str, str, str, str]]:
    """(dotted name, type, default, meaning) for every option of ``model``, nested settings flattened.

    ``instance``: the default value of these settings where it differs from the class's defaults
    (``index.embed`` reserves its own batch size).
    """
    uniform = _uniform(model)
    for name, field in model.model_fields.items():
        path, annotation = f"{prefix}{name}", field.annotation
        if field.is_required():
            default: Any = None
        else:
            default = _default(field, instance, name)
        each = _mapping_of_models(annotation)
        inner = _model(annotation) if each is None else None
        alike = _uniform(inner) if inner is not None and uniform is None else None
        if each is not None or alike is not None:  # a mapping of alike settings: one set of rows for every key
            kind = each or alike
            assert kind is not None
            key = _KEYS.get(name, "key")
            shown = "required" if field.is_required() else _show(_changes(default, kind))
            yield (path, f"map of {key} to settings" if each else "settings", shown, _then(
                field.description or (inner.__doc__ if inner else None),
                f"Each `{path}.<{key}>` holds the options below; the default column here lists, per {key}, the "
                "values that differ from theirs."))
            yield from rows(kind, f"{path}.<{key}>.")
        elif inner is not None:
            if field.description:
                yield (path, "settings", "", _cell(field.description))
            yield from rows(inner, f"{path}.", default if isinstance(default, BaseModel) else None)
        else:
            shown = "required" if field.is_required() else _show(default)
            yield (path, type_name(annotation) + _bounds(field), shown, _cell(field.description))


@contextmanager
def _portable_defaults() -> Iterator[None]:
    """Defaults that read the environment (the model cache's folder) shown as the variable, not this machine's value."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = "$XDG_CACHE_HOME"
    try:
        yield
    finally:
        if before is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = before


def reference() -> str:
    """The Markdown page (docs/config.md)."""
    out = ["# Configuration reference", "",
           "Generated by `corpusflow config-reference > docs/config.md` from the config models in `contracts/`; "
           "tests/test_config_reference.py fails when they change and this page was not regenerated. Every file is "
           "validated before Ray starts: an unknown key, a wrong type or a value out of bounds is an error naming "
           "its dotted path. `<stage>`, `<accelerator>` and the like stand for a key you choose from the listed ones.",
           "", "Sections: " + ", ".join(f"[{title}](#{title.lower().replace(' ', '-')})" for title, _, _ in _SECTIONS),
           ""]
    with _portable_defaults():
        for title, model, intro in _SECTIONS:
            out += [f"## {title}", "", intro, ""]
            if model is ModelsProfile:
                out += ["Built-in profiles: " + "; ".join(
                    f"`{p.name}` (ASR `{p.asr}`, VLM `{p.vlm}`, embedding `{p.embedding.source}`)"
                    for p in BUILTIN_PROFILES.values()) + ".", ""]
            out += ["| option | type | default | meaning |", "|---|---|---|---|"]
            out += [f"| `{n}` | {t} | {d} | {m} |" for n, t, d, m in rows(model)]
            out.append("")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argparse.ArgumentParser(prog="corpusflow config-reference", description=__doc__.split("\n\n")[0]).parse_args(argv)
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
