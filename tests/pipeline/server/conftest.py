"""A small real index, built once per test session by `mebot run` on the embedded sample site, and `mebot serve`
started on it as a real subprocess on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from mebot.resources.settings import PROJECT_ROOT
from tests.conftest import deep_merge
from tests.sites import free_port

SERVE_SETTINGS = {
    "rate_limit_per_minute": 600,  # 10 per second
    "rate_limit_burst": 60,
    "max_queued_generations": 1,  # one answer running, one waiting, then 503
    "cors_origins": ["http://allowed.example"],
    "reload_check_s": 0.5,
    "max_query_chars": 300,
}
# Kept out of every response (the server process has it in its environment).
SECRET = "sk-test-secret-0123456789abcdef"
QUESTION = "What is your sourdough starter called?"
QUESTION_PAGE = "/posts/weekday-sourdough/"


def write_config(path: Path) -> Path:
    base = yaml.safe_load((PROJECT_ROOT / "mebot.yaml").read_text(encoding="utf-8"))
    overrides = {
        "site": {"download_delay": 0, "local_port": 0},
        # Short prompts and answers keep generation quick on 2 cores; retrieval still ranks the right page first.
        "rag": {"top_k": 2, "max_tokens": 64},
        "serve": SERVE_SETTINGS,
    }
    path.write_text(yaml.safe_dump(deep_merge(base, overrides)), encoding="utf-8")
    return path


@dataclass
class Built:
    config: Path
    data: Path
    home: Path


@pytest.fixture(scope="session")
def built(default_run) -> Built:
    """The sample-site build the end-to-end tests use, with this module's serving settings beside it (they are
    read at answer time, so the same data serves)."""
    result, data = default_run
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return Built(write_config(data.parent / "serve.yaml"), data, data.parent / "home")


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log: Path
    data: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_server(config: Path, data: Path, home: Path, log: Path, timeout_s: float = 180) -> RunningServer:
    port = free_port()
    env = {**os.environ, "MEBOT_DATA_DIR": str(data), "MEBOT_DAGSTER_HOME": str(home), "OPENAI_API_KEY": SECRET}
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "serve", "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=log.parent,
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log, data)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mebot serve exited with {process.returncode}:\n{server.log_text()}")
        try:
            httpx.get(f"{server.url}/healthz", timeout=2)
            return server
        except httpx.TransportError:
            time.sleep(0.3)
    stop_server(server)
    raise AssertionError(f"mebot serve did not answer within {timeout_s} s:\n{server.log_text()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=15)


@pytest.fixture(scope="session")
def server(built: Built, tmp_path_factory) -> Iterator[RunningServer]:
    """`mebot serve` on the built index, shared by the API, SDK, browser and load tests."""
    running = start_server(built.config, built.data, built.home, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield running
    stop_server(running)
    assert running.process.returncode is not None


def client_from(address: str, **kwargs) -> httpx.Client:
    """An HTTP client whose requests come from another loopback address: its own rate-limit bucket."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **kwargs)
