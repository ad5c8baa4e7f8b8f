"""The deployment switch (pipeline/deploy/): MEBOT_DEPLOY unset keeps the embedded default exactly; `celery`
changes the instance file, the executor of finetune/evaluate and the LLM cache's home, and nothing else; a
command's budget scope reaches its runs (`mebot sweep --from-failure` too). No server is started here
(tests/system/ runs the deployment for real)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mebot.pipeline.cli import main
from mebot.pipeline.definitions import build_definitions
from mebot.pipeline.deploy import (
    BROKER_ENV_VAR,
    CELERY_APP_SETTINGS,
    CELERY_HOME,
    DEPLOY_ENV_VAR,
    POSTGRES_URL_ENV_VAR,
    DeploymentError,
    active_deployment,
)
from mebot.pipeline.deploy.sweep import COMMAND_TAGS, budget_scope_tags, reexecute_from_failure
from mebot.pipeline.deploy.worker import worker_command
from mebot.resources.chat import BUDGET_SCOPE_ENV_VAR, BUDGET_SCOPE_TAG
from mebot.resources.settings import PROJECT_ROOT

PG = "postgresql+psycopg2://mebot:secret@db-host:5432/mebot"
BROKER = "redis://broker-host:6379/0"
FIXED_ENV = "MEBOT_TEST_SWEEP_STEP_FIXED"  # a file: the flaky step fails until it exists


@pytest.fixture
def celery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEPLOY_ENV_VAR, "celery")
    monkeypatch.setenv(POSTGRES_URL_ENV_VAR, PG)
    monkeypatch.setenv(BROKER_ENV_VAR, BROKER)


@pytest.fixture(autouse=True)
def _no_deployment_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (DEPLOY_ENV_VAR, POSTGRES_URL_ENV_VAR, BROKER_ENV_VAR):
        monkeypatch.delenv(name, raising=False)


def _executor_names(defs: dg.Definitions) -> dict[str, str]:
    return {name: defs.resolve_job_def(name).executor_def.name for name in ("ingest", "finetune", "evaluate")}


def test_unset_is_the_embedded_default(make_config) -> None:
    assert active_deployment().name == "local" and active_deployment().dagster_home is None
    defs = build_definitions(make_config())
    assert _executor_names(defs)["finetune"] == _executor_names(defs)["evaluate"] == "multiprocess_run_max_parallel"
    assert defs.resources["chat_model"].cache_url == ""


def test_celery_sends_finetune_and_evaluate_to_workers_and_the_cache_to_postgres(make_config, celery_env) -> None:
    defs = build_definitions(make_config())
    names = _executor_names(defs)
    assert names["finetune"] == names["evaluate"] == "celery_mebot"
    assert names["ingest"] != "celery_mebot"  # the crawl and the index stay on the machine that launches them
    config = defs.resolve_job_def("finetune").executor_def.config_schema.resolve_config({}).value["config"]
    assert config["broker"] == config["backend"] == BROKER  # read from the environment when a run starts
    assert config["config_source"]["task_acks_late"] is True
    assert config["config_source"]["worker_prefetch_multiplier"] == 1
    # the URL is read where the cache is opened (each worker's environment), never stored in the definitions
    assert defs.resources["chat_model"].cache_url == dg.EnvVar(POSTGRES_URL_ENV_VAR)


def test_the_celery_instance_file_keeps_every_storage_in_postgres_from_the_environment() -> None:
    instance = yaml.safe_load((CELERY_HOME / "dagster.yaml").read_text(encoding="utf-8"))
    assert instance["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV_VAR}}}
    assert instance["telemetry"] == {"enabled": False}
    root = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text(encoding="utf-8"))
    assert "sqlite" in root["storage"]  # the embedded default's instance is untouched


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({DEPLOY_ENV_VAR: "kubernetes"}, "is not a deployment"),
        ({DEPLOY_ENV_VAR: "celery"}, f"needs {POSTGRES_URL_ENV_VAR} and {BROKER_ENV_VAR}"),
        ({DEPLOY_ENV_VAR: "celery", POSTGRES_URL_ENV_VAR: PG}, f"needs {BROKER_ENV_VAR}"),
        (
            {DEPLOY_ENV_VAR: "celery", POSTGRES_URL_ENV_VAR: "postgresql://db/mebot", BROKER_ENV_VAR: BROKER},
            "must start with postgresql+psycopg2://",
        ),
    ],
)
def test_a_deployment_that_cannot_work_says_what_is_missing(monkeypatch, make_config, env, message) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DeploymentError, match=re.escape(message)):
        build_definitions(make_config())


def test_the_worker_is_the_celery_cli_on_the_executors_queue_one_step_at_a_time() -> None:
    command = worker_command("gpu-box")
    assert command[1:5] == ["-m", "celery", "-A", "mebot.pipeline.deploy.worker"]
    assert command[command.index("-Q") + 1] == "dagster"
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("--hostname") + 1] == "gpu-box@%h"
    assert CELERY_APP_SETTINGS["task_reject_on_worker_lost"] is False  # a step that kills its process: no loop


def test_mebot_worker_refuses_without_the_celery_deployment(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEBOT_DAGSTER_HOME", str(tmp_path))
    assert main(["worker"]) == 2
    assert f"set {DEPLOY_ENV_VAR}=celery" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_run_command_opens_one_budget_scope_for_all_its_processes(command, tmp_path: Path, monkeypatch) -> None:
    from mebot.pipeline.supervise import SUPERVISED_ENV
    from mebot.resources.chat import BUDGET_SCOPE_ENV_VAR

    monkeypatch.setenv("MEBOT_DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv(SUPERVISED_ENV, "1")  # this process is the one that would start the workers
    monkeypatch.delenv(BUDGET_SCOPE_ENV_VAR, raising=False)
    main([command, "--select", "key:no_such_asset"])  # refused after the environment is prepared
    scope = os.environ[BUDGET_SCOPE_ENV_VAR]  # what every worker process it starts inherits
    assert scope.startswith(f"{command}-")
    monkeypatch.setenv(BUDGET_SCOPE_ENV_VAR, "shared-by-hand")  # set by the user: several commands share it
    main([command, "--select", "key:no_such_asset"])
    assert os.environ[BUDGET_SCOPE_ENV_VAR] == "shared-by-hand"


@dg.op
def first_step() -> int:
    return 1


@dg.op
def flaky_step(value: int) -> int:
    if not Path(os.environ[FIXED_ENV]).exists():
        raise RuntimeError("the flaky step failed")
    return value


@dg.job(executor_def=dg.in_process_executor)
def flaky_job() -> None:
    flaky_step(first_step())


def test_from_failure_reexecution_keeps_the_failed_runs_budget_scope(tmp_path: Path, monkeypatch) -> None:
    """`mebot sweep --from-failure RUN_ID` is a command of its own, with a budget scope of its own, but the run it
    starts spends in the failed run's scope: the steps (on any worker) read it from the run's tag."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(FIXED_ENV, str(tmp_path / "fixed"))
    monkeypatch.setenv(BUDGET_SCOPE_ENV_VAR, "sweep-of-the-failed-run")
    tags = {**COMMAND_TAGS, **budget_scope_tags()}  # as run_partition tags each run of a sweep
    with dg.DagsterInstance.get() as instance:
        with dg.execute_job(dg.reconstructable(flaky_job), instance, tags=tags) as failed:
            assert not failed.success
    (tmp_path / "fixed").touch()

    monkeypatch.setenv(BUDGET_SCOPE_ENV_VAR, "sweep-from-failure")  # the re-executing command's own scope
    outcome = reexecute_from_failure(failed.run_id)
    assert outcome.success
    with dg.DagsterInstance.get() as instance:
        rerun = instance.get_run_by_id(outcome.run_id)
        steps = {e.step_key for e in instance.all_logs(outcome.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
    assert rerun.parent_run_id == failed.run_id and steps == {"flaky_step"}  # from the failure, not the start
    assert rerun.tags[BUDGET_SCOPE_TAG] == "sweep-of-the-failed-run"
    assert rerun.tags["mebot/command"] == "sweep"
