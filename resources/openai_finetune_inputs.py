"""What an OpenAI fine-tuning job is asked for and what it may cost, decided before any request: the sweep
point's `JobSpec`, the `TrainingFile`s (bytes and sha256), the cost estimate and the budget check, and the SDK
client for the endpoint (key from the environment, the SDK's own retries). `openai_finetune.py` runs the job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import openai

from mebot.resources.chat import BudgetExceeded
from mebot.resources.endpoints import api_key_from_env, openai_base_url
from mebot.resources.settings import ChatModelSettings


class OpenAIFinetuneError(RuntimeError):
    """The fine-tuning API could not be used (unreachable, refused, or a record that cannot be trusted)."""


class FinetuneJobFailed(OpenAIFinetuneError):
    """The job ended as failed or cancelled; the message names the job id and OpenAI's error."""


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class JobSpec:
    """What one sweep point asks OpenAI for."""

    partition_key: str
    base_model: str
    suffix: str
    seed: int
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }

    def method(self) -> dict[str, Any]:
        return {"type": "supervised", "supervised": {"hyperparameters": self.hyperparameters()}}


@dataclass(frozen=True)
class TrainingFile:
    """One JSONL file's bytes, as uploaded (name as OpenAI shows it)."""

    name: str
    content: bytes
    examples: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class CostEstimate:
    training_tokens: int  # tokens in the training file (cl100k_base, as OpenAI's cookbook counts them)
    n_epochs: int
    base_model: str
    price_per_1m: float | None  # None: no price known for the base model
    usd: float | None

    @property
    def billed_tokens(self) -> int:
        return self.training_tokens * self.n_epochs


def estimate_training_cost(
    training_tokens: int, n_epochs: int, base_model: str, price_per_1m: float | None
) -> CostEstimate:
    """Training tokens x epochs x USD per 1M tokens (`price_per_1m` None: unknown, so no estimate)."""
    usd = None if price_per_1m is None else training_tokens * n_epochs * price_per_1m / 1_000_000
    return CostEstimate(training_tokens, n_epochs, base_model, price_per_1m, usd)


def check_budget(estimate: CostEstimate, budget_usd: float) -> None:
    """Refuse (BudgetExceeded) a job whose estimated cost is unknown or above `budget_usd` (budget.max_usd)."""
    if estimate.usd is None:
        raise BudgetExceeded(
            f"no training price is known for base model {estimate.base_model!r}, so the job's cost "
            f"({estimate.billed_tokens} training tokens = {estimate.training_tokens} x {estimate.n_epochs} epochs) "
            f"cannot be checked against budget.max_usd (${budget_usd:.2f}): refused before creating it. Set "
            "finetune.openai.training_price_per_1m to the model's USD price per 1M training tokens."
        )
    if estimate.usd > budget_usd:
        raise BudgetExceeded(
            f"the fine-tuning job is estimated at ${estimate.usd:.4f} ({estimate.billed_tokens} training tokens = "
            f"{estimate.training_tokens} x {estimate.n_epochs} epochs at ${estimate.price_per_1m:.2f} per 1M for "
            f"{estimate.base_model}), over budget.max_usd (${budget_usd:.2f}): refused before creating it. Raise "
            "budget.max_usd, or train on fewer tokens or epochs."
        )


# ---------------------------------------------------------------------------------------------------- client


def endpoint_url(chat: ChatModelSettings) -> str:
    """The fine-tuning endpoint: models.chat.base_url, else OPENAI_BASE_URL, else OpenAI itself."""
    return openai_base_url(chat.base_url)


def openai_client(chat: ChatModelSettings, *, http_client: Any = None) -> openai.OpenAI:
    """An SDK client for the endpoint of models.chat, retrying 429/5xx/timeouts `chat.max_retries` times.
    `http_client`: an httpx client of your own (a proxy, a custom CA, a recorded transport)."""
    base_url = endpoint_url(chat)
    key = api_key_from_env(chat.api_key_env, base_url)
    if key is None:
        raise OpenAIFinetuneError(
            f"fine-tuning at {base_url} needs an API key: set the environment variable {chat.api_key_env} "
            "(in the environment or in .env), or change models.chat.api_key_env"
        )
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=chat.max_retries,
        timeout=chat.timeout_s,
        http_client=http_client,
    )
