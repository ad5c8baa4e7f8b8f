"""What a chat call returns, what a client spent, how a result is stored in the call cache, and the errors."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mebot.resources.settings import Price


class ChatProviderError(RuntimeError):
    """The provider could not be used: unreachable, or bad responses after the retries. Names the base_url."""


class BudgetExceeded(RuntimeError):
    """The next call would take the run past budget.max_usd; every finished call stays cached."""


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]  # the top alternatives at this position (token, logprob), best first


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    model: str  # the model identity
    logprobs: list[TokenLogprob] | None
    cached: bool
    latency_s: float


@dataclass
class Usage:
    """What one asset run (or client) spent; updated from several threads.

    `calls` counts every `complete` (cache hits included); hits and misses are counted when a cache is in use.
    Token counts and cost are the model work actually done, so cache hits add nothing to them.
    """

    calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not a field: asdict/replace/copy keep working

    def record(
        self, *, cache_hit: bool | None, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        """One finished call; `cache_hit` None when no cache was consulted."""
        with self._lock:
            self.calls += 1
            if cache_hit is True:
                self.cache_hits += 1
            elif cache_hit is False:
                self.cache_misses += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += cost_usd

    def as_metadata(self) -> dict[str, dg.MetadataValue]:
        with self._lock:
            return {
                "llm_calls": dg.MetadataValue.int(self.calls),
                "llm_cache_hits": dg.MetadataValue.int(self.cache_hits),
                "llm_cache_misses": dg.MetadataValue.int(self.cache_misses),
                "prompt_tokens": dg.MetadataValue.int(self.prompt_tokens),
                "completion_tokens": dg.MetadataValue.int(self.completion_tokens),
                "cost_usd": dg.MetadataValue.float(round(self.cost_usd, 6)),
            }


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float:
    """What a call costs at `price` (None: unpriced or local, $0)."""
    if price is None:
        return 0.0
    return (prompt_tokens * price.prompt_per_1m + completion_tokens * price.completion_per_1m) / 1_000_000


# ----------------------------------------------------------------------------------------------- logprobs


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _top_alternatives(entries: Any, limit: int) -> list[tuple[str, float]]:
    pairs = [(_field(e, "token"), float(_field(e, "logprob"))) for e in entries or []]
    pairs.sort(key=lambda pair: pair[1], reverse=True)
    return pairs[:limit]


def convert_logprobs(content: Any, top_n: int) -> list[TokenLogprob]:
    """llama.cpp's or OpenAI's `logprobs.content` as TokenLogprob entries, alternatives best first."""
    return [
        TokenLogprob(
            token=_field(entry, "token"),
            logprob=float(_field(entry, "logprob")),
            top=_top_alternatives(_field(entry, "top_logprobs"), top_n),
        )
        for entry in content or []
    ]


# -------------------------------------------------------------------------------------------- cache values


def result_to_cache(result: ChatResult, cost: float) -> dict:
    return {
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "model": result.model,
        "logprobs": None
        if result.logprobs is None
        else [[lp.token, lp.logprob, [list(alt) for alt in lp.top]] for lp in result.logprobs],
        "cost_usd": cost,
        "latency_s": result.latency_s,
    }


def result_from_cache(value: dict, latency_s: float) -> ChatResult:
    logprobs = value.get("logprobs")
    return ChatResult(
        text=value["text"],
        prompt_tokens=int(value["prompt_tokens"]),
        completion_tokens=int(value["completion_tokens"]),
        finish_reason=value["finish_reason"],
        model=value["model"],
        logprobs=None
        if logprobs is None
        else [TokenLogprob(token, float(lp), [(t, float(p)) for t, p in top]) for token, lp, top in logprobs],
        cached=True,
        latency_s=latency_s,
    )
