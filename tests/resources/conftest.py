"""A real OpenAI-compatible server on loopback: llama.cpp's own (`python -m llama_cpp.server`) with the bundled
SmolLM2 GGUF, started once per test session and stopped at the end (the full tier). Helpers in helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.resources.helpers import LlamaServer, start_llama_server, stop_llama_server
from tests.resources.scripted_server import ScriptedServer


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = start_llama_server(tmp_path_factory.mktemp("llama_server"))
    try:
        yield server
    finally:
        stop_llama_server(server.process)


@pytest.fixture
def scripted() -> Iterator[Callable[[list], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(replies: list) -> ScriptedServer:
        servers.append(ScriptedServer(replies).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__()
