"""The background whole-graph run (tests/background_run.py): its users' modules last, pinned to one core, its
output and exit status returned as a foreground run's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.background_run import BackgroundRun, DefaultRunPlugin, split_cores

TEXT = {"capture_output": True, "text": True, "timeout": 60}


def _item(module: str, *fixtures: str) -> SimpleNamespace:
    return SimpleNamespace(module=SimpleNamespace(__name__=module), fixturenames=list(fixtures), name=module)


def test_modules_that_use_the_run_move_last_in_their_order_and_the_rest_keep_theirs():
    items = [
        _item("a", "tmp_path"),
        _item("e2e", "default_run"),
        _item("e2e", "tmp_path"),  # same module, not a user itself: moves with it
        _item("b"),
        _item("server", "built", "default_run"),
        _item("c", "tmp_path"),
    ]
    ordered = list(items)
    DefaultRunPlugin().pytest_collection_modifyitems(ordered)
    assert [item.module.__name__ for item in ordered] == ["a", "b", "c", "e2e", "e2e", "server"]
    assert ordered[3] is items[1] and ordered[4] is items[2]


def test_nothing_moves_when_no_test_uses_the_run():
    items = [_item("b"), _item("a", "tmp_path")]
    ordered = list(items)
    DefaultRunPlugin().pytest_collection_modifyitems(ordered)
    assert ordered == items


@pytest.mark.parametrize(
    ("cores", "split"), [({0, 1}, ({1}, {0})), ({0, 3, 5}, ({5}, {0, 3})), ({2}, None)], ids=["2", "3", "1"]
)
def test_the_run_takes_the_last_core_and_the_tests_the_others_unless_there_is_only_one(monkeypatch, cores, split):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    assert split_cores() == split


def test_a_background_run_returns_its_output_and_status(tmp_path: Path):
    run = BackgroundRun(tmp_path)
    run.start([sys.executable, "-c", "import sys; print('done'); print('oops', file=sys.stderr); sys.exit(3)"], {})
    result = run.wait()
    assert (result.returncode, result.stdout, result.stderr) == (3, "done\n", "oops\n")
    assert run.wait() is result  # every user of the fixture gets the same run


@pytest.mark.skipif(split_cores() is None, reason="one core: nothing to split")
def test_the_run_and_the_tests_have_their_own_cores_until_it_ends(tmp_path: Path):
    before = os.sched_getaffinity(0)
    run_core, test_cores = split_cores()
    run = BackgroundRun(tmp_path)
    try:
        run.start([sys.executable, "-c", "import os, time; print(sorted(os.sched_getaffinity(0))); time.sleep(1)"], {})
        assert os.sched_getaffinity(0) == test_cores
        mine = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], **TEXT)
        assert mine.stdout.strip() == str(sorted(test_cores))  # what a test starts meanwhile
        run.give_back_core()  # still running: kept
        assert os.sched_getaffinity(0) == test_cores
        assert run.wait().stdout.strip() == str(sorted(run_core))
        assert os.sched_getaffinity(0) == before
    finally:
        run.stop()
        os.sched_setaffinity(0, before)


def test_stop_ends_a_run_that_is_still_going_and_gives_the_core_back(tmp_path: Path):
    before = os.sched_getaffinity(0)
    run = BackgroundRun(tmp_path)
    run.start([sys.executable, "-c", "import time; time.sleep(60)"], {})
    run.stop()
    assert run.process is not None and run.process.poll() is not None
    assert os.sched_getaffinity(0) == before
