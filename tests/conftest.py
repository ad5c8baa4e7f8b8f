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

from tests.helpers import E2E_MAX_PASSAGES, deep_merge, write_settings
from tests.sites import write_small_site
from tests.tiers import (  # noqa: F401 - the tiers' hooks, found here by name
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
)

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
