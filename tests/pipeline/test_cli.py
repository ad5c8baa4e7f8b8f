"""The `mebot` command and the Dagster instance it uses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import pytest

from pipeline.settings import PROJECT_ROOT
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


def test_mebot_ui_serves_the_asset_graph_on_loopback(project_home, tmp_path):
    port = free_port()
    env = {**os.environ, "MEBOT_DAGSTER_HOME": str(project_home), "MEBOT_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        query = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"
        nodes = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and nodes is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps({"query": query}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    nodes = json.load(response)["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                assert process.poll() is None, process.stdout.read().decode()[-3000:]
                time.sleep(1)
        assert nodes is not None, "dagster dev did not answer within 120 s"
        by_name = {node["assetKey"]["path"][-1]: node for node in nodes}
        assert {"raw_pages", "rag_chunks"} <= set(by_name)
        assert by_name["raw_pages"]["groupName"] == "ingest"
        assert {"path": ["raw_pages"]} in by_name["rag_chunks"]["dependencyKeys"]
        assert (project_home / ".dagster_home").is_dir()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_make_setup_is_a_no_op_the_second_time():
    """`make test` and `make run` install once; with nothing changed, setup has nothing to do."""
    result = subprocess.run(["make", "-q", "setup"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, "make setup would reinstall although pyproject.toml did not change"


def test_mebot_ask_without_outputs_says_to_run_make_run_first(tmp_path):
    env = {**os.environ, "MEBOT_DATA_DIR": str(tmp_path / "data"), "MEBOT_DAGSTER_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ask", "What telescope do you own?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    assert "run `make run` first" in result.stderr
