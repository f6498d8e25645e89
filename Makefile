# One entry point for people and CI. `make sample` sets up and runs the main job on the bundled sample
# corpus (tables and search index), then one search; `make test` sets up and runs the tests. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/corpusflow: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: setup sample test lint
setup: $(BIN)/corpusflow

sample: setup
	$(BIN)/corpusflow run examples/sample --out out/sample --models tiny-random
	$(BIN)/corpusflow search out/sample "dosing schedule" --limit 3

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
