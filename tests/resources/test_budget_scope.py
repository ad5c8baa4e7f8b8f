"""One budget per run: every client of a budget scope ($MEBOT_BUDGET_SCOPE, set by `mebot run`/`serve`/`sweep`
for all the processes they start) reads and adds to one ledger in the call cache, so budget.max_usd bounds the
whole run, not each asset partition's client. Real OpenAI SDK clients against llama.cpp's own OpenAI-compatible
server on loopback (the full tier), priced at $1 a token so that every call costs something."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import pytest

from mebot.resources.chat import BudgetExceeded, ChatClient, chat_client, new_budget_scope
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings, Price
from tests.resources.helpers import LlamaServer

pytestmark = [pytest.mark.full, pytest.mark.timeout(180)]

# $1 a token. Before a call its cost is estimated from the question's cl100k_base tokens plus max_tokens: 7 + 3 =
# $10 for each question below, under the $15 cap; the server then reports the prompt with its chat template
# (over 5 tokens), so once one call is paid the next estimate passes the cap.
DOLLAR_A_TOKEN = Price(prompt_per_1m=1_000_000, completion_per_1m=1_000_000)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CAP_USD = 15.0


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def priced_client(server: Endpoint, cache_file: Path, scope: str | None, priced: bool = True) -> ChatClient:
    chat = ChatModelSettings(provider="openai", model=server.model, base_url=server.base_url, max_retries=0)
    # each client its own connection to the cache file, as each worker process has
    return chat_client(
        chat,
        prices={server.model: DOLLAR_A_TOKEN} if priced else {},
        cache=LlmCache(cache_file),
        budget_usd=CAP_USD if priced else 0.0,
        budget_scope=scope,
    )


def ask_once(server: Endpoint, cache_file: str, scope: str, content: str) -> float:
    """In another process: one paid call in `scope`; what this process spent."""
    client = priced_client(server, Path(cache_file), scope)
    client.complete(ask(content), max_tokens=3)
    return client.usage.cost_usd


@dataclass(frozen=True)
class Endpoint:
    """The server's URL and model id (what another process needs to call it)."""

    base_url: str
    model: str


@pytest.fixture
def server(llama_server: LlamaServer) -> Endpoint:
    return Endpoint(llama_server.base_url, llama_server.model)


def test_a_call_in_another_process_of_the_scope_counts_against_this_ones_budget(server, tmp_path: Path):
    cache_file, scope = tmp_path / "llm_calls.sqlite", new_budget_scope("run")
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a worker of the same `mebot run`
        spent_there = pool.apply(ask_once, (server, str(cache_file), scope, "What is the capital of Spain?"))
    assert spent_there > 5
    client = priced_client(server, cache_file, scope)
    with pytest.raises(BudgetExceeded) as info:  # what the other process spent + $10 estimated > $15
        client.complete(QUESTION, max_tokens=3)
    assert f"${spent_there:.4f} spent by this run (all its processes)" in str(info.value)
    assert client.usage.cost_usd == 0 and client.usage.calls == 0  # refused before calling


def test_clients_of_the_same_scope_share_one_budget_and_other_scopes_do_not(server, tmp_path: Path):
    cache_file = tmp_path / "llm_calls.sqlite"
    first, second = priced_client(server, cache_file, "run-a"), priced_client(server, cache_file, "run-a")
    first.complete(QUESTION, max_tokens=3)
    with pytest.raises(BudgetExceeded):
        second.complete(ask("What is the capital of Spain?"), max_tokens=3)
    # another run (another scope) starts from $0; so does a client without a scope (its own spend only)
    other_run = priced_client(server, cache_file, "run-b")
    other_run.complete(ask("What is the capital of Italy?"), max_tokens=3)
    priced_client(server, cache_file, None).complete(ask("What is the capital of Peru?"), max_tokens=3)
    ledger = LlmCache(cache_file)
    assert ledger.spent("run-a") == pytest.approx(first.usage.cost_usd) and first.usage.cost_usd > 5
    assert ledger.spent("run-b") == pytest.approx(other_run.usage.cost_usd) and ledger.spent("run-c") == 0.0
    assert second.usage.calls == 0


def test_a_cached_answer_spends_nothing_and_a_free_model_writes_no_ledger(server, tmp_path: Path):
    cache_file = tmp_path / "llm_calls.sqlite"
    client = priced_client(server, cache_file, "run-a")
    client.complete(QUESTION, max_tokens=3)
    assert client.complete(QUESTION, max_tokens=3).cached  # from the cache: no spend, no refusal
    assert LlmCache(cache_file).spent("run-a") == pytest.approx(client.usage.cost_usd)
    free = priced_client(server, cache_file, "run-free", priced=False)
    free.complete(ask("What is the capital of Chile?"), max_tokens=3)  # $0: allowed under a $0 cap, not recorded
    assert LlmCache(cache_file).spent("run-free") == 0.0 and free.usage.calls == 1


def test_new_scopes_are_distinct_and_name_their_command():
    scopes = {new_budget_scope("serve") for _ in range(100)}
    assert len(scopes) == 100 and all(scope.startswith("serve-") for scope in scopes)
