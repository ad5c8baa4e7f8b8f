"""Fixtures shared by every test, and the hooks of the two tiers (`make check` = `pytest -m "not full"`, `make
test` = everything; tests/tiers.py). Helpers shared by test modules live in tests/helpers.py and tests/fakes.py,
never here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import E2E_MAX_PASSAGES, deep_merge, e2e_golden_file, write_settings
from tests.sites import write_small_site
from tests.tiers import (  # noqa: F401 - the tiers' hooks, found here by name
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
)

# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _restore_process_state():
    """Every test leaves the working directory and environment as it found them: the CLI, run in-process by some
    tests, points Dagster at its home with os.chdir and environment variables, and later tests that spawn worker
    processes would import `tests` from the wrong directory."""
    cwd, environ = os.getcwd(), dict(os.environ)
    yield
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)


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
        # greedy fine-tuned answers: the same question gives the same answer, with or without the adapter
        "finetune": {"local": {"max_steps": 2, "max_seq_tokens": 256}, "answer_temperature": 0.0},
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
