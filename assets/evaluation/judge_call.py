"""How the LLM judge is called: which model gives the logprob score and which writes the direct score
(`models.judge_logprob`, `models.judge_direct`, each defaulting to `models.judge`), and the constraint that makes
every reply a score (`eval.judge_constrained`). When both methods use the same model, one greedy call serves both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mebot.assets.evaluation.judge_reply import score_constraint
from mebot.resources.chat import ChatClient, ChatModelResource, ChatResult, Usage
from mebot.resources.settings import Settings

# OpenAI returns at most 20 alternatives per position. llama.cpp computes every token's logprob anyway, so asking
# for more costs nothing and keeps all 11 score tokens in the list even when the unconstrained model puts most of
# its mass elsewhere ("The", "\n"); a score digit missing from the list would count as 0 probability and pull
# the expected score down.
OPENAI_TOP_LOGPROBS = 20
LLAMA_CPP_TOP_LOGPROBS = 100
UNCONSTRAINED_MAX_TOKENS = 6  # enough for "10", "8/10", "Score: 7"


@dataclass
class JudgeClients:
    """The judge's models: `logprob` gives the score distribution, `direct` writes the score; `constrained`:
    replies are constrained to a score (grammar / JSON schema)."""

    logprob: ChatClient
    direct: ChatClient
    constrained: bool = True

    @property
    def same(self) -> bool:
        return self.logprob is self.direct or self.logprob.identity == self.direct.identity

    @property
    def identity(self) -> str:
        if self.same:
            return self.logprob.identity
        return f"logprob: {self.logprob.identity}; direct: {self.direct.identity}"

    @property
    def usage(self) -> Usage:
        """Both clients count into one Usage when made by `judge_clients`."""
        return self.logprob.usage


def as_judge(client: ChatClient | JudgeClients) -> JudgeClients:
    """A plain ChatClient judges both ways, constrained."""
    return client if isinstance(client, JudgeClients) else JudgeClients(client, client, True)


def judge_clients(chat_model: ChatModelResource, settings: Settings) -> JudgeClients:
    """The judge clients of `settings` (models.judge_logprob / models.judge_direct, else models.judge), sharing
    one cache, budget and usage count."""
    models = settings.models
    logprob_settings = models.judge_logprob or models.judge
    direct_settings = models.judge_direct or models.judge
    logprob = chat_model.client(settings, chat=logprob_settings)
    direct = logprob
    if direct_settings != logprob_settings:
        direct = chat_model.client(settings, chat=direct_settings)
        direct.usage = logprob.usage  # one count for the asset's metadata
    return JudgeClients(logprob, direct, settings.eval.judge_constrained)


def call_params(client: ChatClient, *, constrained: bool, logprobs: bool) -> dict[str, Any]:
    """`complete` arguments of one judge call: greedy, constrained to a score when asked, with logprobs."""
    provider = getattr(client, "provider", "")  # a stand-in without one is taken as OpenAI-compatible
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": UNCONSTRAINED_MAX_TOKENS}
    if constrained:
        params |= score_constraint(provider)
    if logprobs:
        top = LLAMA_CPP_TOP_LOGPROBS if provider == "llama_cpp" else OPENAI_TOP_LOGPROBS
        params |= {"logprobs": True, "top_logprobs": top}
    return params


def judge_calls(
    client: ChatClient | JudgeClients, messages: list[dict], methods: list[str]
) -> tuple[ChatResult | None, ChatResult]:
    """(the call with logprobs, or None when "logprob" is not a method; the call whose text is the written
    score). One call when the same model serves both methods."""
    judge = as_judge(client)
    scored = None
    if "logprob" in methods:
        scored = judge.logprob.complete(
            messages, **call_params(judge.logprob, constrained=judge.constrained, logprobs=True)
        )
        if judge.same or "direct" not in methods:
            return scored, scored
    written = judge.direct.complete(
        messages, **call_params(judge.direct, constrained=judge.constrained, logprobs=False)
    )
    return scored, written
