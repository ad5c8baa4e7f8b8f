"""Fixtures shared by every test, and the hooks of the two tiers (`make check` = `pytest -m "not full"`, `make
test` = everything; tests/tiers.py). Helpers shared by test modules live in tests/helpers.py and tests/fakes.py,
never here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.background_run import DefaultRunPlugin
from tests.helpers import deep_merge, write_settings
from tests.sites import write_small_site
from tests.tiers import (  # noqa: F401 - the tiers' hooks, found here by name
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
)
from tests.tiers import pytest_configure as configure_tiers

DEFAULT_RUN_PLUGIN = "mebot-default-run"


def pytest_configure(config: pytest.Config) -> None:
    configure_tiers(config)
    if not config.pluginmanager.has_plugin(DEFAULT_RUN_PLUGIN):
        config.pluginmanager.register(DefaultRunPlugin(), DEFAULT_RUN_PLUGIN)


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
def default_run(request: pytest.FixtureRequest) -> tuple[subprocess.CompletedProcess, Path]:
    """`mebot run` on the embedded sample site into a tmp data dir, once per session: (result, data dir).

    Started in the background when the session's tests are collected (tests/background_run.py); this waits for
    it. The end-to-end and the server tests share it; the config beside it is `<data>/../mebot.yaml`. Full tier."""
    return request.config.pluginmanager.get_plugin(DEFAULT_RUN_PLUGIN).result()
