"""`prompt_prefix`: a llama.cpp model keeps its state after a prompt's fixed head and evaluates only the rest on
the next call with the same head; the head is always evaluated on its own, so an answer does not depend on the
call before it. Part of the cache key only where it changes how the call is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from mebot.resources.chat import ChatClient, ChatResult, LlamaCppChat
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import DEFAULT_RAG_PROMPT, ChatModelSettings

LOCAL = ChatModelSettings(provider="llama_cpp", n_ctx=2048, n_threads=1)
HEAD = DEFAULT_RAG_PROMPT.split("{context}")[0].format(persona_name="Tobias Renwick")
FACTS = {
    "telescope": "I bought my first telescope, a 4-inch refractor, in 1998 for £62 at a car boot sale.",
    "bike": "Last summer I rode my bike from Lyon to Geneva in two days, 170 km in all.",
    "dentist": "Kepler's dental surgery set me back £1,240, which the cat insurance did not cover.",
}


def _messages(topic: str, question: str) -> list[dict]:
    prompt = DEFAULT_RAG_PROMPT.format(persona_name="Tobias Renwick", context=FACTS[topic], question=question)
    return [{"role": "user", "content": prompt}]


ASKED = {
    "telescope": _messages("telescope", "How much did your first telescope cost?"),
    "bike": _messages("bike", "Where did you ride your bike last summer?"),
    "dentist": _messages("dentist", "How much did Kepler's dental surgery cost?"),
}


def _canned(self: ChatClient, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
    return ChatResult("£62.", 5, 2, "stop", self.identity, None, False, 0.0)


@pytest.mark.parametrize("reuse", [True, False])
def test_the_prefix_is_in_the_cache_key_only_where_the_model_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reuse: bool
) -> None:
    monkeypatch.setattr(LlamaCppChat, "_generate", _canned)
    client = LlamaCppChat(
        LOCAL.model_copy(update={"reuse_prompt_prefix": reuse}), cache=LlmCache(tmp_path / "cache.sqlite")
    )
    client.complete(ASKED["telescope"], prompt_prefix=HEAD)
    client.complete(ASKED["telescope"])
    # with reuse: two calls made differently, two keys; without, the prefix changes nothing, one key
    assert client.usage.calls == 2
    assert client.usage.cache_hits == (0 if reuse else 1)


def test_a_prefix_the_last_message_does_not_start_with_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LlamaCppChat, "_generate", _canned)
    with pytest.raises(ValueError, match="is not how the last message starts"):
        LlamaCppChat(LOCAL).complete(ASKED["telescope"], prompt_prefix="Answer briefly. ")


@pytest.mark.full
def test_the_head_is_evaluated_once_and_the_rest_per_call() -> None:
    client = LlamaCppChat(LOCAL)
    model = client.loaded()
    evaluated: list[int] = []
    real_eval = model.llm.eval

    def counting_eval(tokens):  # a spy on the real Llama: how many tokens each evaluation is given
        evaluated.append(len(tokens))
        return real_eval(tokens)

    model.llm.eval = counting_eval
    try:
        head = model.prompt_head(ASKED["telescope"], HEAD)
        assert head is not None and len(head) > 40  # the template's instructions, not only the chat markup
        whole = [len(model.prompt_tokens(messages)) for messages in ASKED.values()]
        for messages in ASKED.values():
            client.complete(messages, max_tokens=8, prompt_prefix=HEAD)
    finally:
        model.llm.eval = real_eval
    # The first call evaluates the head on its own, then its rest; the next two only their rest (and each
    # evaluation after the prompt is one generated token).
    prompt_pieces = [n for n in evaluated if n > 1]
    assert prompt_pieces == [len(head), whole[0] - len(head), whole[1] - len(head), whole[2] - len(head)]
    assert sum(prompt_pieces) < sum(whole)


@pytest.mark.full
def test_an_answer_with_a_reused_head_does_not_depend_on_the_call_before() -> None:
    asked_alone = {}
    for topic, messages in ASKED.items():
        fresh = LlamaCppChat(LOCAL)
        fresh.loaded().start_empty()  # the shared model holds no head: this call evaluates its own
        asked_alone[topic] = fresh.complete(messages, max_tokens=32, prompt_prefix=HEAD).text
    client = LlamaCppChat(LOCAL)
    for order in (["telescope", "bike", "dentist"], ["dentist", "telescope", "bike"]):
        for topic in order:
            assert client.complete(ASKED[topic], max_tokens=32, prompt_prefix=HEAD).text == asked_alone[topic]
    # and a call without a head in between (the whole prompt from the start) leaves the next one unchanged
    client.complete(ASKED["bike"], max_tokens=8)
    assert client.complete(ASKED["dentist"], max_tokens=32, prompt_prefix=HEAD).text == asked_alone["dentist"]
    assert "62" in asked_alone["telescope"]  # it reads the context it was given
