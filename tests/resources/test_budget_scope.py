"""One budget per run: every client of a budget scope ($MEBOT_BUDGET_SCOPE, set by `mebot run`/`serve`/`sweep`
for all the processes they start) reads and adds to one ledger in the call cache, so budget.max_usd bounds the
whole run, not each asset partition's client. Real OpenAI SDK clients against a scripted server on loopback."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest

from mebot.resources.chat import BudgetExceeded, ChatClient, chat_client, new_budget_scope
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings, Price
from tests.resources.scripted_server import ScriptedServer, completion_json

# $1 a token; "What is the capital of France?" is 7 tokens, so with max_tokens 3 a call is estimated at $10, and
# the server reports 5 + 1 tokens: $6.
DOLLAR_A_TOKEN = {"priced": Price(prompt_per_1m=1_000_000, completion_per_1m=1_000_000)}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def priced_client(base_url: str, cache_file: Path, scope: str | None, budget_usd: float = 15.0) -> ChatClient:
    chat = ChatModelSettings(provider="openai", model="priced", base_url=base_url, max_retries=0, timeout_s=10)
    # each client its own connection to the cache file, as each worker process has
    return chat_client(
        chat, prices=DOLLAR_A_TOKEN, cache=LlmCache(cache_file), budget_usd=budget_usd, budget_scope=scope
    )


def ask_once(base_url: str, cache_file: str, scope: str, content: str) -> float:
    """In another process: one paid call in `scope`; what this process spent."""
    client = priced_client(base_url, Path(cache_file), scope)
    client.complete([{"role": "user", "content": content}], max_tokens=3)
    return client.usage.cost_usd


@pytest.fixture
def server(scripted: Callable[[list], ScriptedServer]) -> ScriptedServer:
    return scripted([(200, {}, completion_json(prompt_tokens=5, completion_tokens=1))])


def test_a_call_in_another_process_of_the_scope_counts_against_this_ones_budget(server, tmp_path: Path):
    cache_file, scope = tmp_path / "llm_calls.sqlite", new_budget_scope("run")
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a worker of the same `mebot run`
        assert pool.apply(ask_once, (server.base_url, str(cache_file), scope, "Where is Paris?")) == 6.0
    assert "Where is Paris?" in str(server.requests[0]["json"])
    client = priced_client(server.base_url, cache_file, scope)
    with pytest.raises(BudgetExceeded) as info:  # $6 spent by the other process + $10 estimated > $15
        client.complete(QUESTION, max_tokens=3)
    assert "$6.0000 spent by this run (all its processes)" in str(info.value)
    assert len(server.requests) == 1 and client.usage.cost_usd == 0


def test_clients_of_the_same_scope_share_one_budget_and_other_scopes_do_not(server, tmp_path: Path):
    cache_file = tmp_path / "llm_calls.sqlite"
    first, second = (
        priced_client(server.base_url, cache_file, "run-a"),
        priced_client(server.base_url, cache_file, "run-a"),
    )
    first.complete(QUESTION, max_tokens=3)  # $6 of $15
    with pytest.raises(BudgetExceeded):
        second.complete([{"role": "user", "content": "What is the capital of Spain?"}], max_tokens=3)
    # another run (another scope) starts from $0; so does a client without a scope (its own spend only)
    priced_client(server.base_url, cache_file, "run-b").complete([{"role": "user", "content": "Spain?"}], max_tokens=3)
    priced_client(server.base_url, cache_file, None).complete([{"role": "user", "content": "Italy?"}], max_tokens=3)
    ledger = LlmCache(cache_file)
    assert ledger.spent("run-a") == 6.0 and ledger.spent("run-b") == 6.0 and ledger.spent("run-c") == 0.0
    assert len(server.requests) == 3


def test_a_cached_answer_spends_nothing_and_a_free_model_writes_no_ledger(server, tmp_path: Path):
    cache_file = tmp_path / "llm_calls.sqlite"
    client = priced_client(server.base_url, cache_file, "run-a")
    client.complete(QUESTION, max_tokens=3)
    client.complete(QUESTION, max_tokens=3)  # from the cache
    assert LlmCache(cache_file).spent("run-a") == 6.0
    free = chat_client(
        ChatModelSettings(provider="openai", model="unpriced", base_url=server.base_url, max_retries=0),
        cache=LlmCache(cache_file),
        budget_usd=0.0,
        budget_scope="run-free",
    )
    free.complete(QUESTION, max_tokens=3)  # $0: allowed under a $0 budget, and nothing recorded
    assert LlmCache(cache_file).spent("run-free") == 0.0


def test_new_scopes_are_distinct_and_name_their_command():
    scopes = {new_budget_scope("serve") for _ in range(100)}
    assert len(scopes) == 100 and all(scope.startswith("serve-") for scope in scopes)
