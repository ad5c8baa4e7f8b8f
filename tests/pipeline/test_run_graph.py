"""`mebot run`'s engine on a small graph of test assets (a root, two partitions where one fails, a per-partition
step after them, a summary over all partitions): partitions run at the same time in separate worker processes, a
failed one does not stop the other, what depends on it is skipped, a re-run repeats only what failed, and the
thread share follows the number of runs at once. The real assets run by tests/pipeline/test_cli.py."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from mebot.pipeline.run_graph import DefinitionsRef, Unit, check_inputs, plan_units, run_graph
from mebot.resources.cpu_share import automatic_threads, cpu_cores

PARTITIONS = dg.StaticPartitionsDefinition(["good", "bad"])
WAIT_FOR_OTHER_S = 90


def graph_defs(marks_dir: str) -> dg.Definitions:
    """The test graph; worker processes rebuild it from this module, as `mebot run` rebuilds the real one."""
    marks = Path(marks_dir)

    @dg.asset
    def source() -> dg.Output[int]:
        (marks / f"source-{time.time()}").write_text(str(automatic_threads()))
        return dg.Output(1, data_version=dg.DataVersion("1"))  # like the crawl: the same content, the same version

    @dg.asset(partitions_def=PARTITIONS)
    def trained(context: dg.AssetExecutionContext, source: int) -> int:
        key = context.partition_key
        fixed = (marks / "fixed").exists()
        (marks / f"started-{key}").write_text(json.dumps({"at": time.time(), "pid": os.getpid()}))
        # Before the fix both partitions wait for each other: only runs that overlap in time get past this.
        deadline = time.time() + WAIT_FOR_OTHER_S
        while not fixed and not all((marks / f"started-{k}").exists() for k in PARTITIONS.get_partition_keys()):
            if time.time() > deadline:
                raise TimeoutError(f"partition {key} ran alone: the other never started while it waited")
            time.sleep(0.1)
        (marks / f"threads-{key}").write_text(str(automatic_threads()))  # both running now
        while not fixed and not all((marks / f"threads-{k}").exists() for k in PARTITIONS.get_partition_keys()):
            if time.time() > deadline:
                raise TimeoutError(f"partition {key}: the other never read its thread share")
            time.sleep(0.1)  # neither ends (which changes the share) before the other has read its share
        if key == "bad" and not fixed:
            raise RuntimeError("partition bad is broken")
        return source

    @dg.asset(partitions_def=PARTITIONS)
    def scored(context: dg.AssetExecutionContext, trained: int) -> int:
        (marks / f"scored-{context.partition_key}-{time.time()}").touch()
        return trained + 1

    @dg.asset
    def summary(scored: dict[str, int]) -> int:
        return sum(scored.values())

    return dg.Definitions(
        assets=[source, trained, scored, summary],
        resources={"io_manager": dg.FilesystemIOManager(base_dir=str(marks / "store"))},
    )


def _materialized(instance: dg.DagsterInstance, name: str, partition: str | None = None) -> bool:
    key = dg.AssetKey(name)
    if partition is None:
        return instance.get_latest_materialization_event(key) is not None
    return partition in instance.get_materialized_partitions(key)


def run_test_graph(marks: Path, instance: dg.DagsterInstance) -> tuple:
    """The whole test graph with run.max_parallel 2: (report, progress lines)."""
    lines: list[str] = []
    ref = DefinitionsRef(f"{__name__}:graph_defs", (str(marks),))
    return run_graph(ref, dg.AssetSelection.all(), instance, max_parallel=2, out=lines.append), lines


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The graph run once with run.max_parallel 2: (report, progress lines, marks dir, instance)."""
    marks = tmp_path_factory.mktemp("graph")
    with dg.instance_for_test() as instance:
        report, lines = run_test_graph(marks, instance)
        yield report, lines, marks, instance


def test_units_follow_the_dependencies_including_through_unselected_assets():
    graph = graph_defs("/nonexistent").resolve_asset_graph()
    with dg.instance_for_test() as instance:
        plan = plan_units(graph, graph.get_all_asset_keys(), instance)
        skipping = plan_units(graph, [dg.AssetKey("source"), dg.AssetKey("summary")], instance)
    assert [unit.label for unit in plan.units] == [
        "source",
        "trained[bad]",
        "trained[good]",
        "scored[bad]",
        "scored[good]",
        "summary",
    ]
    assert plan.inputs[Unit("scored", "good")] == [Unit("trained", "good")]  # the partition's own input only
    assert plan.inputs[Unit("summary")] == [Unit("scored", "bad"), Unit("scored", "good")]
    assert plan.height[Unit("source")] == 4 and plan.height[Unit("summary")] == 1
    assert plan.roots == {Unit("source")}
    assert skipping.inputs[Unit("summary")] == [Unit("source")]  # through the unselected trained and scored


def test_the_real_graph_trains_first_and_never_makes_rag_answers_wait_for_training(make_config):
    from mebot.pipeline.definitions import build_definitions  # here: workers import this module, keep it light

    defs = build_definitions(make_config())
    graph = defs.resolve_asset_graph()
    with dg.instance_for_test() as instance:
        plan = plan_units(graph, graph.get_all_asset_keys(), instance, check_inputs(defs))
    sweep = sorted(unit.partition for unit in plan.units if unit.name == "finetuned_models")
    assert len(sweep) == 2
    rag_inputs = {unit.name for unit in plan.inputs[Unit("model_answers", "rag")]}
    assert "finetuned_models" not in rag_inputs and {"synthetic_qa", "vector_index"} <= rag_inputs
    assert plan.inputs[Unit("model_answers", sweep[0])] == sorted(
        {Unit("finetuned_models", sweep[0]), *plan.inputs[Unit("model_answers", "rag")]}
    )
    # judge_scores' validity check reads judge_validity, so every judge_scores run waits for it
    assert Unit("judge_validity") in plan.inputs[Unit("judge_scores", "rag")]
    # the longest chain of work goes first: the training files before the RAG answers
    assert plan.height[Unit("finetune_dataset")] > plan.height[Unit("model_answers", "rag")]


@pytest.mark.full  # worker processes of `mebot run` (seconds each)
def test_partitions_run_at_the_same_time_in_separate_processes_sharing_the_cores(first_run):
    report, lines, marks, _ = first_run
    by_label = {outcome.unit.label: outcome for outcome in report.outcomes}
    # Each partition waits until the other has started; one run alone would fail with TimeoutError instead.
    assert by_label["trained[good]"].success
    assert not any("ran alone" in error for error in by_label["trained[bad]"].errors)
    good = json.loads((marks / "started-good").read_text())
    bad = json.loads((marks / "started-bad").read_text())
    assert len({good["pid"], bad["pid"], os.getpid()}) == 3
    assert "start trained[bad]" in lines and "start trained[good]" in lines
    # alone, the root had every core; side by side, the two partitions split them
    (source_threads,) = [int(path.read_text()) for path in marks.glob("source-*")]
    assert source_threads == cpu_cores()
    assert int((marks / "threads-good").read_text()) == int((marks / "threads-bad").read_text())
    assert int((marks / "threads-good").read_text()) == max(1, cpu_cores() // 2)


@pytest.mark.full  # worker processes of `mebot run` (seconds each)
def test_a_failed_partition_does_not_stop_the_other_and_its_downstream_is_skipped(first_run):
    report, lines, _, _ = first_run
    assert not report.success
    by_label = {outcome.unit.label: outcome for outcome in report.outcomes}
    assert by_label["trained[good]"].success and by_label["scored[good]"].success
    assert not by_label["trained[bad]"].success
    assert any("partition bad is broken" in error for error in by_label["trained[bad]"].errors)
    assert "  scored[bad]: skipped, its input trained[bad] failed" in lines
    assert "  summary: skipped, its input scored[bad] failed" in lines
    assert report.skipped_failed == [
        "scored[bad]: skipped, its input trained[bad] failed",
        "summary: skipped, its input scored[bad] failed",
    ]
    assert "scored[bad]" not in by_label and "summary" not in by_label


@pytest.mark.full  # worker processes of `mebot run` (seconds each)
def test_a_rerun_after_the_fix_runs_only_the_failed_partition_its_downstream_and_the_root(first_run):
    _, _, marks, instance = first_run
    (marks / "fixed").touch()
    report, _ = run_test_graph(marks, instance)
    assert report.success, [outcome.errors for outcome in report.outcomes]
    assert sorted(outcome.unit.label for outcome in report.outcomes) == [
        "scored[bad]",
        "source",
        "summary",
        "trained[bad]",
    ]
    assert report.skipped_fresh == ["trained[good]", "scored[good]"]
    assert len(list(marks.glob("scored-good-*"))) == 1  # not repeated
    assert _materialized(instance, "summary") and _materialized(instance, "scored", "bad")


@pytest.mark.full  # worker processes of `mebot run` (seconds each)
def test_fresh_assets_are_skipped_unless_forced(tmp_path):
    (tmp_path / "fixed").touch()
    ref = DefinitionsRef(f"{__name__}:graph_defs", (str(tmp_path),))
    with dg.instance_for_test() as instance:
        # one at a time: the runs stay in this process
        assert run_graph(ref, dg.AssetSelection.all(), instance, max_parallel=1, out=lambda line: None).success
        quiet = run_graph(ref, dg.AssetSelection.assets("scored"), instance, max_parallel=1, out=lambda line: None)
        assert quiet.success and quiet.runs == 0
        assert sorted(quiet.skipped_fresh) == ["scored[bad]", "scored[good]"]
        forced = run_graph(
            ref, dg.AssetSelection.assets("scored"), instance, max_parallel=1, force=True, out=lambda line: None
        )
        assert forced.success
        assert sorted(outcome.unit.label for outcome in forced.outcomes) == ["scored[bad]", "scored[good]"]


def checked_defs() -> dg.Definitions:
    """An asset whose blocking check fails, and one that reads it."""

    @dg.asset(check_specs=[dg.AssetCheckSpec("never_passes", asset="loaded", blocking=True)])
    def loaded():
        yield dg.Output(1)
        yield dg.AssetCheckResult(check_name="never_passes", passed=False)

    @dg.asset
    def after(loaded: int) -> int:
        return loaded

    return dg.Definitions(assets=[loaded, after])


def test_what_reads_an_asset_whose_blocking_check_failed_is_skipped():
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        report = run_graph(
            DefinitionsRef(f"{__name__}:checked_defs"),
            dg.AssetSelection.all(),
            instance,
            max_parallel=1,
            out=lines.append,
        )
    assert not report.success
    assert "  after: skipped, its input loaded failed" in lines
    assert [outcome.unit.label for outcome in report.outcomes] == ["loaded"]


def dying_defs(signal_name: str) -> dg.Definitions:
    """One asset whose process dies by `signal_name` (as a llama.cpp build with refused instructions dies)."""

    @dg.asset
    def crashes() -> int:
        import signal

        os.kill(os.getpid(), getattr(signal, signal_name))
        return 1

    return dg.Definitions(assets=[crashes])


@pytest.mark.parametrize(("signal_name", "expected"), [("SIGILL", "CPU instructions"), ("SIGSEGV", "native code")])
def test_a_worker_killed_by_a_signal_is_reported_with_the_signal_name(signal_name: str, expected: str):
    with dg.instance_for_test() as instance:
        ref = DefinitionsRef(f"{__name__}:dying_defs", (signal_name,))
        report = run_graph(ref, dg.AssetSelection.all(), instance, max_parallel=2, out=lambda line: None)
    assert not report.success
    (outcome,) = report.outcomes
    assert any(f"died by {signal_name}" in error and expected in error for error in outcome.errors), outcome.errors
    assert not any("out of memory" in error for error in outcome.errors)
