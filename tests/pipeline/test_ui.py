"""The Dagster UI as a person meets it: `mebot ui` (dagster dev on 127.0.0.1) started once for this module on a
small generated site, with its own Dagster home and data folder. Over GraphQL: the asset graph (groups, kinds,
descriptions, lineage), the jobs, schedule and automation sensor, a launched materialization, the automation that
follows it, and staleness after a settings edit. In headless Chromium: the Materialize button."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from mebot.resources.settings import DEFAULT_CONFIG_PATH, PROJECT_ROOT
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, deep_merge
from tests.sites import free_port, write_small_site

LOCATION = "mebot.pipeline.definitions"
REPOSITORY = "__repository__"
RUN_TIMEOUT_S = 240


@dataclass
class Ui:
    url: str
    config: Path
    log: Path
    home: Path

    def query(self, query: str, **variables) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def nodes(self) -> dict[str, dict]:
        data = self.query(
            "{ assetNodes { assetKey { path } groupName kinds description staleStatus"
            " staleCauses { key { path } category reason } dependencyKeys { path } } }"
        )
        return {node["assetKey"]["path"][-1]: node for node in data["assetNodes"]}

    def runs(self) -> list[dict]:
        data = self.query(
            "{ runsOrError { ... on Runs { results { runId status assetSelection { path } tags { key value } } } } }"
        )
        return data["runsOrError"]["results"]

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.query("query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id)[
                "runOrError"
            ]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1)
        return f"still running after {timeout} s"


def _selected(run: dict) -> set[str]:
    return {key["path"][-1] for key in run["assetSelection"] or []}


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    site = write_small_site(root / "site")
    config = root / "mebot.yaml"
    settings = deep_merge(
        yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()),
        {"site": {"local_dir": str(site), "local_port": free_port(), "download_delay": 0}},
    )
    config.write_text(yaml.safe_dump(settings))
    home = root / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    log = root / "dagster-dev.log"
    env = {**os.environ, "MEBOT_DAGSTER_HOME": str(home), "MEBOT_DATA_DIR": str(root / "data")}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "ui", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # dagster dev ignores SIGTERM unless it leads its own session
        )
    ui = Ui(f"http://127.0.0.1:{port}", config, log, home)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if ui.nodes():
                    break
            except (httpx.HTTPError, AssertionError, KeyError, TypeError):
                pass
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "dagster dev did not answer within 180 s\n" + log.read_text()[-3000:]
            time.sleep(1)
        yield ui
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def crawled(ui) -> dict:
    """raw_pages materialized by a run launched over GraphQL, as the UI's Materialize button does."""
    data = ui.query(
        """mutation ($selector: JobOrPipelineSelector!) {
          launchRun(executionParams: {selector: $selector, mode: "default"}) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
          }
        }""",
        selector={
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["raw_pages"]}],
        },
    )
    launched = data["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    return {"run_id": run_id, "status": ui.wait_for_run(run_id)}


@pytest.fixture(scope="module")
def automated_chunks(ui, crawled) -> list[dict]:
    """The runs the automation sensor started after the crawl, once one of them has rebuilt rag_chunks."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        automated = [run for run in ui.runs() if {"key": "dagster/sensor_name", "value": "automation"} in run["tags"]]
        if any("rag_chunks" in _selected(run) and run["status"] == "SUCCESS" for run in automated):
            return automated
        time.sleep(2)
    pytest.fail(f"the automation sensor did not rebuild rag_chunks within {RUN_TIMEOUT_S} s")


def test_mebot_ui_keeps_its_history_in_the_dagster_home_it_was_given(ui, crawled):
    """The run the UI launched is recorded in the given home's run storage, with its own event log there."""
    history = ui.home / ".dagster_home" / "storage" / "history"
    with closing(sqlite3.connect(history / "runs.db")) as db:
        run_ids = {row[0] for row in db.execute("SELECT run_id FROM runs")}
    assert crawled["run_id"] in run_ids
    assert (history / "runs" / f"{crawled['run_id']}.db").is_file()  # the run's event log


def test_every_asset_has_a_description_a_group_and_a_kind(ui):
    nodes = ui.nodes()
    for name, node in nodes.items():
        assert node["description"] and node["groupName"] and node["kinds"], name
    groups = {name: node["groupName"] for name, node in nodes.items()}
    assert {
        "raw_pages": "ingest",
        "rag_chunks": "ingest",
        "chunk_embeddings": "index",
        "vector_index": "index",
    }.items() <= groups.items()
    assert {"qa_chunks": "qa", "synthetic_qa": "qa", "finetune_dataset": "finetune"}.items() <= groups.items()


def test_lineage_connects_the_stages(ui):
    nodes = ui.nodes()
    edges = {(dep["path"][-1], name) for name, node in nodes.items() for dep in node["dependencyKeys"]}
    assert {
        ("raw_pages", "rag_chunks"),
        ("rag_chunks", "chunk_embeddings"),
        ("chunk_embeddings", "vector_index"),
        ("raw_pages", "qa_chunks"),
        ("qa_chunks", "synthetic_qa"),
        ("synthetic_qa", "finetune_dataset"),
        ("finetune_dataset", "finetuned_models"),
    } <= edges


def test_jobs_the_recrawl_schedule_and_the_automation_sensor_are_there_and_running(ui):
    data = ui.query(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name }"
        " schedules { name scheduleState { status } } sensors { name sensorState { status } } } } } }"
    )
    (repository,) = data["repositoriesOrError"]["nodes"]
    assert {"ingest", "finetune", "evaluate"} <= {job["name"] for job in repository["jobs"]}
    assert {"name": "recrawl", "scheduleState": {"status": "RUNNING"}} in repository["schedules"]
    assert {"name": "automation", "sensorState": {"status": "RUNNING"}} in repository["sensors"]


def test_a_materialization_launched_over_graphql_succeeds(ui, crawled):
    assert crawled["status"] == "SUCCESS", ui.log.read_text()[-3000:]
    assert ui.nodes()["raw_pages"]["staleStatus"] == "FRESH"


def test_after_the_crawl_automation_rebuilds_the_rag_assets_and_never_starts_question_writing(ui, automated_chunks):
    started = set().union(*(_selected(run) for run in automated_chunks))
    assert "rag_chunks" in started
    assert not started & {"qa_chunks", "synthetic_qa", "finetune_dataset", "finetuned_models"}


def test_the_materialize_button_in_the_asset_graph_runs_the_selected_asset(ui, crawled):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{ui.url}/locations/{LOCATION}/asset-groups/qa")
            node = page.get_by_text("qa_chunks", exact=True).first
            node.wait_for(timeout=90_000)
            node.click()
            page.get_by_role("button", name="Materialize selected").click()
            toast = page.get_by_text(re.compile(r"Launched run \w+"))
            toast.wait_for(timeout=60_000)
            prefix = re.search(r"Launched run (\w+)", toast.inner_text()).group(1)
        finally:
            browser.close()
    (run,) = [run for run in ui.runs() if run["runId"].startswith(prefix)]
    assert _selected(run) == {"qa_chunks"}
    assert ui.wait_for_run(run["runId"]) == "SUCCESS"


def test_a_settings_edit_makes_its_reader_stale_after_a_code_location_reload(ui, automated_chunks):
    before = ui.nodes()
    assert before["rag_chunks"]["staleStatus"] == "FRESH"
    ui.config.write_text(ui.config.read_text().replace("chunk_tokens: 900", "chunk_tokens: 700"))
    data = ui.query(
        "mutation ($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {"
        " __typename ... on WorkspaceLocationEntry { loadStatus } } }",
        name=LOCATION,
    )
    assert data["reloadRepositoryLocation"]["__typename"] == "WorkspaceLocationEntry"
    deadline = time.monotonic() + 60
    while (nodes := ui.nodes())["rag_chunks"]["staleStatus"] != "STALE" and time.monotonic() < deadline:
        time.sleep(1)
    assert nodes["rag_chunks"]["staleStatus"] == "STALE"
    assert {cause["category"] for cause in nodes["rag_chunks"]["staleCauses"]} == {"CODE"}
    assert nodes["raw_pages"]["staleStatus"] == "FRESH"  # upstream of the edit: untouched
    # downstream turns stale only once rag_chunks is rebuilt with different data
    assert nodes["chunk_embeddings"]["staleStatus"] != "STALE"
