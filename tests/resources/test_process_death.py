"""Deaths that say why: the signal is named, SIGILL points at the llama.cpp build, "out of memory" only on an
OOM-killer record."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mebot.resources.process_death import REBUILD_COMMAND, death_message, oom_kill_count


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (-signal.SIGILL, "SIGILL"),
        (-signal.SIGSEGV, "SIGSEGV"),
        (-signal.SIGTERM, "SIGTERM"),
        (128 + signal.SIGILL, "SIGILL"),  # a shell's way to report the same death
        (3, "exited with code 3"),
    ],
)
def test_death_message_names_the_signal_or_the_code(code: int, expected: str) -> None:
    assert expected in death_message(code)


def test_a_clean_exit_needs_no_explanation() -> None:
    assert death_message(0) == ""
    assert death_message(None) == ""


def test_sigill_names_the_llama_cpp_build_and_the_rebuild_command() -> None:
    message = death_message(-signal.SIGILL)
    assert "CPU instructions" in message and "llama.cpp" in message
    assert REBUILD_COMMAND in message


@pytest.mark.parametrize(
    ("before", "after", "says_memory"),
    [(0, 1, True), (2, 2, False), (None, None, False)],
)
def test_sigkill_is_out_of_memory_only_when_the_oom_killer_recorded_a_kill(before, after, says_memory) -> None:
    message = death_message(-signal.SIGKILL, before, after)
    assert "SIGKILL" in message
    assert (message.count("out of memory") == 1 and "recorded a kill" in message) == says_memory


def test_oom_kill_count_reads_cgroup_memory_events(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 3\n")
    assert oom_kill_count((tmp_path / "missing", events)) == 3
    assert oom_kill_count((tmp_path / "missing",)) is None


def test_a_real_death_by_sigill_is_explained_by_the_supervisor() -> None:
    """A child that dies by SIGILL (raised for real): `run_supervised` names it and gives the rebuild command."""
    script = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    code = (
        "import sys; from mebot.pipeline.supervise import run_supervised; "
        f"sys.exit(run_supervised([sys.executable, '-c', {script!r}], 'test: the process'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGILL
    assert "test: the process died by SIGILL" in result.stderr
    assert REBUILD_COMMAND in result.stderr
