"""LlmCache: keys cover every input of a call; entries persist, survive a killed process, and take concurrent
writers (threads and processes)."""

from __future__ import annotations

import copy
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import PROJECT_ROOT

BASE_PARAMS = {"temperature": 0.0, "max_tokens": 16, "logprobs": False, "top_logprobs": 0, "stop": None, "seed": None}
BASE_MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
BASE = ("llama_cpp", "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf", BASE_PARAMS, BASE_MESSAGES)


def _changed(what: str, value: object) -> tuple:
    provider, identity, params, messages = copy.deepcopy(BASE)
    if what == "provider":
        provider = value
    elif what == "identity":
        identity = value
    elif what.startswith("params."):
        params[what.removeprefix("params.")] = value
    elif what == "user_content":
        messages[1]["content"] = value
    elif what == "system_content":
        messages[0]["content"] = value
    elif what == "role":
        messages[1]["role"] = value
    elif what == "extra_message":
        messages.append(value)
    return provider, identity, params, messages


@pytest.mark.parametrize(
    ("what", "value"),
    [
        ("provider", "openai"),
        ("identity", "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf:lora=a.gguf:0123456789ab"),
        ("params.temperature", 0.2),
        ("params.max_tokens", 17),
        ("params.logprobs", True),
        ("params.top_logprobs", 5),
        ("params.stop", ["\n"]),
        ("params.seed", 1),
        ("user_content", "Who are you? "),
        ("system_content", "Be brief!"),
        ("role", "assistant"),
        ("extra_message", {"role": "assistant", "content": "I am Toby."}),
    ],
)
def test_key_changes_with_each_input(what: str, value: object) -> None:
    assert LlmCache.key(*_changed(what, value)) != LlmCache.key(*BASE)


def test_key_is_a_sha256_independent_of_dict_order() -> None:
    provider, identity, params, messages = BASE
    reordered_params = dict(reversed(list(params.items())))
    reordered_messages = [dict(reversed(list(m.items()))) for m in messages]
    key = LlmCache.key(*BASE)
    assert len(key) == 64 and int(key, 16) >= 0
    assert LlmCache.key(provider, identity, reordered_params, reordered_messages) == key


def test_round_trip_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "llm_calls.sqlite"
    value = {"text": "Héllo — 你好", "prompt_tokens": 12, "logprobs": [["He", -0.25, [["He", -0.25], ["Hi", -2.0]]]]}
    key = LlmCache.key(*BASE)
    first = LlmCache(path)
    assert first.get(key) is None
    first.put(key, value)
    first.close()

    second = LlmCache(path)
    assert second.get(key) == value
    assert second.get(LlmCache.key(*_changed("params.seed", 7))) is None
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_put_is_committed_before_a_killed_process_exits(tmp_path: Path) -> None:
    path = tmp_path / "llm_calls.sqlite"
    script = (
        "import os, signal, sys\n"
        "from mebot.resources.llm_cache import LlmCache\n"
        "cache = LlmCache(sys.argv[1])\n"
        "for i in range(3):\n"
        "    cache.put(f'k{i}', {'i': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == -9  # killed, never closed the cache
    cache = LlmCache(path)
    assert [cache.get(f"k{i}") for i in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_concurrent_puts_from_threads(tmp_path: Path) -> None:
    cache = LlmCache(tmp_path / "llm_calls.sqlite")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                cache.put(f"t{n}-{i}", {"thread": n, "i": i})
                assert cache.get(f"t{n}-{i}") == {"thread": n, "i": i}
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    fresh = LlmCache(tmp_path / "llm_calls.sqlite")
    assert len(fresh) == 400
    assert all(fresh.get(f"t{n}-{i}") == {"thread": n, "i": i} for n in range(8) for i in range(50))


def test_concurrent_puts_from_processes(tmp_path: Path) -> None:
    path = tmp_path / "llm_calls.sqlite"
    script = (
        "import sys\n"
        "from mebot.resources.llm_cache import LlmCache\n"
        "cache = LlmCache(sys.argv[1])\n"
        "for i in range(100):\n"
        "    cache.put(f'{sys.argv[2]}-{i}', {'i': i})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(path), f"p{n}"], cwd=PROJECT_ROOT, env=env)
        for n in range(3)
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    cache = LlmCache(path)
    assert len(cache) == 300
    assert cache.get("p2-99") == {"i": 99}
