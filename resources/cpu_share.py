"""How many CPU threads a model call may use right now.

`models.*.n_threads: 0` and `finetune.local.n_threads: 0` mean "automatic": all cores but one (llama.cpp threads
spin-wait for each other, so one core busy with anything else stalls them all). Inside `mebot run` the scheduler
knows better: it writes the threads each of its runs may use to the file named by the environment variable
MEBOT_THREADS_FILE whenever the number of runs at once changes — every core for a run that is alone, the cores
divided among runs otherwise. Automatic callers read it before each call (llama.cpp) or training step (torch),
so a run left alone by the others speeds up without ever oversubscribing the cores: a run is alone only when
nothing else is ready, and nothing becomes ready before it finishes.
"""

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
