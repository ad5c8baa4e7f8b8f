"""`mebot run`'s engine on a small graph of test assets (a root, two partitions where one fails, a per-partition
step after them, a summary over all partitions): the partitions of a wave run at the same time in separate
processes, a failed one does not stop the other, what depends on it is skipped, and a re-run repeats only what
failed. The real assets' waves are exercised by tests/pipeline/test_cli.py."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline.run_waves import DefinitionsRef, plan_waves, run_waves

PARTITIONS = dg.StaticPartitionsDefinition(["good", "bad"])
WAIT_FOR_OTHER_S = 90


def wave_defs(marks_dir: str) -> dg.Definitions:
    """The test graph; worker processes rebuild it from this module, as `mebot run` rebuilds the real one."""
    marks = Path(marks_dir)

    @dg.asset
    def source() -> dg.Output[int]:
        (marks / f"source-{time.time()}").touch()
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


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The graph run once with run.max_parallel 2: (report, progress lines, marks dir, instance)."""
    marks = tmp_path_factory.mktemp("waves")
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        report = run_waves(
            DefinitionsRef(f"{__name__}:wave_defs", (str(marks),)),
            dg.AssetSelection.all(),
            instance,
            max_parallel=2,
            out=lines.append,
        )
        yield report, lines, marks, instance


def test_waves_follow_the_dependencies_including_through_unselected_assets(make_config):
    graph = wave_defs("/nonexistent").resolve_asset_graph()
    waves = plan_waves(graph, graph.get_all_asset_keys())
    assert [[key.to_user_string() for key in wave] for wave in waves] == [
        ["source"],
        ["trained"],
        ["scored"],
        ["summary"],
    ]
    from pipeline.definitions import build_definitions  # here: workers import this module, keep it light

    real = build_definitions(make_config()).resolve_asset_graph()
    skipping = plan_waves(real, [dg.AssetKey("raw_pages"), dg.AssetKey("vector_index")])
    assert [[key.to_user_string() for key in wave] for wave in skipping] == [["raw_pages"], ["vector_index"]]


def test_the_partitions_of_a_wave_run_at_the_same_time_in_separate_processes(first_run):
    report, lines, marks, _ = first_run
    by_label = {outcome.task.label: outcome for outcome in report.outcomes}
    # Each partition waits until the other has started; one run alone would fail with TimeoutError instead.
    assert by_label["trained[good]"].success
    assert not any("ran alone" in error for error in by_label["trained[bad]"].errors)
    good = json.loads((marks / "started-good").read_text())
    bad = json.loads((marks / "started-bad").read_text())
    assert len({good["pid"], bad["pid"], os.getpid()}) == 3
    assert "wave 2/4: trained - 2 run(s), 2 at once" in lines


def test_a_failed_partition_does_not_stop_the_other_and_its_downstream_is_skipped(first_run):
    report, lines, _, _ = first_run
    assert not report.success
    by_label = {outcome.task.label: outcome for outcome in report.outcomes}
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


def test_a_rerun_after_the_fix_runs_only_the_failed_partition_its_downstream_and_the_root(first_run):
    _, _, marks, instance = first_run
    (marks / "fixed").touch()
    lines: list[str] = []
    report = run_waves(
        DefinitionsRef(f"{__name__}:wave_defs", (str(marks),)),
        dg.AssetSelection.all(),
        instance,
        max_parallel=2,
        out=lines.append,
    )
    assert report.success, [outcome.errors for outcome in report.outcomes]
    assert sorted(outcome.task.label for outcome in report.outcomes) == [
        "scored[bad]",
        "source",
        "summary",
        "trained[bad]",
    ]
    assert report.skipped_fresh == ["trained[good]", "scored[good]"]
    assert len(list(marks.glob("scored-good-*"))) == 1  # not repeated
    assert _materialized(instance, "summary") and _materialized(instance, "scored", "bad")


def test_fresh_assets_are_skipped_unless_forced(tmp_path):
    (tmp_path / "fixed").touch()
    ref = DefinitionsRef(f"{__name__}:wave_defs", (str(tmp_path),))
    with dg.instance_for_test() as instance:
        # one at a time: the runs stay in this process
        assert run_waves(ref, dg.AssetSelection.all(), instance, max_parallel=1, out=lambda line: None).success
        quiet = run_waves(ref, dg.AssetSelection.assets("scored"), instance, max_parallel=1, out=lambda line: None)
        assert quiet.success and quiet.runs == 0
        assert sorted(quiet.skipped_fresh) == ["scored[bad]", "scored[good]"]
        forced = run_waves(
            ref, dg.AssetSelection.assets("scored"), instance, max_parallel=1, force=True, out=lambda line: None
        )
        assert forced.success
        assert sorted(outcome.task.label for outcome in forced.outcomes) == ["scored[bad]", "scored[good]"]


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
        report = run_waves(
            DefinitionsRef(f"{__name__}:checked_defs"),
            dg.AssetSelection.all(),
            instance,
            max_parallel=1,
            out=lines.append,
        )
    assert not report.success
    assert "  after: skipped, its input loaded failed" in lines
    assert [outcome.task.label for outcome in report.outcomes] == ["loaded"]
