"""``corpusflow index OUT``: build or update OUT's search index from its committed tables (see flows/index.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from corpusflow.contracts.base import ConfigError, read_mapping, validated
from corpusflow.contracts.config import RANDOM_SOURCE, StageConfig
from corpusflow.contracts.search import IndexConfig


def load_configs(config_file: Optional[str], models: Optional[str]) -> tuple[StageConfig, IndexConfig]:
    """The stage settings and ``index:`` section of a job config file (its corpus/out keys are not needed here)."""
    data = read_mapping(config_file, "config file") if config_file else {}
    index = validated(IndexConfig, data.pop("index", None) or {}, "job config index")
    data.pop("corpus", None)
    data.pop("out", None)
    if models:
        data["models"] = models
    return validated(StageConfig, data, "job config"), index


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="corpusflow index", description=__doc__)
    p.add_argument("out", help="a job's OUT (local folder or s3://bucket/prefix)")
    p.add_argument("--models", help="models profile whose `embedding` model embeds the units (default small-real)")
    p.add_argument("--config", help="job config YAML: model_cache, index.* (window sizes, embed resources)")
    p.add_argument("--address", help="Ray cluster address; without it a local Ray is started")
    args = p.parse_args(list(argv))
    try:
        config, index = load_configs(args.config, args.models)
    except ConfigError as e:
        print(f"corpusflow index: {e}", file=sys.stderr)
        return 2
    if config.profile.embedding.source == RANDOM_SOURCE:
        print(f"corpusflow index: the embedder of models profile {config.profile.name} is tiny-random: semantic "
              "search over this index is noise and hybrid search ranks by words alone", file=sys.stderr)
    from corpusflow.actors.search.store import SearchIndexError
    from corpusflow.flows.index import build_index
    from corpusflow.flows.tables import exists

    if not exists(args.out, "assets"):
        print(f"corpusflow index: {args.out} holds no corpusflow tables: name the OUT of a job", file=sys.stderr)
        return 2
    try:
        print(build_index(args.out, config, index, address=args.address).to_text())
    except SearchIndexError as e:
        print(f"corpusflow index: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
