"""One writer per data folder: `mebot run` holds an exclusive lock on `<data>/.mebot-run.lock` while it runs, so a
second run (or the scheduled recrawl) never materializes the same assets at the same time. The lock is
`fcntl.flock`, which the kernel drops however the holder exits; the file says who holds it, for the message."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from mebot.resources.clock import utc_now

LOCK_FILE = ".mebot-run.lock"


class DataFolderBusy(RuntimeError):
    """Another run holds the data folder; the message names it and says what to do."""


def _holder_text(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


class RunLock:
    """`with RunLock(data_dir, "mebot run"):` — raises DataFolderBusy at once when another run holds it."""

    def __init__(self, data_dir: str | Path, command: str):
        self.path = Path(data_dir) / LOCK_FILE
        self.command = command
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(handle)
            handle.close()
            raise DataFolderBusy(
                f"{self.path.parent} is being materialized by {holder}; wait for it to finish (or stop it), then "
                f"run {self.command} again"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = utc_now()
        handle.write(f"{self.command} (pid {os.getpid()}, since {started})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the lock
            self._handle = None

    def __enter__(self) -> RunLock:
        return self if self._handle is not None else self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_holder(data_dir: str | Path) -> str | None:
    """Who holds the data folder's run lock now, or None when no one does."""
    path = Path(data_dir) / LOCK_FILE
    if not path.is_file():
        return None
    with path.open("r", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(handle)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
