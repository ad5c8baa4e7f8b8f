"""The chat model every LLM stage calls: the bundled SmolLM2 GGUF through llama.cpp, or any OpenAI-compatible
endpoint through the official `openai` SDK — one `ChatClient` subclass per provider, made by `chat_client`.

Every client adds the call cache, the budget and `Usage` counters (base.py); per provider: llama_cpp.py and
openai_compatible.py. How the cache and the budget work: docs/rag.md."""

from mebot.resources.chat.base import (
    BUDGET_SCOPE_ENV_VAR,
    BUDGET_SCOPE_TAG,
    ChatClient,
    RetryableError,
    budget_scope_from_env,
    new_budget_scope,
    template_head,
)
from mebot.resources.chat.factory import PROVIDERS, ChatModelResource, chat_client
from mebot.resources.chat.llama_cpp import BUNDLED_GGUF_NAME, BUNDLED_GGUF_PACKAGE, LlamaCppChat, bundled_gguf_path
from mebot.resources.chat.openai_compatible import OPENAI_CONTEXT_WINDOW, OpenAIChat, openai_context_window
from mebot.resources.chat.pacing import RatePacer, backoff_delay_s
from mebot.resources.chat.results import (
    BudgetExceeded,
    ChatProviderError,
    ChatResult,
    TokenLogprob,
    Usage,
    cost_usd,
)
from mebot.resources.endpoints import DEFAULT_OPENAI_BASE_URL
from mebot.resources.layout import LLM_CACHE_FILE as CACHE_FILE_NAME
from mebot.resources.settings import Price

__all__ = [
    "BUDGET_SCOPE_ENV_VAR",
    "BUDGET_SCOPE_TAG",
    "BUNDLED_GGUF_NAME",
    "BUNDLED_GGUF_PACKAGE",
    "CACHE_FILE_NAME",
    "DEFAULT_OPENAI_BASE_URL",
    "OPENAI_CONTEXT_WINDOW",
    "PROVIDERS",
    "BudgetExceeded",
    "ChatClient",
    "ChatModelResource",
    "ChatProviderError",
    "ChatResult",
    "LlamaCppChat",
    "OpenAIChat",
    "Price",
    "RatePacer",
    "RetryableError",
    "TokenLogprob",
    "Usage",
    "backoff_delay_s",
    "budget_scope_from_env",
    "bundled_gguf_path",
    "chat_client",
    "cost_usd",
    "new_budget_scope",
    "openai_context_window",
    "template_head",
]
