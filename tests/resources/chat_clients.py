"""What the chat client tests share (test_chat.py, test_chat_openai.py): the question they ask, and a client of
the OpenAI-compatible provider on a given endpoint whose key variable is never set (loopback needs no key)."""

from __future__ import annotations

from typing import Any

from mebot.resources.chat import ChatClient, chat_client
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings, Price

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
UNSET_KEY_ENV = "MEBOT_TEST_KEY_THAT_IS_NOT_SET"


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
