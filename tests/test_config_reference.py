"""docs/config.md is the reference of every option, generated from the config models; the CLI's help points at it."""
from __future__ import annotations

from pathlib import Path

from corpusflow.contracts.config import JobConfig
from corpusflow.flows.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _cli(capsys, *args: str) -> str:
    """What ``corpusflow ARGS`` prints (``--help`` ends in argparse's SystemExit 0)."""
    try:
        assert main(list(args)) == 0
    except SystemExit as e:
        assert e.code == 0
    return capsys.readouterr().out


def test_docs_config_md_is_the_generated_reference(capsys):
    page = _cli(capsys, "config-reference")
    assert (ROOT / "docs" / "config.md").read_text() == page, (
        "docs/config.md is out of date: run `corpusflow config-reference > docs/config.md`")
    # Every option has a meaning, nested settings are flattened to the dotted names a YAML file nests.
    undescribed = [line.split("`")[1] for line in page.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undescribed, f"options without a description= in their model: {undescribed}"
    for name in ("video.fps", "resources.<stage>.num_gpus", "engine_options.<accelerator>.max_num_seqs",
                 "deployments.<deployment>.autoscaling.max_replicas", "stages.<stage>.targets.<accelerator>.num_gpus"):
        assert f"| `{name}` |" in page
    job = page.split("## Job config", 1)[1].split("\n## ", 1)[0]
    assert {line.split("`")[1].split(".")[0] for line in job.splitlines() if line.startswith("| `")} == set(
        JobConfig.model_fields)


def test_every_subcommand_says_what_it_does(capsys):
    text = _cli(capsys, "--help")
    commands = text.split("{", 1)[1].split("}", 1)[0].split(",")
    assert len(commands) >= 9
    for command in commands:
        line = next(line for line in text.splitlines() if line.strip().startswith(command + " "))
        assert len(line.split(command, 1)[1].strip()) > 20 and "see `" not in line, line
    assert "docs/config.md" in _cli(capsys, "run", "--help")
    assert (ROOT / "docs" / "config.md").is_file()
