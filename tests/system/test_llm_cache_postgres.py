"""PostgresLlmCache (resources/llm_cache.py), against a real PostgreSQL: the SQLite cache's interface and key,
every put committed at once, several processes writing, and a record of who wrote each call how often."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from mebot.resources.chat import ChatModelResource
from mebot.resources.llm_cache import POSTGRES_SPEND_TABLE, POSTGRES_TABLE, LlmCache, PostgresLlmCache, open_llm_cache
from mebot.resources.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.full

PARAMS = {"temperature": 0.0, "max_tokens": 16, "logprobs": False, "top_logprobs": 0, "stop": None, "seed": None}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wer bist du? ✓"}]
VALUE = {"text": "Ich bin Toby ✓", "prompt_tokens": 12, "completion_tokens": 4, "logprobs": None, "cost_usd": 0.0}


@pytest.fixture
def pg_url(postgres) -> str:
    with psycopg2.connect(postgres.url) as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {POSTGRES_TABLE}")
        cursor.execute(f"DROP TABLE IF EXISTS {POSTGRES_SPEND_TABLE}")
    return postgres.url


def test_both_backends_store_the_same_value_under_the_same_key(pg_url: str, tmp_path: Path) -> None:
    key = LlmCache.key("llama_cpp", "llama_cpp:SmolLM2", PARAMS, MESSAGES)
    assert PostgresLlmCache.key("llama_cpp", "llama_cpp:SmolLM2", PARAMS, MESSAGES) == key
    with open_llm_cache(tmp_path / "llm_calls.sqlite") as sqlite, open_llm_cache(pg_url) as postgres:
        assert type(sqlite) is LlmCache and isinstance(postgres, PostgresLlmCache)
        for cache in (sqlite, postgres):
            assert cache.get(key) is None
            cache.put(key, VALUE)
        assert postgres.get(key) == sqlite.get(key) == VALUE
        assert len(postgres) == len(sqlite) == 1


def test_a_put_is_committed_before_it_returns_and_outlives_the_connection(pg_url: str) -> None:
    writer = PostgresLlmCache(pg_url)
    writer.put("k1", VALUE)
    reader = PostgresLlmCache(pg_url)  # another connection sees it at once
    assert reader.get("k1") == VALUE
    writer.put("k1", {**VALUE, "text": "again"})  # replaced, as SQLite's INSERT OR REPLACE does
    assert reader.get("k1")["text"] == "again"
    writer.close()
    reader.close()
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT writes, written_by FROM {POSTGRES_TABLE} WHERE key = 'k1'")
        writes, written_by = cursor.fetchone()
    assert writes == 2  # a repeated call shows: a re-run that repeats no finished call leaves every row at 1
    assert written_by == f"{os.uname().nodename}:{os.getpid()}"


def test_processes_opening_and_writing_at_once_lose_nothing(pg_url: str) -> None:
    script = (
        "import sys\n"
        "from mebot.resources.llm_cache import open_llm_cache\n"
        "cache = open_llm_cache(sys.argv[1])\n"  # each creates the table if missing: at the same moment
        "for i in range(50):\n"
        "    cache.put(f'{sys.argv[2]}-{i}', {'i': i})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", script, pg_url, f"p{n}"], cwd=PROJECT_ROOT, env=env) for n in range(4)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    with PostgresLlmCache(pg_url) as cache:
        assert len(cache) == 200
        assert cache.get("p3-49") == {"i": 49}


def test_the_chat_resource_opens_postgres_when_given_a_url_and_sqlite_otherwise(
    pg_url: str, postgres, tmp_path: Path
) -> None:
    settings = Settings()
    # the deployment's spelling, with SQLAlchemy's driver name (Dagster's storage reads the same variable)
    url = postgres.sqlalchemy_url
    cache = ChatModelResource(cache_dir=str(tmp_path), cache_url=url).open_cache(settings)
    assert isinstance(cache, PostgresLlmCache) and cache.url == url
    cache.put("k", VALUE)
    assert PostgresLlmCache(pg_url).get("k") == VALUE
    sqlite = ChatModelResource(cache_dir=str(tmp_path)).open_cache(settings)
    assert type(sqlite) is LlmCache and sqlite.path == tmp_path / "llm_calls.sqlite"


def test_both_backends_keep_one_budget_ledger_per_scope_across_connections(pg_url: str, tmp_path: Path) -> None:
    for location in (tmp_path / "llm_calls.sqlite", pg_url):
        with open_llm_cache(location) as worker_a, open_llm_cache(location) as worker_b:
            worker_a.record_spend("run-1", 0.25)
            worker_b.record_spend("run-1", 0.5)
            worker_b.record_spend("run-2", 4.0)
            assert worker_a.spent("run-1") == worker_b.spent("run-1") == pytest.approx(0.75)
            assert worker_a.spent("run-2") == 4.0 and worker_a.spent("run-3") == 0.0
