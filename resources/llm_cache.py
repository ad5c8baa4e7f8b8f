"""A persistent cache of LLM calls: one SQLite file (WAL, safe for several processes), a row per finished call.

The key is a sha256 over everything that decides the answer, so a changed prompt, setting or model never reuses
an old answer; each `put` commits at once, so a re-run repeats no finished call. Machines that share work share
one PostgreSQL instead (`PostgresLlmCache`); `open_llm_cache` picks the backend from where the cache lives."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_calls (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
# What each paid call cost, by budget scope (one `mebot run` with all its worker processes, one `mebot serve`):
# the ledger every process of a scope reads before a call, so budget.max_usd bounds the whole run.
_SPEND_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (
    scope TEXT NOT NULL,
    cost_usd REAL NOT NULL,
    created_at REAL NOT NULL
)
"""
_SPEND_INDEX = "CREATE INDEX IF NOT EXISTS budget_spend_scope ON budget_spend (scope)"


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no whitespace, Unicode kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class LlmCache:
    """Persistent cache of LLM calls in SQLite (WAL mode, safe from several threads and processes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, every INSERT is its own committed transaction.
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.execute(_SCHEMA)
            self._conn.execute(_SPEND_SCHEMA)
            self._conn.execute(_SPEND_INDEX)

    @staticmethod
    def key(provider: str, model_identity: str, params: dict, messages: list[dict]) -> str:
        """sha256 of the canonical JSON of provider, model identity, generation parameters and messages."""
        payload = {"provider": provider, "model": model_identity, "params": params, "messages": messages}
        return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM llm_calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        """Store (or replace) one call's result; committed before this returns."""
        text = canonical_json(value)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO llm_calls (key, value, created_at) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )

    def record_spend(self, scope: str, cost_usd: float) -> None:
        """Add one paid call's cost to `scope`'s ledger; committed before this returns."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO budget_spend (scope, cost_usd, created_at) VALUES (?, ?, ?)",
                (scope, cost_usd, time.time()),
            )

    def spent(self, scope: str) -> float:
        """What every process of `scope` has spent so far (USD)."""
        with self._lock:
            row = self._conn.execute("SELECT SUM(cost_usd) FROM budget_spend WHERE scope = ?", (scope,)).fetchone()
        return float(row[0] or 0.0)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LlmCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ PostgreSQL

POSTGRES_TABLE = "mebot_llm_calls"
POSTGRES_SPEND_TABLE = "mebot_budget_spend"
_POSTGRES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {POSTGRES_TABLE} (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    writes INTEGER NOT NULL DEFAULT 1,
    written_by TEXT NOT NULL DEFAULT ''
)
"""
_POSTGRES_SPEND_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {POSTGRES_SPEND_TABLE} (
    scope TEXT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    written_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS {POSTGRES_SPEND_TABLE}_scope ON {POSTGRES_SPEND_TABLE} (scope)
"""
# Serialises the CREATE TABLE of processes that open the cache at the same moment (PostgreSQL's IF NOT EXISTS is
# not safe against a concurrent create); any constant works, this one is "mebot" in ASCII.
_SCHEMA_LOCK_ID = 0x6D65626F74


def is_postgres_url(location: str | Path) -> bool:
    """`postgresql://...`, `postgres://...` or SQLAlchemy's spelling with a driver, `postgresql+psycopg2://...`."""
    return re.match(r"^postgres(ql)?(\+\w+)?://", str(location)) is not None


def libpq_url(url: str) -> str:
    """`url` as libpq (psycopg2) reads it: SQLAlchemy's driver name taken out of the scheme."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


def open_llm_cache(location: str | Path) -> LlmCache:
    """The cache at `location`: a PostgreSQL URL (PostgresLlmCache) or a file path (SQLite, LlmCache)."""
    return PostgresLlmCache(str(location)) if is_postgres_url(location) else LlmCache(Path(location))


class PostgresLlmCache(LlmCache):
    """The LLM call cache in PostgreSQL: one row per finished call in table `mebot_llm_calls`, for workers on
    several machines. Same interface and same key (`LlmCache.key`) as the SQLite cache; each `put` commits before
    it returns. Besides the value, a row records when it was written, by which host and process (`written_by`),
    and how many times (`writes`: 1 unless a call was computed again, which a re-run should never do)."""

    def __init__(self, url: str):  # noqa: D107 - no SQLite file: the parent's constructor is not used
        import psycopg2  # the `scale` extra; imported here so that SQLite users need none of it

        self.url = url
        self._lock = threading.Lock()
        self._writer = f"{socket.gethostname()}:{os.getpid()}"
        self._conn = psycopg2.connect(libpq_url(url), connect_timeout=30, application_name="mebot-llm-cache")
        with self._lock, self._conn:  # one transaction: the advisory lock is held until the table exists
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                cursor.execute(_POSTGRES_SCHEMA)
                cursor.execute(_POSTGRES_SPEND_SCHEMA)
        self._conn.autocommit = True  # from here on every statement is its own committed transaction

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._lock, self._conn.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchone() if cursor.description else None

    def get(self, key: str) -> dict | None:
        row = self._one(f"SELECT value FROM {POSTGRES_TABLE} WHERE key = %s", (key,))
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict) -> None:
        """Store (or replace) one call's result; committed before this returns."""
        self._one(
            f"INSERT INTO {POSTGRES_TABLE} (key, value, created_at, writes, written_by) VALUES (%s, %s, %s, 1, %s) "
            f"ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, created_at = EXCLUDED.created_at, "
            f"writes = {POSTGRES_TABLE}.writes + 1, written_by = EXCLUDED.written_by",
            (key, canonical_json(value), time.time(), self._writer),
        )

    def record_spend(self, scope: str, cost_usd: float) -> None:
        self._one(
            f"INSERT INTO {POSTGRES_SPEND_TABLE} (scope, cost_usd, created_at, written_by) VALUES (%s, %s, %s, %s)",
            (scope, cost_usd, time.time(), self._writer),
        )

    def spent(self, scope: str) -> float:
        row = self._one(f"SELECT SUM(cost_usd) FROM {POSTGRES_SPEND_TABLE} WHERE scope = %s", (scope,))
        return float(row[0] or 0.0) if row else 0.0

    def __len__(self) -> int:
        row = self._one(f"SELECT COUNT(*) FROM {POSTGRES_TABLE}")
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
