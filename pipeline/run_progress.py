"""Progress of the runs `mebot run` has started, while they run: a thread reads each running unit's new log messages
(found by PROGRESS_TAG) and every few seconds prints per stage what it has done and about how long is left. Watching
never fails a run: an instance that cannot be read just means no progress line."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from mebot.pipeline.run_report import StageProgress, progress_line, progress_of_message

PROGRESS_TAG = "mebot/progress"
DEFAULT_INTERVAL_S = 15.0


def new_progress_token() -> str:
    return uuid.uuid4().hex


@dataclass
class Watched:
    label: str
    asset: str
    token: str
    started: float  # wall-clock seconds, like the event log's timestamps
    previous_s: float | None
    run_id: str | None = None
    cursor: str | None = None
    progress: StageProgress | None = None
    printed_at: float = 0.0
    last_message_at: float = 0.0  # the stage's latest message of any kind
    count_started: float = 0.0  # when the current count (a round of questions, a training) began


def is_new_count(before: StageProgress | None, now: StageProgress) -> bool:
    """Whether `now` starts another count than `before` (another stage step, total or round, or a count restarted)."""
    return before is None or (before.what, before.total) != (now.what, now.total) or now.done < before.done


def last_duration(instance: dg.DagsterInstance, asset: str) -> float | None:
    """Seconds the run of the asset's latest materialization took; None when there is none."""
    try:
        event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(asset))
        stats = instance.get_run_stats(event.run_id) if event is not None else None
    except Exception:  # progress is best effort: an unreadable instance means no estimate
        return None
    if stats is None or not stats.start_time or not stats.end_time:
        return None
    return max(0.0, stats.end_time - stats.start_time)


class ProgressWatcher:
    """Prints a progress line per running unit every `interval_s` seconds (see the module docstring)."""

    def __init__(
        self, instance: dg.DagsterInstance, out: Callable[[str], None], interval_s: float = DEFAULT_INTERVAL_S
    ):
        self.instance, self.out, self.interval_s = instance, out, interval_s
        self.watched: dict[str, Watched] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def started(self, label: str, asset: str, token: str) -> None:
        now = time.time()
        entry = Watched(label, asset, token, now, last_duration(self.instance, asset), last_message_at=now)
        with self.lock:
            self.watched[token] = entry

    def finished(self, token: str) -> None:
        with self.lock:
            self.watched.pop(token, None)

    def poll(self) -> None:
        """Read what each running unit has logged since the last poll; print the lines that are due."""
        now = time.time()
        with self.lock:
            entries = list(self.watched.values())
        for entry in entries:
            try:
                self._read_new_messages(entry)
            except Exception:  # a run that is not recorded yet, or a busy SQLite file: try again next poll
                continue
            if now - entry.printed_at >= self.interval_s and now - entry.started >= self.interval_s:
                entry.printed_at = now
                with self.lock:
                    if entry.token not in self.watched:
                        continue
                elapsed, counted_for = now - entry.started, now - (entry.count_started or entry.started)
                self.out(progress_line(entry.label, entry.progress, elapsed, entry.previous_s, counted_for))

    def _read_new_messages(self, entry: Watched) -> None:
        if entry.run_id is None:
            runs = self.instance.get_runs(filters=dg.RunsFilter(tags={PROGRESS_TAG: entry.token}), limit=1)
            if not runs:
                return
            entry.run_id = runs[0].run_id
        connection = self.instance.get_records_for_run(entry.run_id, cursor=entry.cursor)
        entry.cursor = connection.cursor
        for record in connection.records:
            log = record.event_log_entry
            if log.dagster_event is None:  # a stage's own message (context.log), not Dagster's bookkeeping
                progress = progress_of_message(log.user_message)
                if progress is not None:
                    if is_new_count(entry.progress, progress):  # it began when the stage last said something
                        entry.count_started = entry.last_message_at
                    entry.progress = progress
                entry.last_message_at = log.timestamp

    def __enter__(self) -> ProgressWatcher:
        self.thread = threading.Thread(target=self._loop, name="mebot-progress", daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        tick = min(2.0, max(0.1, self.interval_s / 4))
        while not self.stopping.wait(tick):
            self.poll()

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
