"""The session's whole-graph run (the `default_run` fixture), started in the background.

`mebot run` on the sample site takes about three minutes, most of it one busy core, and a dozen end-to-end and
server tests read what it builds. Waiting for it inside the first test that asks would leave the second core idle
for those minutes, so this plugin (registered by tests/conftest.py) starts it as soon as the session's tests are
known — only when a selected test uses `default_run` — pinned to the last core, keeps the tests (and what they
start) off that core until it ends, and moves the test modules that use it to the end of the session: the rest of
the suite runs beside it, and by the time those modules start the run has usually finished. The cores are split,
not shared: llama.cpp's threads spin-wait for each other, and a test's `mebot run` sized to both cores beside the
pinned run took 140 s instead of 52. The fixture waits for it and returns what a foreground run would have:
(result, data dir). A session that ends early (a failure with -x, Ctrl-C) stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import E2E_MAX_PASSAGES, e2e_golden_file, write_settings

FIXTURE = "default_run"
TIMEOUT_S = 1500


def e2e_overrides(root: Path) -> dict:
    """The project's own settings, sized down so the whole graph (questions, the two-point sweep, evaluation)
    builds in minutes: no crawl delay, any free port, fewer passages, two training steps, two test questions."""
    return {
        "site": {"download_delay": 0, "local_port": 0},
        "qa": {"max_passages": E2E_MAX_PASSAGES},
        # greedy fine-tuned answers: the same question gives the same answer, with or without the adapter
        "finetune": {"local": {"max_steps": 2, "max_seq_tokens": 256}, "answer_temperature": 0.0},
        "eval": {"max_questions": 2, "validity_sample": 2, "golden_path": str(e2e_golden_file(root))},
    }


def split_cores() -> tuple[set[int], set[int]] | None:
    """(the background run's core, the tests' cores): the highest core this process may use for the run, the
    others for the tests; None on one core or off Linux (nothing pinned)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    return ({cores[-1]}, set(cores[:-1])) if len(cores) > 1 else None


def uses_run(item: pytest.Item) -> bool:
    return FIXTURE in getattr(item, "fixturenames", ())


def module_name(item: pytest.Item) -> str:
    module = getattr(item, "module", None)
    return module.__name__ if module is not None else ""


@dataclass
class BackgroundRun:
    """One `mebot run` into `root/data`, its output in files beside it (a pipe would fill and stall it)."""

    root: Path
    process: subprocess.Popen | None = None
    result: subprocess.CompletedProcess | None = None
    cores_to_restore: set[int] | None = None  # the tests' cores before the run took one

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self, args: list[str], env: dict[str, str]) -> None:
        split = split_cores()
        core = split[0] if split else None
        with open(self.root / "run.stdout", "w") as stdout, open(self.root / "run.stderr", "w") as stderr:
            self.process = subprocess.Popen(  # the child keeps its own copies of the two files
                args,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=self.root,
                # one core: mebot run sizes its threads to its affinity, so it never spins against the tests' core
                preexec_fn=(lambda: os.sched_setaffinity(0, core)) if core else None,
            )
        if split:  # what the tests start from now on inherits the other cores
            self.cores_to_restore = os.sched_getaffinity(0)
            os.sched_setaffinity(0, split[1])

    def give_back_core(self) -> None:
        """Once the run has ended, the tests may use every core again."""
        if self.cores_to_restore is not None and (self.process is None or self.process.poll() is not None):
            os.sched_setaffinity(0, self.cores_to_restore)
            self.cores_to_restore = None

    def wait(self) -> subprocess.CompletedProcess:
        if self.result is None:
            assert self.process is not None, "wait() before start()"
            try:
                returncode = self.process.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                returncode = self.process.wait()
            self.give_back_core()
            out, err = ((self.root / name).read_text(errors="replace") for name in ("run.stdout", "run.stderr"))
            self.result = subprocess.CompletedProcess(self.process.args, returncode, out, err)
        return self.result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.give_back_core()


class DefaultRunPlugin:
    """Starts the background run when the selected tests need it and orders its users last."""

    def __init__(self) -> None:
        self.run: BackgroundRun | None = None

    @pytest.hookimpl(trylast=True)  # after -m and -k deselection: only the tests that will run count
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # whole modules move, so a module's own fixtures are set up once
        late = {module_name(item) for item in items if uses_run(item)}
        items.sort(key=lambda item: module_name(item) in late)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.config.option.collectonly:
            return
        if any(uses_run(item) for item in session.items):
            # pytest's own tmp_path_factory: the run's folder sits with the session's other tmp folders
            root = session.config._tmp_path_factory.mktemp("e2e")  # noqa: SLF001
            config = write_settings(root / "mebot.yaml", e2e_overrides(root))
            self.run = BackgroundRun(root)
            env = {**os.environ, "MEBOT_DATA_DIR": str(self.run.data), "MEBOT_DAGSTER_HOME": str(root / "home")}
            self.run.start([sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "run"], env)

    def pytest_runtest_setup(self) -> None:
        if self.run is not None:
            self.run.give_back_core()

    def pytest_sessionfinish(self) -> None:
        if self.run is not None:
            self.run.stop()

    def result(self) -> tuple[subprocess.CompletedProcess, Path]:
        if self.run is None:  # requested dynamically (request.getfixturevalue): not known at collection
            raise RuntimeError(f"{FIXTURE} was not started at collection: name it among the test's arguments")
        return self.run.wait(), self.run.data
