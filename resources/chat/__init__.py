"""The chat model every LLM stage calls: the bundled SmolLM2 GGUF through llama.cpp, or any OpenAI-compatible
endpoint through the official `openai` SDK — one `ChatClient` subclass per provider, made by `chat_client`.

What every client adds on top of a bare call (base.py):
- a persistent cache (`LlmCache`) keyed by provider, model identity, every generation parameter and the full
  messages, so a re-run (also of a run killed halfway) repeats no finished call;
- a budget: before each uncached call its cost is estimated and the call refused (`BudgetExceeded`) when it
  would take the run past `budget.max_usd`; the actual cost comes from the usage the provider reports. A run's
  processes share one budget: `mebot run`/`serve`/`sweep` set $MEBOT_BUDGET_SCOPE and every paid call is
  recorded under it in the call cache's ledger (SQLite or PostgreSQL), which each call reads first;
- `Usage` counters that assets put in their materialization metadata.

Per provider: llama_cpp.py (`LlamaCppChat`: GGUF loading, LoRA adapters, threads, logprobs) and
openai_compatible.py (`OpenAIChat`: API key, retries on 429/5xx/timeouts with Retry-After, pacing, prices).
"""

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
