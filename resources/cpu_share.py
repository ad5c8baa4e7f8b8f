"""How many CPU threads a model call may use right now (`n_threads: 0`, "automatic").

Outside `mebot run`: all cores but one, because llama.cpp's and torch's threads spin-wait for each other and one
busy core stalls them all. Inside it, the scheduler writes each run's share to $MEBOT_THREADS_FILE whenever the
number of runs at once changes, and callers read it before each call or training step."""

from __future__ import annotations

import os
from pathlib import Path

from mebot.resources.files import write_atomically

THREADS_FILE_ENV = "MEBOT_THREADS_FILE"


def cpu_cores() -> int:
    """The cores this process may run on (the affinity mask, as in a container with a CPU limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Automatic threads outside `mebot run`: all cores but one, at least one."""
    return max(1, cpu_cores() - 1)


def scheduled_threads() -> int | None:
    """The share `mebot run`'s scheduler gives each of its runs now; None outside `mebot run`."""
    path = os.environ.get(THREADS_FILE_ENV)
    if path:
        try:
            return max(1, int(Path(path).read_text(encoding="utf-8").strip()))
        except (OSError, ValueError):  # not written yet
            return None
    return None


def automatic_threads() -> int:
    """The threads an automatic (`n_threads: 0`) caller may use now: the scheduler's share, else the default."""
    return scheduled_threads() or default_threads()


def resolve_threads(configured: int) -> int:
    """`configured` when set (> 0), else the automatic share."""
    return configured if configured > 0 else automatic_threads()


def write_threads_file(path: Path, threads: int) -> None:
    """Publish the per-run thread share atomically (readers never see a half-written number)."""
    write_atomically(path, str(max(1, threads)))
