"""Why a process died, in words a person can act on. A signal leaves only a negative exit code, and two need more
than the signal's name: SIGILL almost always means a llama.cpp build with CPU instructions this machine cannot
run, and SIGKILL is "out of memory" only when the kernel's OOM killer recorded a kill while the process ran."""

from __future__ import annotations

import signal
from pathlib import Path

REBUILD_COMMAND = "rm -rf .wheels .venv && make setup"

# cgroup v2 counts the kills of its out-of-memory killer here; v1 has no such file and the check says "unknown"
_MEMORY_EVENTS = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory.events.local"))


def oom_kill_count(paths: tuple[Path, ...] = _MEMORY_EVENTS) -> int | None:
    """The number of processes the out-of-memory killer has killed in this cgroup, or None where it is not kept."""
    for path in paths:
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def death_message(
    exit_code: int | None, oom_kills_before: int | None = None, oom_kills_after: int | None = None
) -> str:
    """What an exit code says: "" for a clean exit, otherwise a sentence that names the signal or the code.

    `exit_code` follows subprocess/multiprocessing: negative for a death by signal. The two OOM counts (from
    `oom_kill_count()` before the process started and after it died) decide whether a SIGKILL was memory.
    """
    if exit_code is None or exit_code == 0:
        return ""
    if exit_code > 0:
        # a shell reports a death by signal N as 128 + N
        if exit_code > 128 and exit_code - 128 in {s.value for s in signal.Signals}:
            return death_message(-(exit_code - 128), oom_kills_before, oom_kills_after)
        return f"exited with code {exit_code}"
    number = -exit_code
    name = signal_name(number)
    if number == signal.SIGILL:
        return (
            f"died by {name} (illegal instruction): the llama.cpp build uses CPU instructions this machine cannot "
            f"run. Rebuild it portably with `{REBUILD_COMMAND}` (MEBOT_LLAMA_NATIVE=1 builds for this CPU only)"
        )
    if number == signal.SIGKILL:
        if oom_kills_before is not None and oom_kills_after is not None and oom_kills_after > oom_kills_before:
            return f"died by {name}: out of memory (the kernel's out-of-memory killer recorded a kill)"
        if oom_kills_before is not None and oom_kills_after is not None:
            return f"died by {name}: killed from outside (the out-of-memory killer recorded no kill)"
        return f"died by {name}: killed from outside, or out of memory (this system does not say which)"
    if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT):
        return (
            f"died by {name}: a crash inside native code (llama.cpp, torch or FAISS); run it again to see if it repeats"
        )
    return f"died by {name}"
