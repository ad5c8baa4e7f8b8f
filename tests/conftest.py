from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mebot.resources.settings import DEFAULT_CONFIG_PATH
from tests.sites import write_small_site

# Enough passages for OpenAI's minimum of 10 training examples, which training_file_valid checks (blocking).
E2E_MAX_PASSAGES = 14


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    return write_small_site(tmp_path / "site")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write the project's mebot.yaml with `overrides` deep-merged in; returns the file's path."""

    def make(overrides: dict[str, Any] | None = None, name: str = "mebot.yaml") -> Path:
        base = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_merge(base, overrides or {})), encoding="utf-8")
        return path

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

    The end-to-end and the server tests share it; the config beside it is `<data>/../mebot.yaml`."""
    root = tmp_path_factory.mktemp("e2e")
    config = root / "mebot.yaml"
    # The project's own settings, sized down so the whole graph (questions, the two-point sweep, evaluation)
    # builds in minutes: no crawl delay, any free port, fewer passages, two training steps, two test questions.
    overrides = {
        "site": {"download_delay": 0, "local_port": 0},
        "qa": {"max_passages": E2E_MAX_PASSAGES},
        "finetune": {"local": {"max_steps": 2, "max_seq_tokens": 256}},
        "eval": {"max_questions": 2, "validity_sample": 2},
    }
    base = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump(deep_merge(base, overrides)), encoding="utf-8")
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
