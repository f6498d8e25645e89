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

.PHONY: setup system-deps sample test lint
setup: $(BIN)/corpusflow
	@{ command -v espeak-ng && command -v redis-server && tesseract --list-langs 2>&1 | grep -qx spa; } >/dev/null 2>&1 || $(MAKE) system-deps \
	  || echo "could not install $(SYSTEM_PACKAGES): OCR of scanned PDFs and the ASR quality test need them"

# Debian packages: Tesseract OCR (scanned PDFs) with English, German, French and Spanish data, espeak-ng
# (speech with known words for the ASR quality test and the sample), and redis-server (the GCS's external
# store in the cluster tests, as KubeRay's GCS fault tolerance has it). Needs root (or sudo) and apt-get.
SYSTEM_PACKAGES := tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu tesseract-ocr-fra tesseract-ocr-spa espeak-ng \
	redis-server
system-deps:
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null

# small-real (the default profile): real multilingual Whisper base transcripts and language tags and a real
# multilingual embedder for search, offline on a CPU (the VLM stays tiny and random); `make sample
# MODELS=tiny-random` for the tests' all-random profile.
MODELS ?= small-real
sample: setup
	$(BIN)/corpusflow run examples/sample --out out/sample --models $(MODELS)
	$(BIN)/corpusflow search out/sample "dosing schedule" --limit 3

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
