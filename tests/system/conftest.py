"""The servers of the system tests (the full tier), once per session: a PostgreSQL cluster and a Redis server on
127.0.0.1, started here and stopped at the end, nothing left running. Helpers in servers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system.servers import Postgres, Redis, start_postgres, start_redis


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
