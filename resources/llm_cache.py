"""A persistent cache of LLM calls: one SQLite file, a row per finished call.

The key is a sha256 over everything that decides the answer (provider, model identity, every generation
parameter and the full messages), so a changed prompt, setting or model never reuses an old answer. Each `put`
commits at once: a run killed halfway keeps every call that finished, and the re-run repeats none of them.

SQLite in WAL mode lets several processes (Dagster's multiprocess executor) read while one writes; inside one
process a lock serialises use of the single connection, so threads can share an `LlmCache`.
"""

from __future__ import annotations

import hashlib
import json
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
