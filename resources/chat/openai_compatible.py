"""`OpenAIChat`: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp's server) through the official
`openai` SDK, with the API key from the environment (never in a log line or an exception message), retries with
backoff and jitter honouring Retry-After, client-side pacing, and prices from `models.prices` for the budget."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from mebot.resources import tokens
from mebot.resources.chat.base import ChatClient, RetryableError
from mebot.resources.chat.pacing import RatePacer, retry_after_s
from mebot.resources.chat.results import ChatProviderError, ChatResult, convert_logprobs
from mebot.resources.endpoints import PLACEHOLDER_API_KEY, api_key_from_env, openai_base_url
from mebot.resources.settings import ChatModelSettings, Price

log = logging.getLogger(__name__)

OPENAI_CONTEXT_WINDOW = 128_000
# Models known to read less than OPENAI_CONTEXT_WINDOW tokens (exact names, then name prefixes).
_SMALLER_OPENAI_WINDOWS = {"gpt-4": 8192, "gpt-4-0314": 8192, "gpt-4-0613": 8192}
_SMALLER_OPENAI_WINDOW_PREFIXES = (("gpt-3.5-turbo-instruct", 4096), ("gpt-3.5-turbo", 16385), ("gpt-4-32k", 32768))

_warned_unpriced: set[str] = set()
_warned_lock = threading.Lock()


def openai_context_window(model: str) -> int:
    if model in _SMALLER_OPENAI_WINDOWS:
        return _SMALLER_OPENAI_WINDOWS[model]
    for prefix, window in _SMALLER_OPENAI_WINDOW_PREFIXES:
        if model.startswith(prefix):
            return window
    return OPENAI_CONTEXT_WINDOW


def content_text(content: Any) -> str:
    """A message's content as plain text (a string, or the text parts of a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def openai_controls(params: dict) -> dict[str, Any]:
    """chat.completions.create arguments for the optional controls in `params` (only those that are set).

    `response_format`, `frequency_penalty` and `logit_bias` are OpenAI's own; `grammar`, `repeat_penalty` and
    `repeat_last_n` are not in OpenAI's API: they go in the request body for servers that read them (llama.cpp's
    server does; OpenAI itself refuses unknown fields with a 400)."""
    kwargs: dict[str, Any] = {}
    if params.get("response_format") is not None:
        kwargs["response_format"] = params["response_format"]
    if params.get("frequency_penalty") is not None:
        kwargs["frequency_penalty"] = params["frequency_penalty"]
    if params.get("logit_bias"):
        kwargs["logit_bias"] = params["logit_bias"]
    extra = {
        name: params[name] for name in ("grammar", "repeat_penalty", "repeat_last_n") if params.get(name) is not None
    }
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class OpenAIChat(ChatClient):
    """models.chat with provider openai: `chat.completions.create` on `base_url` (OpenAI itself by default)."""

    provider = "openai"

    def __init__(self, chat: ChatModelSettings, *, lora_path: str | None = None, **options: Any):
        """`options`: prices, cache, budget_usd, usage (ChatClient); `lora_path` is refused (an OpenAI fine-tune
        is a model name)."""
        if lora_path:
            raise ValueError("lora_path applies to provider llama_cpp; an OpenAI fine-tune is a model name")
        super().__init__(chat, **options)
        self.base_url = openai_base_url(chat.base_url)
        self._api_key = self._read_api_key()
        import openai

        self._openai = openai.OpenAI(
            base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=chat.timeout_s
        )
        self.identity = f"openai:{urlsplit(self.base_url).hostname or self.base_url}:{chat.model}"
        self.context_window = chat.context_window or openai_context_window(chat.model)
        self._request_pacer = RatePacer(chat.requests_per_minute) if chat.requests_per_minute else None
        self._token_pacer = RatePacer(chat.tokens_per_minute) if chat.tokens_per_minute else None

    def _read_api_key(self) -> str:
        key = api_key_from_env(self.chat.api_key_env, self.base_url)
        if key is None:
            raise ChatProviderError(
                f"the chat provider at {self.base_url} needs an API key: set the environment variable "
                f"{self.chat.api_key_env} (in the environment or in .env), or change models.chat.api_key_env"
            )
        return key

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "***")
        return text

    # ------------------------------------------------------------------------------------------- hooks

    def count_tokens(self, text: str) -> int:
        """cl100k_base tokens (the endpoint's own tokenizer is not known here)."""
        return tokens.count_tokens(text)

    def _prompt_estimate(self, messages: list[dict]) -> int:
        return sum(tokens.count_tokens(content_text(m.get("content"))) for m in messages)

    def _price(self) -> Price | None:
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

    def _generate(self, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
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
        kwargs.update(openai_controls(params))

        booked_tokens = prompt_estimate + params["max_tokens"]
        if self._token_pacer is not None:
            self._token_pacer.acquire(booked_tokens)
        on_token = params.get("on_token")
        if on_token is not None and not params["logprobs"]:
            return self._with_retries(lambda: self._attempt_stream(kwargs, prompt_estimate, booked_tokens, on_token))
        return self._with_retries(lambda: self._attempt(kwargs, params, prompt_estimate, booked_tokens))

    # ------------------------------------------------------------------------------------------ calls

    def _attempt(self, kwargs: dict[str, Any], params: dict, prompt_estimate: int, booked_tokens: int) -> ChatResult:
        """One request: the result, RetryableError (429, 408, 5xx, connection trouble, no choices), or
        ChatProviderError for a refusal that a retry cannot fix."""
        import openai

        if self._request_pacer is not None:
            self._request_pacer.acquire(1)
        try:
            response = self._openai.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            status = exc.status_code
            error = f"HTTP {status}: {type(exc).__name__}: {exc}"
            if status != 429 and status != 408 and status < 500:
                raise ChatProviderError(
                    f"the chat provider at {self.base_url} refused the request ({self._redact(error)})"
                ) from None
            raise RetryableError(error, retry_after_s(exc)) from None
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None
        if not getattr(response, "choices", None):
            raise RetryableError(f"a response without choices: {str(response)[:200]}")
        return self._result(response, params, prompt_estimate, booked_tokens)

    def _attempt_stream(
        self, kwargs: dict[str, Any], prompt_estimate: int, booked_tokens: int, on_token: Any
    ) -> ChatResult:
        """One streamed request (`stream=True`, usage asked for in the last chunk): `on_token` gets each piece as
        it arrives. Retried like `_attempt` only while no piece has been passed on; a failure after the first
        piece is final (ChatProviderError), since the text already shown cannot be taken back."""
        import openai

        if self._request_pacer is not None:
            self._request_pacer.acquire(1)
        parts: list[str] = []
        usage: Any = None
        finish_reason = ""
        try:
            stream = self._openai.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                usage = getattr(chunk, "usage", None) or usage
                for choice in getattr(chunk, "choices", None) or []:
                    piece = choice.delta.content if choice.delta is not None else None
                    if piece:
                        parts.append(piece)
                        on_token(piece)
                    finish_reason = choice.finish_reason or finish_reason
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            status = getattr(exc, "status_code", None)
            error = f"HTTP {status}: {type(exc).__name__}: {exc}" if status else f"{type(exc).__name__}: {exc}"
            if parts or (status is not None and status not in (408, 429) and status < 500):
                broke = " after part of the answer had been streamed" if parts else ""
                raise ChatProviderError(
                    f"the chat provider at {self.base_url} failed{broke} ({self._redact(error)})"
                ) from None
            raise RetryableError(error, retry_after_s(exc) if status else None) from None
        if not finish_reason:  # the connection ended before the answer did
            if parts:
                raise ChatProviderError(
                    f"the chat provider at {self.base_url} ended its stream after part of the answer had been "
                    "streamed, without a finish reason"
                )
            raise RetryableError("a stream that ended without an answer")
        text = "".join(parts)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage else prompt_estimate
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage else tokens.count_tokens(text)
        if self._token_pacer is not None:
            self._token_pacer.refund(booked_tokens - prompt_tokens - completion_tokens)
        return self._fresh(text, prompt_tokens, completion_tokens, finish_reason, None)

    def _result(self, response: Any, params: dict, prompt_estimate: int, booked_tokens: int) -> ChatResult:
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
            logprobs = convert_logprobs(content, params["top_logprobs"])
        return self._fresh(text, prompt_tokens, completion_tokens, choice.finish_reason or "", logprobs)
