"""Making a chat client: `chat_client` picks the provider's subclass; `ChatModelResource` is the Dagster
resource that makes clients with the project's call cache, prices and budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from mebot.resources.chat.base import BUDGET_SCOPE_TAG, ChatClient, budget_scope_from_env
from mebot.resources.chat.llama_cpp import LlamaCppChat
from mebot.resources.chat.openai_compatible import OpenAIChat
from mebot.resources.chat.results import Usage
from mebot.resources.layout import LLM_CACHE_FILE
from mebot.resources.llm_cache import LlmCache, open_llm_cache
from mebot.resources.settings import ChatModelSettings, Price, Settings

PROVIDERS: dict[str, type[LlamaCppChat] | type[OpenAIChat]] = {"llama_cpp": LlamaCppChat, "openai": OpenAIChat}


def chat_client(
    chat: ChatModelSettings,
    *,
    prices: dict[str, Price] | None = None,
    cache: LlmCache | None = None,
    budget_usd: float | None = None,
    budget_scope: str | None = None,
    lora_path: str | None = None,
    usage: Usage | None = None,
) -> ChatClient:
    """A client for `chat`'s provider: the one way to make one (no cache and no budget unless given)."""
    provider = PROVIDERS.get(chat.provider)
    if provider is None:  # pragma: no cover - settings validation allows only the providers above
        raise ValueError(f"unknown chat provider {chat.provider!r}; known: {', '.join(PROVIDERS)}")
    return provider(
        chat,
        prices=prices or {},
        cache=cache,
        budget_usd=budget_usd,
        budget_scope=budget_scope,
        lora_path=lora_path,
        usage=usage,
    )


class ChatModelResource(dg.ConfigurableResource):
    """Dagster resource: the chat model from mebot.yaml's models.chat, with the call cache under cache_dir."""

    cache_dir: str
    # A postgresql:// URL: the call cache lives in that PostgreSQL (workers on several machines share it; see
    # pipeline/deploy/). Empty: SQLite under cache_dir.
    cache_url: str = ""
    _run_budget_scope: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A run tagged with a budget scope (`mebot sweep` tags its runs: their steps may run on Celery workers that
        # share no environment with the command) spends in that scope.
        run = context.dagster_run
        self._run_budget_scope = (run.tags.get(BUDGET_SCOPE_TAG) if run is not None else None) or None

    def budget_scope(self) -> str | None:
        """Where this resource's clients count their spend: the run's scope tag, else $MEBOT_BUDGET_SCOPE (set by
        `mebot run`/`serve`/`sweep` for their processes), else none (each client its own budget)."""
        return self._run_budget_scope or budget_scope_from_env()

    def cache_path(self, settings: Settings) -> Path:
        return settings.resolve_path(self.cache_dir) / LLM_CACHE_FILE

    def open_cache(self, settings: Settings) -> LlmCache:
        """The call cache: PostgreSQL at cache_url when set, else the SQLite file under cache_dir."""
        return open_llm_cache(self.cache_url or self.cache_path(settings))

    def client(
        self, settings: Settings, *, lora_path: str | None = None, chat: ChatModelSettings | None = None
    ) -> ChatClient:
        """A client for models.chat, or for `chat` (e.g. models.judge, or a fine-tuned model's settings)."""
        cache = self.open_cache(settings) if settings.models.use_cache else None
        return self.new_client(
            chat or settings.models.chat,
            prices=settings.models.prices,
            cache=cache,
            budget_usd=settings.budget.max_usd,
            budget_scope=self.budget_scope(),
            lora_path=lora_path,
        )

    def new_client(self, chat: ChatModelSettings, **options: Any) -> ChatClient:
        """The provider's client with the cache, prices and budget `client` set up (tests swap in a fake here)."""
        return chat_client(chat, **options)
