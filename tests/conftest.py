"""Fixtures shared by every test, and the two tiers.

- `make check` (`pytest -m "not full"`): unit tests and integration tests with the fake models of tests/fakes.py,
  for the edit loop (minutes).
- `make test` (plain `pytest`, what CI runs): everything, the `full` tier included: the whole-graph `mebot run`,
  the llama.cpp server, the Dagster UI, the browser, LoRA training, the notebook, the real GGUF and MiniLM.

A test is in the full tier when it is marked `@pytest.mark.full`, when it uses a fixture of FULL_FIXTURES, or
when its node id starts with one of FULL_TESTS (tests marked here rather than in their file). In the check tier
the real models cannot be loaded, in the test process or in any Python process it starts
(tests/model_guard/sitecustomize.py): a test that loads one fails, saying to mark it full or to use the fakes, so
a heavy test cannot slip into the fast tier unnoticed.

Helpers shared by test modules live in tests/helpers.py (and tests/fakes.py), never here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.expression import Expression

from tests.helpers import E2E_MAX_PASSAGES, deep_merge, write_settings
from tests.model_guard.sitecustomize import CHECK_TIER, GUARD, TIER_ENV, NeedsFullTier, message
from tests.sites import write_small_site

FULL = "full"
GUARD_SITE_DIR = Path(__file__).parent / "model_guard"  # its sitecustomize.py guards subprocesses
# Fixtures that put a test in the full tier: the session's whole-graph run (and the servers built on it), the
# llama.cpp server, the Dagster UI, the browser, the real MiniLM, and the evaluation worlds built with the real
# models (`scored`: every evaluation asset with the real judge; `rag_world`: a MiniLM index for real answers).
FULL_FIXTURES = frozenset({"default_run", "llama_server", "ui", "browser", "minilm", "scored", "rag_world"})
# Tests marked here rather than in their files (node id prefixes): the real-model tests of files that others
# were editing when the tiers came in. Prefer `@pytest.mark.full` in the test file.
FULL_TESTS: tuple[str, ...] = (
    "tests/assets/index/test_embeddings.py::test_vector_index_refuses_embeddings_made_by_another_model",
    "tests/assets/index/test_rag.py::test_prompt_drops_the_lowest_ranked_chunks_that_do_not_fit_the_context_window",
    # the bundled GGUF through llama.cpp, in this process
    "tests/resources/test_chat.py::test_llama_cpp_short_completion_returns_text_and_token_counts",
    "tests/resources/test_chat.py::test_llama_cpp_count_tokens_uses_the_models_tokenizer",
    "tests/resources/test_chat.py::test_llama_cpp_logprobs_with_five_alternatives",
    "tests/resources/test_chat.py::test_resource_client_in_a_materialization_reports_usage",
    "tests/resources/test_chat.py::test_identical_call_hits_the_cache_and_a_new_client_hits_too",
    "tests/resources/test_chat.py::test_resource_with_use_cache_false_bypasses_the_cache",
    "tests/resources/test_chat.py::test_complete_batch_",
    "tests/resources/test_chat.py::test_automatic_threads_follow_mebot_runs_share_at_each_call",
)


# ---------------------------------------------------------------------------------------------------- tiers


def full_tier_excluded(config: pytest.Config) -> bool:
    """Whether this run's -m expression leaves out tests marked `full` (the check tier)."""
    expression = config.getoption("markexpr", "") or ""
    if not expression.strip():
        return False
    return not Expression.compile(expression).evaluate(lambda name, **kwargs: name == FULL)


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker(FULL) is not None:
            continue
        if FULL_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.nodeid.startswith(FULL_TESTS):
            item.add_marker(pytest.mark.full)


def pytest_configure(config: pytest.Config) -> None:
    """The check tier guards the real models here and, through PYTHONPATH, in every Python subprocess."""
    if not full_tier_excluded(config):
        return
    GUARD.install()
    os.environ[TIER_ENV] = CHECK_TIER
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_SITE_DIR), os.environ.get("PYTHONPATH")]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A test during which a real model was refused fails, even where the code under test caught the error."""
    outcome = yield
    if not GUARD.hits:
        return
    report = outcome.get_result()
    what = GUARD.hits[0]
    GUARD.hits.clear()
    if report.outcome != "failed" or NeedsFullTier.__name__ not in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"{NeedsFullTier.__name__}: {message(what)}"


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    return write_small_site(tmp_path / "site")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write the project's mebot.yaml with `overrides` deep-merged in; returns the file's path."""

    def make(overrides: dict[str, Any] | None = None, name: str = "mebot.yaml") -> Path:
        return write_settings(tmp_path / name, overrides)

    return make


@pytest.fixture
def site_config(make_config: Callable[..., Path], small_site: Path) -> Callable[..., Path]:
    """A settings file that crawls the small generated site quickly, with more overrides on top."""

    def make(overrides: dict[str, Any] | None = None, name: str = "mebot.yaml") -> Path:
        local = {"site": {"local_dir": str(small_site), "local_port": 0, "download_delay": 0}}
        return make_config(deep_merge(local, overrides or {}), name=name)

    return make


E2E_GOLDEN_IDS = ("favourite-film", "distance-2022", "football-team")  # a name, a number with its unit, unanswerable


def e2e_golden_file(root: Path) -> Path:
    """Three of the sample site's golden questions (every model answers every golden question: a RAG answer with
    the bundled model takes ~20-40 s, so the whole file would add half an hour)."""
    import yaml

    sample_file = Path(__file__).resolve().parents[1] / "data" / "golden" / "sample_site.yaml"
    sample = yaml.safe_load(sample_file.read_text(encoding="utf-8"))
    questions = [q for q in sample["questions"] if q["id"] in E2E_GOLDEN_IDS]
    path = root / "golden.yaml"
    path.write_text(yaml.safe_dump({"questions": questions}, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`mebot run` on the embedded sample site into a tmp data dir, once per session: (result, data dir).

    The end-to-end and the server tests share it; the config beside it is `<data>/../mebot.yaml`. Full tier."""
    root = tmp_path_factory.mktemp("e2e")
    config = root / "mebot.yaml"
    # The project's own settings, sized down so the whole graph (questions, the two-point sweep, evaluation)
    # builds in minutes: no crawl delay, any free port, fewer passages, two training steps, two test questions.
    overrides = {
        "site": {"download_delay": 0, "local_port": 0},
        "qa": {"max_passages": E2E_MAX_PASSAGES},
        "finetune": {"local": {"max_steps": 2, "max_seq_tokens": 256}},
        "eval": {"max_questions": 2, "validity_sample": 2, "golden_path": str(e2e_golden_file(root))},
    }
    write_settings(config, overrides)
    env = {**os.environ, "MEBOT_DATA_DIR": str(root / "data"), "MEBOT_DAGSTER_HOME": str(root / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
        cwd=root,
    )
    return result, root / "data"
