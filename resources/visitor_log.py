"""The visitor log: every question the server answered and the visitor's feedback on it, in SQLite (WAL mode).

What is kept, per answer: a random id (the one the client gets back), the time, the channel (api, v1, page),
the question, the model, the answer, the source URLs, the latency, the flags (declined, grounded, weak evidence)
and the release that answered. Never an IP address, a user agent, a cookie or any other header: nothing here
could name the visitor beyond what they typed. Feedback: up or down and an optional comment, one per answer
(the latest wins). Entries older than `keep_days` are deleted as new ones arrive.

One SQLite file, written by the server's threads and read by the review assets: WAL mode lets readers read while
the server writes, every write is one short transaction (safe under concurrent requests and across restarts), and
each call opens its own connection, so nothing is shared between threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

RATINGS = ("up", "down")
PRUNE_EVERY = 100  # answers logged between two deletions of expired entries

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    asked_at TEXT NOT NULL,
    day TEXT NOT NULL,
    channel TEXT NOT NULL,
    question TEXT NOT NULL,
    model TEXT NOT NULL,
    answer TEXT NOT NULL,
    sources_json TEXT NOT NULL,
    latency_s REAL NOT NULL,
    declined INTEGER NOT NULL,
    grounded INTEGER,
    weak_evidence INTEGER NOT NULL,
    release_id TEXT
);
CREATE INDEX IF NOT EXISTS answers_day ON answers (day);
CREATE TABLE IF NOT EXISTS feedback (
    answer_id TEXT PRIMARY KEY REFERENCES answers (id) ON DELETE CASCADE,
    rated_at TEXT NOT NULL,
    rating TEXT NOT NULL,
    comment TEXT NOT NULL
);
"""
ANSWER_COLUMNS = [
    "id", "asked_at", "day", "channel", "question", "model", "answer", "sources_json", "latency_s", "declined",
    "grounded", "weak_evidence", "release_id",
]  # fmt: skip
LOG_COLUMNS = [*ANSWER_COLUMNS, "rating", "comment"]


@dataclass(frozen=True)
class LoggedAnswer:
    """One answered question, as the server hands it to the log (no address: there is no field for one)."""

    channel: str
    question: str
    model: str
    answer: str
    source_urls: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    declined: bool = False
    grounded: bool | None = None
    weak_evidence: bool = False
    release_id: str | None = None


class VisitorLog:
    """The log at `path` (created with its folder on first use); entries older than `keep_days` expire."""

    def __init__(self, path: str | Path, keep_days: int = 90):
        self.path = Path(path)
        self.keep_days = keep_days
        self._created = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self._logged = 0

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the log, opened on first use and kept: closing the last connection to a
        WAL database checkpoints it (an fsync, ~20 ms), which would be paid on every answer."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA foreign_keys = ON")
            # WAL with synchronous NORMAL: a commit is not fsynced (a checkpoint is); a crashed server loses nothing,
            # a power cut at most the last answers
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            with self._lock:
                if not self._created:
                    connection.executescript(SCHEMA)
                    self._created = True
            self._local.connection = connection
        yield connection

    def log(self, entry: LoggedAnswer, now: datetime | None = None, answer_id: str | None = None) -> str:
        """Record one answer; returns its id (what the client gets back as `id`): `answer_id` when the reply
        already carries one (a chat completion's), else a new random one."""
        now = now or datetime.now(UTC)
        answer_id = answer_id or uuid.uuid4().hex
        row = (
            answer_id, now.isoformat(timespec="seconds"), now.date().isoformat(), entry.channel, entry.question,
            entry.model, entry.answer, json.dumps(list(entry.source_urls)), float(entry.latency_s),
            int(entry.declined), None if entry.grounded is None else int(entry.grounded), int(entry.weak_evidence),
            entry.release_id,
        )  # fmt: skip
        with self._connect() as connection:
            connection.execute(f"INSERT INTO answers VALUES ({', '.join('?' * len(row))})", row)
        with self._lock:
            self._logged += 1
            due = self._logged % PRUNE_EVERY == 1
        if due:
            self.prune(now)
        return answer_id

    def add_feedback(self, answer_id: str, rating: str, comment: str = "", now: datetime | None = None) -> bool:
        """The visitor's rating of an answer (the latest replaces an earlier one); False for an unknown id."""
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, not {rating!r}")
        now = now or datetime.now(UTC)
        with self._connect() as connection:
            if connection.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
                return False
            connection.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?) ON CONFLICT (answer_id) DO UPDATE SET "
                "rated_at = excluded.rated_at, rating = excluded.rating, comment = excluded.comment",
                (answer_id, now.isoformat(timespec="seconds"), rating, comment),
            )
        return True

    def prune(self, now: datetime | None = None) -> int:
        """Delete answers (and their feedback) older than keep_days; returns how many answers went."""
        cutoff = ((now or datetime.now(UTC)) - timedelta(days=self.keep_days)).isoformat(timespec="seconds")
        with self._connect() as connection:
            connection.execute("DELETE FROM feedback WHERE answer_id IN (SELECT id FROM answers WHERE asked_at < ?)",
                               (cutoff,))  # fmt: skip
            return connection.execute("DELETE FROM answers WHERE asked_at < ?", (cutoff,)).rowcount

    def read(self, day: str | None = None, since: str | None = None) -> pd.DataFrame:
        """LOG_COLUMNS (answers with their feedback), oldest first: one `day` (YYYY-MM-DD), or every day from
        `since` on, or all. An absent log reads as an empty table."""
        if not self.path.is_file():
            return pd.DataFrame(columns=LOG_COLUMNS)
        where, params = "", ()
        if day is not None:
            where, params = "WHERE a.day = ?", (day,)
        elif since is not None:
            where, params = "WHERE a.day >= ?", (since,)
        query = (
            f"SELECT {', '.join('a.' + c for c in ANSWER_COLUMNS)}, f.rating, f.comment FROM answers a "
            f"LEFT JOIN feedback f ON f.answer_id = a.id {where} ORDER BY a.asked_at, a.rowid"
        )
        with self._connect() as connection:
            rows = connection.execute(query, params).fetchall()
        return pd.DataFrame(rows, columns=LOG_COLUMNS)

    def fingerprints(self) -> dict[str, str]:
        """day -> a mark that changes when an answer of that day is logged or rated (for the review sensor)."""
        if not self.path.is_file():
            return {}
        query = (
            "SELECT a.day, COUNT(*), COUNT(f.answer_id), MAX(f.rated_at) FROM answers a "
            "LEFT JOIN feedback f ON f.answer_id = a.id GROUP BY a.day ORDER BY a.day"
        )
        with self._connect() as connection:
            return {day: f"{n}:{rated}:{last or ''}" for day, n, rated, last in connection.execute(query)}

    def days(self) -> list[str]:
        """The days that have answers, oldest first."""
        if not self.path.is_file():
            return []
        with self._connect() as connection:
            return [d for (d,) in connection.execute("SELECT DISTINCT day FROM answers ORDER BY day")]


class VisitorLogResource(dg.ConfigurableResource):
    """The visitor log file the server writes and the review assets read (data/visitors/visitor_log.sqlite)."""

    path: str

    def log(self, keep_days: int = 90) -> VisitorLog:
        return VisitorLog(self.path, keep_days)


__all__ = ["ANSWER_COLUMNS", "LOG_COLUMNS", "RATINGS", "LoggedAnswer", "VisitorLog", "VisitorLogResource"]
