"""One writer per data folder (issue 25, item 7): a `mebot run` holds the data folder's run lock
(resources/run_lock.py); a second one, or one started while another Dagster run of its assets is in progress,
stops at once saying which; the recrawl schedule skips its tick while the folder is held. The holder is a real
second process; the kernel drops its lock however it ends."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from mebot.pipeline.jobs import recrawl_schedule
from mebot.pipeline.run_graph import RUN_TAGS, DefinitionsRef, run_graph
from mebot.resources.run_lock import DataFolderBusy, RunLock, lock_holder
from mebot.resources.settings import Settings

HOLD = """
import sys, time
from mebot.resources.run_lock import RunLock
lock = RunLock(sys.argv[1], "mebot run").acquire()
print("held", flush=True)
time.sleep(120)
"""


def tiny_defs(data_dir: str) -> dg.Definitions:
    @dg.asset
    def crawled() -> int:
        return 1

    return dg.Definitions(assets=[crawled], resources={"io_manager": dg.FilesystemIOManager(base_dir=data_dir)})


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the data folder's run lock."""
    data = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(data)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield data, process
    process.kill()
    process.wait()


def run_tiny(data: Path, instance: dg.DagsterInstance) -> tuple:
    lines: list[str] = []
    report = run_graph(
        DefinitionsRef(f"{__name__}:tiny_defs", (str(data),)),
        dg.AssetSelection.all(),
        instance,
        max_parallel=1,
        out=lines.append,
    )
    return report, "\n".join(lines)


def test_a_second_mebot_run_on_the_same_data_folder_stops_with_a_clear_message(holder, capsys):
    data, process = holder
    with dg.instance_for_test() as instance:
        report, lines = run_tiny(data, instance)
        assert not report.success and report.runs == 0
        assert f"is being materialized by mebot run (pid {process.pid}, since " in lines
        assert "wait for it to finish" in capsys.readouterr().err
        assert instance.get_latest_materialization_event(dg.AssetKey("crawled")) is None

        process.kill()  # however the holder ends, its lock goes with it
        process.wait()
        report, _ = run_tiny(data, instance)
        assert report.success and report.runs == 1
    assert lock_holder(data) is None  # released at the end


def test_mebot_run_stops_while_another_dagster_run_of_its_assets_is_in_progress(tmp_path: Path):
    data = tmp_path / "data"
    with dg.instance_for_test() as instance:
        ours = DagsterRun(job_name="__ASSET_JOB", run_id="a" * 36, status=dg.DagsterRunStatus.STARTED, tags=RUN_TAGS)
        instance.add_run(ours)  # a `mebot run` killed mid-run: not in the way
        other = DagsterRun(
            job_name="ingest",
            run_id="b" * 36,
            status=dg.DagsterRunStatus.STARTED,
            asset_selection=frozenset({dg.AssetKey("crawled")}),
        )
        instance.add_run(other)
        report, lines = run_tiny(data, instance)
        assert not report.success and report.runs == 0
        assert "another Dagster run materializes these assets now: ingest (run bbbbbbbb, started)" in lines
        instance.report_run_canceled(other)
        report, _ = run_tiny(data, instance)
        assert report.success


def test_the_lock_names_its_holder_and_refuses_a_second_holder(tmp_path: Path):
    with RunLock(tmp_path, "mebot run"):
        assert lock_holder(tmp_path).startswith("mebot run (pid ")
        with pytest.raises(DataFolderBusy, match=r"being materialized by mebot run \(pid \d+"):
            RunLock(tmp_path, "mebot run").acquire()
    assert lock_holder(tmp_path) is None
    assert lock_holder(tmp_path / "never-used") is None


def test_the_recrawl_schedule_skips_its_tick_while_a_run_holds_the_data_folder(holder):
    data, process = holder
    schedule = recrawl_schedule(Settings(), data)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance)
        skipped = schedule.evaluate_tick(context)
        assert not skipped.run_requests
        assert f"mebot run (pid {process.pid}" in skipped.skip_message
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while lock_holder(data) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests) == 1
