"""llama.cpp's own OpenAI-compatible server (`python -m llama_cpp.server`) with the bundled SmolLM2 GGUF, as a
subprocess on loopback: starting it, waiting for it, stopping it (the session fixture is in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mebot.resources.chat import bundled_gguf_path
from tests.sites import free_port

SERVER_START_TIMEOUT_S = 90.0


@dataclass
class LlamaServer:
    base_url: str  # http://127.0.0.1:<port>/v1
    model: str  # the model id the server reports on /v1/models
    process: subprocess.Popen
    log_path: Path
    n_ctx: int  # the context size the server was started with


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _wait_for_models(base_url: str, process: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                models = json.load(response)["data"]
            return models[0]["id"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, IndexError):
            time.sleep(0.2)
    raise RuntimeError(
        f"llama_cpp.server did not answer /v1/models in {SERVER_START_TIMEOUT_S:.0f} s:\n{_log_tail(log_path)}"
    )


def stop_llama_server(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# The context size the server is started with (the openai client's tests read it back from the server).
SERVER_N_CTX = 2048


def start_llama_server(log_dir: Path) -> LlamaServer:
    """The server on a free port, answering /v1/models; stop it with `stop_llama_server`."""
    port = free_port()
    log_path = log_dir / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(bundled_gguf_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(SERVER_N_CTX),
        "--logits_all",
        "true",
        # one thread, as in test_chat.py: steady even when another process keeps a core busy
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        model = _wait_for_models(base_url, process, log_path)
    except BaseException:
        stop_llama_server(process)
        raise
    return LlamaServer(base_url=base_url, model=model, process=process, log_path=log_path, n_ctx=SERVER_N_CTX)
