"""`ChatClient`: what every chat provider shares — the call cache, the budget, usage counters, the retry loop
and the public `complete` / `complete_batch` — around the few hooks each provider implements: a subclass sets
`identity` and `context_window` and implements `count_tokens` and `_generate`; a paid provider also overrides
`_price` and `_prompt_estimate`."""

from __future__ import annotations

import logging
import os
import string
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, ClassVar

from mebot.resources.chat.pacing import RETRY_AFTER_MAX_S, backoff_delay_s
from mebot.resources.chat.results import (
    BudgetExceeded,
    ChatProviderError,
    ChatResult,
    Usage,
    cost_usd,
    result_from_cache,
    result_to_cache,
)
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings, Price

log = logging.getLogger(__name__)


class RetryableError(Exception):
    """Raised by one attempt of a provider call that may succeed when tried again (a 429, a 5xx, a timeout)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # what the server asked for; None: exponential backoff


def template_head(template: str, **known: str) -> str:
    """What every prompt of a `str.format` template starts with: its text before the first field not in `known`
    (fields in `known` filled in). Passed as `prompt_prefix`, the fixed head a local model evaluates once."""
    head = []
    for literal, field_name, spec, conversion in string.Formatter().parse(template):
        head.append(literal)
        if field_name is None or field_name not in known:
            break
        field = "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        head.append(field.format(**known))
    return "".join(head)


BUDGET_SCOPE_ENV_VAR = "MEBOT_BUDGET_SCOPE"  # set by `mebot run`/`serve`/`sweep`, inherited by their processes
BUDGET_SCOPE_TAG = "mebot/budget_scope"  # the same scope as a Dagster run tag, for steps in other processes


def budget_scope_from_env() -> str | None:
    """The budget scope this process spends in ($MEBOT_BUDGET_SCOPE; None: each client its own budget)."""
    return os.environ.get(BUDGET_SCOPE_ENV_VAR) or None


def new_budget_scope(command: str) -> str:
    """A fresh scope for one command (`run-<hex>`): every process it starts shares its budget."""
    return f"{command}-{uuid.uuid4().hex[:12]}"


class ChatClient(ABC):
    """One chat model with its cache, budget, retries and usage counters; safe to use from several threads."""

    provider: ClassVar[str]  # models.chat.provider; part of every cache key

    def __init__(
        self,
        chat: ChatModelSettings,
        *,
        prices: dict[str, Price] | None = None,
        cache: LlmCache | None = None,
        budget_usd: float | None = None,
        budget_scope: str | None = None,
        usage: Usage | None = None,
    ):
        if chat.provider != self.provider:
            raise ValueError(f"{type(self).__name__} serves provider {self.provider!r}, not {chat.provider!r}")
        self.chat = chat
        self.prices = prices if prices is not None else {}
        self.cache = cache
        self.budget_usd = budget_usd
        # With a scope and a cache, the budget is the scope's (every client of a `mebot run`, in all its processes,
        # reads and adds to one ledger in the cache); without, this client's own spend.
        self.budget_scope = budget_scope if cache is not None else None
        self.usage = usage if usage is not None else Usage()
        self._budget_lock = threading.Lock()
        self._reserved_usd = 0.0  # estimates of calls in flight
        # Set by each provider's constructor:
        self.identity = ""  # names the model in cache keys and results; a different model never shares it
        self.context_window = 0
        self.base_url = ""  # remote providers only
        self.lora_path: str | None = None  # llama.cpp only
        self.reuses_prompt_prefix = False  # whether `prompt_prefix` changes how the call is made

    # ----------------------------------------------------------------------------------- provider hooks

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as the model counts them (or as near as the provider lets us know)."""

    @abstractmethod
    def _generate(self, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        """One uncached call with the normalised `params` (see `complete`); `latency_s` is filled in by the caller."""

    def _price(self) -> Price | None:
        """The price of this model's tokens; None: free (local) or unknown."""
        return None

    def _prompt_estimate(self, messages: list[dict]) -> int:
        """Prompt tokens estimated before the call, for the budget (and a provider's pacing); 0 when free."""
        return 0

    def _redact(self, text: str) -> str:
        """`text` with any secret the provider holds taken out (for errors and logs)."""
        return text

    def warm_up(self) -> None:  # noqa: B027 - an optional hook: nothing to load for a remote provider
        """Load the local model's weights now rather than on the first call (no-op for remote providers)."""

    # ------------------------------------------------------------------------------------------- public

    def complete(
        self,
        messages: list[dict],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        logprobs: bool = False,
        top_logprobs: int = 0,
        stop: list[str] | None = None,
        seed: int | None = None,
        grammar: str | None = None,
        response_format: dict | None = None,
        repeat_penalty: float | None = None,
        repeat_last_n: int | None = None,
        frequency_penalty: float | None = None,
        logit_bias: dict[str | int, float] | None = None,
        prompt_prefix: str | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> ChatResult:
        """One chat call (from the cache when an identical one was made before).

        Optional controls, each sent (and part of the cache key) only when set, so the keys of calls that do not
        use them stay what they were: `grammar` (GBNF text the output must match: llama.cpp, and llama.cpp's
        server through the request body), `response_format` (OpenAI's `{"type": "json_schema", ...}` or
        `{"type": "json_object"}`; llama.cpp turns a JSON schema into a grammar), `repeat_penalty` (llama.cpp's
        multiplicative penalty on recent tokens; 1.0 = off), `repeat_last_n` (how many recent tokens llama.cpp
        penalises; 64 when not set), `frequency_penalty` (OpenAI's and llama.cpp's
        additive penalty per earlier occurrence), `logit_bias` ({token id: bias}, the provider's token ids),
        `prompt_prefix` (text the last message starts with that many calls share, a template's fixed head: a
        provider with `reuses_prompt_prefix` evaluates it once and keeps its state for the next call; others,
        OpenAI's automatic prompt caching among them, ignore it and leave it out of the key).

        `on_token` streams the answer: it is called with each piece of text as the model generates it (llama.cpp
        and OpenAI-compatible providers stream; any other provider, and a cached answer, gives the whole text as
        one piece). It is not part of the cache key, and an exception it raises stops the generation. A provider
        finds it in `params["on_token"]` (never in the key)."""
        started = time.perf_counter()
        params = self._call_params(
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            stop=stop,
            seed=seed,
            grammar=grammar,
            response_format=response_format,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            frequency_penalty=frequency_penalty,
            logit_bias=logit_bias,
            prompt_prefix=prompt_prefix,
        )
        key = None
        if self.cache is not None:
            # The key's inputs are a contract with every existing cache file: change none of them.
            key = LlmCache.key(self.chat.provider, self.identity, params, messages)
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.record(cache_hit=True)
                cached = result_from_cache(hit, time.perf_counter() - started)
                if on_token is not None and cached.text:
                    on_token(cached.text)
                return cached
        result, cost = self._priced_generation(messages, params, on_token)
        result.latency_s = time.perf_counter() - started
        if self.cache is not None and key is not None:
            self.cache.put(key, result_to_cache(result, cost))
        if self.budget_scope is not None and self.cache is not None and cost > 0:
            self.cache.record_spend(self.budget_scope, cost)
        return result

    def _call_params(
        self,
        messages: list[dict],
        *,
        temperature: float,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        stop: list[str] | None,
        seed: int | None,
        grammar: str | None,
        response_format: dict | None,
        repeat_penalty: float | None,
        repeat_last_n: int | None,
        frequency_penalty: float | None,
        logit_bias: dict[str | int, float] | None,
        prompt_prefix: str | None,
    ) -> dict[str, Any]:
        """The call's parameters as the provider and the cache key see them; a malformed call is refused."""
        if not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        if grammar is not None and response_format is not None:
            raise ValueError("give either grammar or response_format, not both: each constrains the whole output")
        params: dict[str, Any] = {
            "temperature": float(temperature),
            "max_tokens": int(max_tokens),
            "logprobs": bool(logprobs),
            "top_logprobs": int(top_logprobs) if logprobs else 0,  # no effect without logprobs
            "stop": list(stop) if stop else None,
            "seed": seed,
        }
        # Only when set: a call without them keeps the key it always had (see test_cache_keys_...).
        optional = {
            "grammar": None if grammar is None else str(grammar),
            "response_format": response_format,
            "repeat_penalty": None if repeat_penalty is None else float(repeat_penalty),
            "repeat_last_n": None if repeat_last_n is None else int(repeat_last_n),
            "frequency_penalty": None if frequency_penalty is None else float(frequency_penalty),
            "logit_bias": {str(t): float(b) for t, b in logit_bias.items()} if logit_bias else None,
        }
        params.update({name: value for name, value in optional.items() if value is not None})
        if prompt_prefix and self.reuses_prompt_prefix:
            last = messages[-1].get("content")
            if not isinstance(last, str) or not last.startswith(prompt_prefix):
                raise ValueError(f"prompt_prefix {prompt_prefix[:40]!r}… is not how the last message starts")
            params["prompt_prefix"] = prompt_prefix  # evaluated in two pieces: another answer, another key
        return params

    def _priced_generation(
        self, messages: list[dict], params: dict[str, Any], on_token: Callable[[str], None] | None
    ) -> tuple[ChatResult, float]:
        """Generate under the budget: the estimate is reserved first and becomes the actual cost after."""
        price = self._price()
        prompt_estimate = self._prompt_estimate(messages)
        estimate_usd = cost_usd(price, prompt_estimate, params["max_tokens"])
        self._reserve(estimate_usd)
        streamed: list[bool] = []
        if on_token is not None:

            def relay(piece: str) -> None:
                streamed.append(True)
                on_token(piece)

            params = {**params, "on_token": relay}  # after the key: streaming never changes it
        try:
            result = self._generate(messages, params, prompt_estimate)
            if on_token is not None and not streamed and result.text:
                on_token(result.text)  # a provider that does not stream: the whole answer at once
        except BaseException:
            with self._budget_lock:
                self._reserved_usd -= estimate_usd
            raise
        cost = cost_usd(price, result.prompt_tokens, result.completion_tokens)
        with self._budget_lock:  # the estimate becomes the actual cost in one step for concurrent callers
            self._reserved_usd -= estimate_usd
            self.usage.record(
                cache_hit=None if self.cache is None else False,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                cost_usd=cost,
            )
        return result, cost

    def complete_batch(
        self,
        batch: list[list[dict]],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        **params: Any,
    ) -> list[ChatResult]:
        """`complete` for each conversation, results in input order, at most chat.max_concurrency in flight.

        The first failure stops queued calls; the ones in flight finish (and are cached) before it is raised.
        """
        total = len(batch)
        if total == 0:
            return []
        results: list[ChatResult | None] = [None] * total
        error: BaseException | None = None
        done = 0
        pool = ThreadPoolExecutor(max_workers=min(self.chat.max_concurrency, total), thread_name_prefix="chat")
        try:
            futures = {pool.submit(self.complete, messages, **params): i for i, messages in enumerate(batch)}
            for future in as_completed(futures):
                error = future.exception()
                if error is not None:
                    break
                results[futures[future]] = future.result()
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error
        return results  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity})"

    def _fresh(
        self, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str, logprobs: Any
    ) -> ChatResult:
        """A result of this model just computed (`complete` fills in the latency)."""
        return ChatResult(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            model=self.identity,
            logprobs=logprobs,
            cached=False,
            latency_s=0.0,
        )

    # ------------------------------------------------------------------------------------------- budget

    def _spent(self) -> float:
        if self.budget_scope is not None and self.cache is not None:
            return self.cache.spent(self.budget_scope)
        return self.usage.cost_usd

    def _reserve(self, estimate_usd: float) -> None:
        with self._budget_lock:
            capped = self.budget_usd is not None and estimate_usd > 0  # a free call (local model) reads no ledger
            spent = self._spent() if capped else 0.0
            if capped and spent + self._reserved_usd + estimate_usd > self.budget_usd:
                whose = "by this run (all its processes)" if self.budget_scope else "by this client"
                raise BudgetExceeded(
                    f"budget reached: {self.usage.calls} calls done here ({self.usage.cache_hits} from the cache), "
                    f"${spent:.4f} spent {whose}"
                    + (f" and ${self._reserved_usd:.4f} in flight" if self._reserved_usd else "")
                    + f"; the next call to {self.identity} is estimated at ${estimate_usd:.4f}, which would pass "
                    f"the cap of ${self.budget_usd:.2f} (budget.max_usd). Every finished call stays cached: raise "
                    "budget.max_usd and run again to continue where this stopped."
                )
            self._reserved_usd += estimate_usd

    # ------------------------------------------------------------------------------------------ retries

    def _with_retries(self, attempt: Callable[[], ChatResult]) -> ChatResult:
        """`attempt()` until it returns, at most chat.max_retries + 1 times. Between tries that raised
        `RetryableError` it waits what the server asked (capped) or a full-jitter backoff; any other error
        passes through at once. Gives up with ChatProviderError naming the base_url and the last error."""
        attempts = self.chat.max_retries + 1
        last_error = ""
        for number in range(attempts):
            try:
                return attempt()
            except RetryableError as retry:
                last_error, retry_after = retry.message, retry.retry_after_s
            if number + 1 < attempts:
                delay = min(retry_after, RETRY_AFTER_MAX_S) if retry_after is not None else backoff_delay_s(number)
                log.warning(
                    "chat provider at %s: %s; retry %d of %d in %.2f s",
                    self.base_url,
                    self._redact(last_error),
                    number + 1,
                    self.chat.max_retries,
                    delay,
                )
                time.sleep(delay)
        raise ChatProviderError(
            f"the chat provider at {self.base_url} failed after {attempts} attempt(s); last error: "
            f"{self._redact(last_error)}"
        )
