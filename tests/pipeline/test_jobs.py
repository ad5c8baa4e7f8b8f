"""Jobs, the recrawl schedule and the automation policy (pipeline/jobs.py), as Dagster sees them."""

import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mebot.pipeline.jobs import RAG_PARTITION, automation_condition_for, parallel_executor, with_automation
from mebot.resources.settings import PROJECT_ROOT, Settings

MARKER_ENV = "MEBOT_TEST_SWEEP_MARKER"


def build_definitions(config: Path) -> dg.Definitions:
    # Imported here: the re-execution test's step processes import this module, and they need none of it.
    from mebot.pipeline.definitions import build_definitions

    return build_definitions(config)


def _keys(job: dg.JobDefinition) -> set[str]:
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def _group(defs: dg.Definitions, *groups: str) -> set[str]:
    graph = defs.resolve_asset_graph()
    return {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).group_name in groups}


def test_recrawl_schedule_runs_the_ingest_job_on_the_configured_cron(make_config):
    defs = build_definitions(make_config({"site": {"recrawl_cron": "15 4 * * 2"}}))
    schedule = defs.get_schedule_def("recrawl")
    assert schedule.cron_schedule == "15 4 * * 2"
    assert schedule.job_name == "ingest"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_ingest_job_covers_crawl_to_index_and_nothing_that_costs_money(make_config):
    defs = build_definitions(make_config())
    job = defs.resolve_job_def("ingest")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {"raw_pages", "rag_chunks", "chunk_embeddings", "vector_index"}


def test_finetune_job_runs_questions_to_models_on_the_multiprocess_executor_at_run_max_parallel(make_config):
    defs = build_definitions(make_config({"run": {"max_parallel": 3}}))
    job = defs.resolve_job_def("finetune")
    assert _keys(job) == {"qa_chunks", "synthetic_qa", "finetune_dataset", "finetuned_models"}
    assert job.partitions_def == defs.resolve_asset_graph().get(dg.AssetKey("finetuned_models")).partitions_def
    assert job.executor_def.name == "multiprocess_run_max_parallel"
    assert job.executor_def.config_schema.resolve_config({}).value["config"]["max_concurrent"] == 3


def test_evaluate_job_is_the_evaluation_group(make_config):
    defs = build_definitions(make_config())
    assert _keys(defs.resolve_job_def("evaluate")) == _group(defs, "evaluation")


def test_the_ui_runs_as_many_runs_at_once_as_mebot_run_uses_processes():
    instance_config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert instance_config["concurrency"]["runs"]["max_concurrent_runs"] == Settings().run.max_parallel


def test_question_writing_and_fine_tuning_never_start_on_their_own(make_config):
    defs = build_definitions(make_config())
    graph = defs.resolve_asset_graph()
    automated = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).automation_condition}
    assert not automated & _group(defs, "qa", "finetune")
    assert {"rag_chunks", "chunk_embeddings", "vector_index"} <= automated
    assert "raw_pages" not in automated  # the schedule starts the crawl
    sensor = defs.get_sensor_def("automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def _evaluation_graph() -> list[dg.AssetsDefinition]:
    """An index-like input and a per-model evaluation asset, with the policy applied as definitions.py does."""

    @dg.asset(group_name="index")
    def index_version(context: dg.AssetExecutionContext) -> dg.Output[int]:
        version = int(context.run.tags.get("version", "1"))
        return dg.Output(version, data_version=dg.DataVersion(str(version)))

    @dg.asset(group_name="evaluation", partitions_def=dg.StaticPartitionsDefinition([RAG_PARTITION, "e2-b4-lr0.5"]))
    def answers(index_version: int) -> int:
        return index_version

    return [with_automation(index_version), with_automation(answers)]


def test_a_changed_index_re_evaluates_only_the_rag_model(tmp_path):
    assets = _evaluation_graph()
    answers = dg.AssetKey("answers")
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, instance=instance, selection="index_version", tags={"version": "1"}).success
        first = dg.evaluate_automation_conditions(defs=assets, instance=instance)
        for partition in ("rag", "e2-b4-lr0.5"):
            assert dg.materialize(assets, instance=instance, selection="answers", partition_key=partition).success
        quiet = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=first.cursor)
        assert quiet.total_requested == 0
        assert dg.materialize(assets, instance=instance, selection="index_version", tags={"version": "1"}).success
        same = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=quiet.cursor)
        assert same.total_requested == 0  # same data version: nothing to do
        assert dg.materialize(assets, instance=instance, selection="index_version", tags={"version": "2"}).success
        changed = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=same.cursor)
        assert changed.get_requested_partitions(answers) == {RAG_PARTITION}


def test_roots_and_other_groups_get_no_automation_condition():
    assert automation_condition_for(dg.AssetSpec("raw_pages", group_name="ingest"), partitioned=False) is None
    assert automation_condition_for(dg.AssetSpec("synthetic_qa", group_name="qa", deps=["x"]), False) is None
    condition = automation_condition_for(dg.AssetSpec("rag_chunks", group_name="ingest", deps=["raw_pages"]), False)
    assert condition.get_label() == "inputs_changed"


# A sweep job as the finetune job is built (Dagster's multiprocess executor at run.max_parallel), over test assets,
# so that Dagster's own "re-execute from failure" can be checked on it.


@dg.asset
def sweep_input() -> int:
    return 1


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["good", "bad"]))
def sweep_point(context: dg.AssetExecutionContext, sweep_input: int) -> int:
    marker = Path(os.environ[MARKER_ENV])
    (marker.parent / f"ran-{context.partition_key}-{context.run_id}").touch()
    if context.partition_key == "bad" and not marker.exists():
        raise RuntimeError("sweep point bad failed")
    return sweep_input


def sweep_job() -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[sweep_input, sweep_point],
        jobs=[dg.define_asset_job("sweep", executor_def=parallel_executor(Settings()))],
    )
    return defs.resolve_job_def("sweep")


@pytest.mark.full  # Dagster's multiprocess executor, run twice
def test_re_execute_from_failure_repeats_only_the_failed_step(tmp_path, monkeypatch):
    marker = tmp_path / "fixed"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    job = dg.reconstructable(sweep_job)
    with dg.instance_for_test() as instance:
        failed_tags = {"dagster/partition": "bad"}
        with dg.execute_job(job, instance, tags=failed_tags) as failed:
            assert not failed.success
            assert {e.step_key for e in failed.all_events if e.is_step_success} == {"sweep_input"}
        marker.touch()
        options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        # the UI copies the parent run's tags (its partition) into the re-execution; the Python API needs them
        with dg.execute_job(job, instance, tags=failed_tags, reexecution_options=options) as retried:
            assert retried.success
            assert {e.step_key for e in retried.all_events if e.is_step_success} == {"sweep_point"}
    assert len(list(tmp_path.glob("ran-bad-*"))) == 2


@pytest.fixture(autouse=True)
def _no_marker_leak(monkeypatch):
    monkeypatch.delenv(MARKER_ENV, raising=False)
