"""The `mebot` command and the Dagster instance it uses."""

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import dagster as dg
import pytest

from mebot.resources.settings import PROJECT_ROOT
from tests.sites import free_port


@pytest.fixture
def project_home(tmp_path):
    """A DAGSTER_HOME holding the project's own dagster.yaml."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def test_dagster_yaml_turns_telemetry_off_and_keeps_storage_under_dot_dagster_home(project_home, monkeypatch):
    monkeypatch.chdir(project_home)
    instance = dg.DagsterInstance.from_config(str(project_home))
    try:
        assert instance.telemetry_enabled is False
        assert instance.nux_enabled is False
        assert instance.storage_directory() == ".dagster_home/artifacts/storage"
        assert instance.get_runs_count() == 0
    finally:
        instance.dispose()
    assert (project_home / ".dagster_home" / "storage").is_dir()
    assert sorted(p.name for p in project_home.iterdir()) == [".dagster_home", "dagster.yaml"]


def test_make_setup_is_a_no_op_the_second_time():
    """`make test` and `make run` install once; with nothing changed, setup has nothing to do."""
    result = subprocess.run(["make", "-q", "setup"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, "make setup would reinstall although pyproject.toml did not change"


def test_mebot_ask_without_outputs_says_to_run_make_run_first(tmp_path):
    env = {**os.environ, "MEBOT_DATA_DIR": str(tmp_path / "data"), "MEBOT_DAGSTER_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "ask", "What telescope do you own?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    assert "run `make run` first" in result.stderr


def _run_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "MEBOT_DATA_DIR": str(tmp_path / "data"), "MEBOT_DAGSTER_HOME": str(tmp_path / "home")}


def _llm_calls(path) -> dict[str, float]:
    """key → created_at of every cached LLM call (a call made again would rewrite its created_at)."""
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        try:
            return dict(db.execute("SELECT key, created_at FROM llm_calls"))
        except sqlite3.OperationalError:  # the table is not created yet
            return {}


@pytest.mark.full  # `mebot run` with the real models
def test_mebot_run_killed_halfway_repeats_no_finished_llm_call_and_a_third_run_skips_fresh_assets(
    site_config, tmp_path
):
    # one port: URLs (and data versions) stay the same; one short question for each of 6 passages, no quality
    # gates (their retries and embeddings are tested in tests/assets/qa), keeps the LLM work small
    qa = {"questions_per_chunk": 1, "split": "none", "max_tokens": 32, "max_passages": 6, "gates": []}
    config = site_config({"site": {"local_port": free_port()}, "qa": qa})
    command = [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "run", "--select", "*synthetic_qa"]
    cache = tmp_path / "data" / "cache" / "llm_calls.sqlite"
    process = subprocess.Popen(
        command, env=_run_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while len(_llm_calls(cache)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed halfway"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    before = _llm_calls(cache)
    assert len(before) >= 2

    rerun = subprocess.run(command, env=_run_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    after = _llm_calls(cache)
    assert len(after) > len(before), "the killed run had finished every call: nothing left to prove"
    assert {key: after[key] for key in before} == before  # no finished call was made again

    third = subprocess.run(command, env=_run_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-3000:]
    assert "  raw_pages: ok" in third.stdout  # the crawl always runs: it is how changes are found
    assert "fresh, skipped (--force rebuilds them): qa_chunks" in third.stdout
    assert "fresh, skipped (--force rebuilds them): synthetic_qa" in third.stdout
    assert "(1 run(s))" in third.stdout
    assert _llm_calls(cache) == after


@pytest.mark.full  # `mebot run` in a subprocess, with its workers
def test_mebot_run_exits_1_and_skips_what_depends_on_a_failed_asset(site_config, tmp_path):
    empty = tmp_path / "empty-site"
    empty.mkdir()
    config = site_config({"site": {"local_dir": str(empty)}})
    result = subprocess.run(  # the crawl and everything after it
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "run", "--select", "raw_pages*"],
        env=_run_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "  raw_pages: FAILED" in result.stdout
    assert "  rag_chunks: skipped, its input raw_pages failed" in result.stdout
    assert "  chunk_embeddings: skipped, its input rag_chunks failed" in result.stdout
    assert "mebot run FAILED" in result.stdout
    assert "has no index.html; site.local_dir must be a folder of pages" in result.stderr  # the asset's own words


@pytest.mark.full  # three `mebot run` subprocesses
@pytest.mark.parametrize(
    ("select", "message"),
    [("raw_pagez", "['raw_pagez'] were selected"), ("group:nothing", "matches no asset"), ("a b", "Invalid selection")],
)
def test_mebot_run_rejects_a_selection_of_nothing_naming_it_and_the_assets(make_config, tmp_path, select, message):
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(make_config()), "run", "--select", select],
        env=_run_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert f"--select {select!r}" in result.stderr and message in result.stderr
    if select != "a b":
        assert "the assets are: chunk_embeddings," in result.stderr
