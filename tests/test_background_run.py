"""The background whole-graph run (tests/background_run.py): its users' modules last, pinned to one core, its
output and exit status returned as a foreground run's."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.background_run import BackgroundRun, DefaultRunPlugin, last_core


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


@pytest.mark.parametrize(("cores", "pinned"), [({0, 1}, {1}), ({0, 3, 5}, {5}), ({2}, None)])
def test_the_run_is_pinned_to_the_last_core_unless_there_is_only_one(monkeypatch, cores, pinned):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    assert last_core() == pinned


def test_a_background_run_returns_its_output_and_status_and_runs_on_one_core(tmp_path: Path):
    run = BackgroundRun(tmp_path)
    code = "import os, sys; print(sorted(os.sched_getaffinity(0))); print('oops', file=sys.stderr); sys.exit(3)"
    run.start([sys.executable, "-c", code], dict(os.environ))
    result = run.wait()
    assert result.returncode == 3 and result.stderr.strip() == "oops"
    expected = last_core() or os.sched_getaffinity(0)
    assert result.stdout.strip() == str(sorted(expected))
    assert run.wait() is result  # every user of the fixture gets the same run


def test_stop_ends_a_run_that_is_still_going(tmp_path: Path):
    run = BackgroundRun(tmp_path)
    run.start([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    run.stop()
    assert run.process is not None and run.process.poll() is not None
