"""The two tiers of the suite (wired in by tests/conftest.py).

- `make check` (`pytest -m "not full"`): unit tests and integration tests with the fake models of tests/fakes.py,
  for the edit loop (minutes).
- `make test` (plain `pytest`, what CI runs): everything, the `full` tier included: the whole-graph `mebot run`,
  the llama.cpp server, the Dagster UI, the browser, LoRA training, the notebook, the real GGUF and MiniLM.

A test is in the full tier when it is marked `@pytest.mark.full`, when it uses a fixture of FULL_FIXTURES, or
when its node id starts with one of FULL_TESTS (tests marked here rather than in their file). In the check tier
the real models cannot be loaded, in the test process or in any Python process it starts
(tests/model_guard/sitecustomize.py): a test that loads one fails, saying to mark it full or to use the fakes, so
a heavy test cannot slip into the fast tier unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.expression import Expression

from tests.model_guard.sitecustomize import CHECK_TIER, GUARD, TIER_ENV, NeedsFullTier, message

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
