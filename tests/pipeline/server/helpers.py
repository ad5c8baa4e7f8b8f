"""What the server tests share (the fixtures are in conftest.py): serving settings, starting and stopping
`mebot serve` as a subprocess, and clients from other loopback addresses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import write_settings
from tests.sites import free_port

SERVE_SETTINGS = {
    "rate_limit_per_minute": 600,  # 10 per second
    "rate_limit_burst": 60,
    "max_queued_generations": 1,  # one answer running, one waiting, then 503
    "allowed_origins": ["http://allowed.example"],
    "reload_check_s": 0.5,
    "max_query_chars": 300,
    "default_model": "rag",  # /api without a model generates: the queue, cache and answer-cap tests need that
}
# Kept out of every response (the server process has it in its environment).
SECRET = "sk-test-secret-0123456789abcdef"
QUESTION = "What is your sourdough starter called?"
QUESTION_PAGE = "/posts/weekday-sourdough/"


def write_config(path: Path) -> Path:
    overrides = {
        "site": {"download_delay": 0, "local_port": 0},
        # Short prompts and answers keep generation quick on 2 cores; retrieval still ranks the right page first.
        "rag": {"top_k": 2, "max_tokens": 64},
        "finetune": {"answer_temperature": 0.0},  # greedy: an answer can be compared with the base model's
        "serve": SERVE_SETTINGS,
    }
    return write_settings(path, overrides)


@dataclass
class Built:
    config: Path
    data: Path
    home: Path


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


def client_from(address: str, **kwargs) -> httpx.Client:
    """An HTTP client whose requests come from another loopback address: its own rate-limit bucket."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **kwargs)
