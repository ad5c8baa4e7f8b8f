"""Run a command in a child process and say why it died.

A process that dies by a signal cannot explain itself: SIGILL from a llama.cpp build with instructions the CPU
refuses leaves only "Illegal instruction" from the shell, or nothing at all. `mebot ask`, `mebot serve` and
`mebot smoke` therefore do their work in a child and name the signal (and what to do) when it dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mebot.resources.process_death import death_message, oom_kill_count

# set in the child so that it does the work instead of supervising again
SUPERVISED_ENV = "MEBOT_SUPERVISED"


def is_supervised() -> bool:
    return os.environ.get(SUPERVISED_ENV) == "1"


def run_supervised(command: list[str], what: str) -> int:
    """Run `command`, passing SIGTERM and SIGHUP on; returns its exit code (128 + N for a death by signal N) and
    prints a sentence naming the signal to stderr when it died by one."""
    oom_kills_before = oom_kill_count()
    child = subprocess.Popen(command, env={**os.environ, SUPERVISED_ENV: "1"})

    def forward(signum, _frame):
        child.send_signal(signum)

    # Ctrl-C reaches the child from the terminal itself (same process group); passing it on would make it twice.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
    }
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if code >= 0:
        return code
    if -code in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        return 128 - code  # stopped on request: nothing to explain
    print(f"mebot: {what} {death_message(code, oom_kills_before, oom_kill_count())}", file=sys.stderr, flush=True)
    return 128 - code
