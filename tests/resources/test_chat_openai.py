"""The OpenAI-compatible provider (`OpenAIChat`): retries, refusals, API-key hygiene and placeholder keys against a
scripted loopback HTTP server (the contract tests); request pacing, budget and pricing, and the OpenAI SDK path
(text, usage, context window, logprobs) against llama.cpp's own OpenAI-compatible server on loopback (the full tier,
by the `llama_server` fixture). The base class and the llama.cpp provider are tested in test_chat.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from mebot.resources.chat import BudgetExceeded, ChatClient, ChatProviderError, openai_compatible
from mebot.resources.chat.openai_compatible import openai_context_window
from mebot.resources.settings import Price, Settings
from tests.resources.chat_clients import QUESTION, UNSET_KEY_ENV, openai_client
from tests.resources.helpers import LlamaServer
from tests.resources.scripted_server import Reply, ScriptedServer, completion_json, error_json
from tests.sites import free_port

# ------------------------------------------------------------- retries, errors and keys; pacing and budget


@pytest.mark.timeout(60)
def test_contract_retries_429_then_500_honouring_retry_after(scripted: Callable[[list], ScriptedServer]) -> None:
    server = scripted(
        [
            (429, {"Retry-After": "1"}, error_json("slow down")),
            (500, {}, error_json("boom")),
            (200, {}, completion_json("Paris.")),
        ]
    )
    client = openai_client(server.base_url, max_retries=3)
    started = time.monotonic()
    result = client.complete(QUESTION, max_tokens=8)
    elapsed = time.monotonic() - started
    assert result.text == "Paris."
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (5, 2, "stop")
    assert len(server.requests) == 3
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 1.0  # waited as Retry-After asked
    assert elapsed >= 1.0
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert server.requests[0]["json"]["model"] == "fake-model"
    assert server.requests[0]["json"]["max_tokens"] == 8


@pytest.mark.timeout(30)
def test_contract_400_fails_at_once(scripted: Callable[[list], ScriptedServer]) -> None:
    server = scripted([(400, {}, error_json("bad request: unknown parameter"))])
    client = openai_client(server.base_url, max_retries=5)
    with pytest.raises(ChatProviderError, match="refused") as info:
        client.complete(QUESTION, max_tokens=8)
    assert server.base_url in str(info.value)
    assert "400" in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.timeout(30)
def test_contract_retries_give_up_after_max_retries(scripted: Callable[[list], ScriptedServer]) -> None:
    server = scripted([(503, {"Retry-After": "0"}, error_json("overloaded"))])
    with pytest.raises(ChatProviderError, match="after 3 attempt") as info:
        openai_client(server.base_url, max_retries=2).complete(QUESTION, max_tokens=8)
    assert len(server.requests) == 3
    assert "503" in str(info.value) and server.base_url in str(info.value)


@pytest.mark.timeout(120)
def test_requests_per_minute_spaces_calls(llama_server: LlamaServer) -> None:
    client = openai_client(llama_server.base_url, model=llama_server.model, requests_per_minute=120)
    starts: list[float] = []
    original = client._openai.chat.completions.create

    def timed(*args: Any, **kwargs: Any) -> Any:  # when each request really leaves for the server
        starts.append(time.monotonic())
        return original(*args, **kwargs)

    client._openai.chat.completions.create = timed
    for number in range(3):
        client.complete([{"role": "user", "content": f"Say the number {number}."}], max_tokens=2)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(gaps) == 2 and all(gap >= 0.45 for gap in gaps)  # 120 a minute: one every 0.5 s, at least


@pytest.mark.timeout(30)
def test_contract_api_key_never_appears_in_errors_or_logs(
    scripted: Callable[[list], ScriptedServer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("MEBOT_TEST_FAKE_KEY", secret)

    def echo_key(request: dict) -> Reply:
        auth = request["headers"].get("authorization", "")
        return 500, {"Retry-After": "0"}, error_json(f"server error for {auth}")

    def echo_key_401(request: dict) -> Reply:
        return 401, {}, error_json(f"Incorrect API key provided: {request['headers'].get('authorization')}")

    server = scripted([echo_key, echo_key_401])
    client = openai_client(server.base_url, api_key_env="MEBOT_TEST_FAKE_KEY", max_retries=1)
    with caplog.at_level(logging.WARNING, logger="mebot.resources.chat"), pytest.raises(ChatProviderError) as info:
        client.complete(QUESTION, max_tokens=8)
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {secret}"  # the key was really sent
    assert len(server.requests) == 2
    message = str(info.value)
    assert "401" in message and server.base_url in message
    assert secret not in message and secret not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "retry 1 of 1" in caplog.text and secret not in caplog.text

    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ChatProviderError) as unreachable:
        openai_client(closed, api_key_env="MEBOT_TEST_FAKE_KEY", max_retries=0).complete(QUESTION)
    assert secret not in str(unreachable.value)


def test_missing_key_for_a_remote_endpoint_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    with pytest.raises(ChatProviderError, match=UNSET_KEY_ENV) as info:
        openai_client("https://llm.example.invalid/v1")
    assert "https://llm.example.invalid/v1" in str(info.value)


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:9/v1", "http://localhost:8080/v1", "http://[::1]:1234/v1"])
def test_loopback_endpoint_without_key_gets_a_placeholder(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    client = openai_client(base_url)
    assert client._openai.api_key == "not-needed"


def priced_server_client(llama_server: LlamaServer, budget_usd: float, **overrides: Any) -> ChatClient:
    """The real server's model at $1 a token: "What is the capital of France?" (7 cl100k_base tokens) with max_tokens
    3 is estimated at $10 before the call; the server then reports the prompt with its chat template."""
    dollar_a_token = {llama_server.model: Price(prompt_per_1m=1_000_000, completion_per_1m=1_000_000)}
    return openai_client(
        llama_server.base_url, model=llama_server.model, prices=dollar_a_token, budget_usd=budget_usd, **overrides
    )


@pytest.mark.timeout(120)
def test_budget_stops_before_the_call_that_would_pass_it(llama_server: LlamaServer) -> None:
    client = priced_server_client(llama_server, budget_usd=15.0)
    first = client.complete(QUESTION, max_tokens=3)
    spent = first.prompt_tokens + first.completion_tokens  # at $1 a token, from the reported usage
    assert client.usage.cost_usd == pytest.approx(spent) and spent > 5  # not the estimate
    with pytest.raises(BudgetExceeded) as info:
        client.complete([{"role": "user", "content": "What is the capital of Spain?"}], max_tokens=3)
    assert client.usage.calls == 1  # refused before calling
    message = str(info.value)
    for part in ("1 calls done", f"${spent:.4f} spent", "$10.0000", "$15.00", "budget.max_usd", "cached"):
        assert part in message, (part, message)

    fresh = priced_server_client(llama_server, budget_usd=9.99)  # the first estimate alone is over the cap
    with pytest.raises(BudgetExceeded):
        fresh.complete(QUESTION, max_tokens=3)
    assert fresh.usage.calls == 0


@pytest.mark.timeout(120)
def test_budget_counts_calls_in_flight(llama_server: LlamaServer) -> None:
    questions = [[{"role": "user", "content": f"What is the capital of country number {n}?"}] for n in range(4)]
    estimate = priced_server_client(llama_server, 0.0).count_tokens(questions[0][0]["content"]) + 3  # USD, each
    # 2.5 estimates allowed: two calls may be in flight at once, not four.
    client = priced_server_client(llama_server, budget_usd=2.5 * estimate, max_concurrency=4)
    with pytest.raises(BudgetExceeded, match="in flight"):
        client.complete_batch(questions, max_tokens=3)
    assert client.usage.calls == 2  # the two that ran finished and were counted
    assert client.usage.cost_usd > 2 * 5


def test_budget_with_a_default_openai_price(llama_server: LlamaServer) -> None:
    settings = Settings()  # gpt-4o-mini's price from the default models.prices, for the server's model
    prices = {llama_server.model: settings.models.prices["gpt-4o-mini"]}
    client = openai_client(llama_server.base_url, model=llama_server.model, prices=prices, budget_usd=1e-7)
    with pytest.raises(BudgetExceeded):
        client.complete(QUESTION, max_tokens=256)
    assert client.usage.calls == 0


@pytest.mark.timeout(120)
def test_unpriced_openai_model_costs_nothing_and_warns_once(
    llama_server: LlamaServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_compatible, "_warned_unpriced", set())  # as in a fresh process
    client = openai_client(llama_server.base_url, model=llama_server.model, budget_usd=0.0)  # no price for it
    with caplog.at_level(logging.WARNING, logger="mebot.resources.chat"):
        for number in range(2):
            client.complete([{"role": "user", "content": f"Count to {number}."}], max_tokens=4)
    warnings = [r for r in caplog.records if llama_server.model in r.getMessage() and "no price" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not per call
    assert client.usage.cost_usd == 0.0 and client.usage.calls == 2


@pytest.mark.parametrize(
    ("model", "window"),
    [("gpt-4o-mini", 128_000), ("gpt-4", 8192), ("gpt-3.5-turbo-0125", 16385), ("/models/SmolLM2.gguf", 128_000)],
)
def test_openai_context_window(model: str, window: int) -> None:
    assert openai_context_window(model) == window


# ------------------------------------------------------- the real OpenAI-compatible server (llama.cpp's)


@pytest.mark.timeout(120)
def test_openai_sdk_chat_against_llama_cpp_server(llama_server: LlamaServer) -> None:
    # llama-cpp-python's server publishes no context size (its /v1/models has ids only): the setting gives it
    client = openai_client(llama_server.base_url, model=llama_server.model, context_window=llama_server.n_ctx)
    result = client.complete(QUESTION, max_tokens=12)
    assert result.text.strip()
    assert result.prompt_tokens > 5 and 1 <= result.completion_tokens <= 12
    assert result.finish_reason in {"stop", "length"}
    assert client.identity == f"openai:127.0.0.1:{llama_server.model}" == result.model
    assert client.context_window == llama_server.n_ctx == 2048
    # ...and it is the window the server really serves: a prompt just over it is refused
    over = [{"role": "user", "content": "word " * (llama_server.n_ctx + 16)}]
    with pytest.raises((ChatProviderError, openai.BadRequestError)):
        client.complete(over, max_tokens=4)
    assert client.count_tokens("What is the capital of France?") == 7  # cl100k_base


@pytest.mark.timeout(120)
def test_openai_sdk_logprobs_against_llama_cpp_server(llama_server: LlamaServer) -> None:
    client = openai_client(llama_server.base_url, model=llama_server.model)
    result = client.complete(QUESTION, max_tokens=6, logprobs=True, top_logprobs=5)
    assert result.logprobs and len(result.logprobs) == result.completion_tokens
    for lp in result.logprobs:
        assert lp.logprob <= 0
        assert len(lp.top) == 5
        assert lp.top[0][1] >= lp.top[-1][1]


@pytest.mark.timeout(60)
def test_unreachable_base_url_raises_naming_it_after_retries() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    client = openai_client(closed, max_retries=2, timeout_s=2)
    with pytest.raises(ChatProviderError) as info:  # within the test's timeout: it gives up, it does not hang
        client.complete(QUESTION, max_tokens=4)
    assert closed in str(info.value)
    assert "after 3 attempt" in str(info.value)
    assert "APIConnectionError" in str(info.value)
