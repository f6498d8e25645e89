"""The package as a user installs and imports it: one ``corpusflow`` namespace, imports pointing one way."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("contracts", "actors", "flows", "serve_apps")
# What each layer may import of the project's: flows and serve_apps → actors → contracts.
MAY_IMPORT = {"contracts": {"contracts"}, "actors": {"actors", "contracts"},
              "flows": {"flows", "actors", "contracts"}, "serve_apps": {"serve_apps", "actors", "contracts"}}


def _project_imports(path: Path) -> set[str]:
    """The corpusflow subpackages a module imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "corpusflow" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] in SUBPACKAGES:
                found.add(f"top-level {parts[0]}")
    return found


def test_imports_point_one_way():
    wrong = {}
    for layer, allowed in MAY_IMPORT.items():
        for path in (ROOT / layer).rglob("*.py"):
            bad = _project_imports(path) - allowed
            if bad:
                wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"imports against the layering (flows, serve_apps → actors → contracts): {wrong}"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``, importing only what is installed (no PYTHONPATH pointing at a checkout)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_only_corpusflow_is_importable_from_outside_the_checkout(tmp_path):
    ok = _run(["-c", "import corpusflow.contracts.config, corpusflow.actors.asr, corpusflow.flows.job, "
                     "corpusflow.serve_apps.app"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    for generic in SUBPACKAGES:
        gone = _run(["-c", f"import {generic}"], tmp_path)
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, generic


def test_python_dash_m_corpusflow_is_the_cli(tmp_path):
    out = _run(["-m", "corpusflow", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "serve" in out.stdout and "plan" in out.stdout


def test_a_plain_checkout_runs_as_ray_job_working_dir(tmp_path):
    """``ray job submit --working-dir .`` ships the checkout, not an installed wheel: it must import as is."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for item in ("pyproject.toml", "corpusflow", *SUBPACKAGES):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, checkout / item)
    # -S: no site-packages, so nothing installed can answer for the checkout (contracts.cost needs no dependency).
    out = _run(["-S", "-c", "import corpusflow.contracts.cost as c; print(c.__file__)"], checkout)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(checkout))


def test_the_wheel_installs_one_namespace_with_its_data(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "corpusflow", *SUBPACKAGES):
        path = ROOT / item
        (shutil.copytree if path.is_dir() else shutil.copy)(path, src / item)
    built = _run(["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                  str(src)], tmp_path)
    assert built.returncode == 0, built.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    assert {n.split("/")[0] for n in names} == {"corpusflow", "corpusflow-0.1.0.dist-info"}
    assert "corpusflow/contracts/throughput_profile.json" in names  # corpusflow plan's default profile
    assert "corpusflow/serve_apps/config.yaml" in names
