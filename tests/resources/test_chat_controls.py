"""The optional output controls of `ChatClient.complete` (grammar, response_format, repeat_penalty,
frequency_penalty, logit_bias): part of the cache key only when set, passed to llama.cpp (a grammar call returns
only text the grammar allows) and to an OpenAI-compatible server (a scripted one records the request)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mebot.resources.chat import ChatClient, ChatResult, LlamaCppChat, chat_client
from mebot.resources.chat.llama_cpp import generation_controls, response_format_grammar
from mebot.resources.chat.openai_compatible import openai_controls
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings
from tests.resources.scripted_server import ScriptedServer, completion_json

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LOCAL = ChatModelSettings(provider="llama_cpp", n_ctx=2048, n_threads=1)
UNSET_KEY_ENV = "MEBOT_TEST_KEY_THAT_IS_NOT_SET"
IDENTITY = "llama_cpp:SmolLM2-135M-Instruct.Q4_1.gguf"
# A call without the new controls keeps the key every existing cache holds (the same as test_chat.py's pin) ...
PINNED_PLAIN_KEY = "64b8e28b829e4d762696e676006b3209cac6924d1ecbfa1b8e2f9df1f84f3475"
# ... and a call with them has a key of its own, stable from run to run.
PINNED_CONTROLLED_KEY = "c3bf86c9419a97ee35de27555f2ef0b2a8d1217c111788e0129c16a4b23cdb74"
DIGIT_GRAMMAR = 'root ::= [0-9] | "10"'


def _canned(self: ChatClient, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
    return ChatResult("Paris.", 5, 2, "stop", self.identity, None, False, 0.0)


def test_cache_key_is_unchanged_without_the_new_controls_and_pinned_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []

    def recording(self: ChatClient, messages: list[dict], params: dict, prompt_estimate: int) -> ChatResult:
        seen.append(params)
        return _canned(self, messages, params, prompt_estimate)

    monkeypatch.setattr(LlamaCppChat, "_generate", recording)
    cache = LlmCache(tmp_path / "cache.sqlite")
    client = chat_client(LOCAL, cache=cache)
    assert client.identity == IDENTITY
    plain = {"max_tokens": 8, "logprobs": True, "top_logprobs": 2, "seed": 7, "stop": ["\n"]}
    client.complete(QUESTION, **plain)
    assert cache.get(PINNED_PLAIN_KEY) is not None
    assert set(seen[0]) == {"temperature", "max_tokens", "logprobs", "top_logprobs", "stop", "seed"}

    controls = {"grammar": DIGIT_GRAMMAR, "repeat_penalty": 1.3, "frequency_penalty": 0.5, "logit_bias": {15: 2}}
    client.complete(QUESTION, **plain, **controls)
    assert seen[1]["grammar"] == DIGIT_GRAMMAR and seen[1]["logit_bias"] == {"15": 2.0}
    key = LlmCache.key("llama_cpp", IDENTITY, seen[1], QUESTION)
    assert key == PINNED_CONTROLLED_KEY and cache.get(key) is not None and len(cache) == 2
    client.complete(QUESTION, **plain, **controls)  # the same call again: a hit, no model call
    assert len(seen) == 2 and client.usage.cache_hits == 1


def test_grammar_and_response_format_together_are_refused() -> None:
    client = chat_client(LOCAL)
    with pytest.raises(ValueError, match="not both"):
        client.complete(QUESTION, grammar=DIGIT_GRAMMAR, response_format={"type": "json_object"})


def test_llama_cpp_arguments_for_each_control() -> None:
    kwargs = generation_controls(
        {"grammar": DIGIT_GRAMMAR, "repeat_penalty": 1.2, "frequency_penalty": 0.4, "logit_bias": {"15": 3.0}}
    )
    assert kwargs["grammar"]._grammar == DIGIT_GRAMMAR  # a llama_cpp.LlamaGrammar
    assert (kwargs["repeat_penalty"], kwargs["frequency_penalty"], kwargs["logit_bias"]) == (1.2, 0.4, {15: 3.0})
    assert generation_controls({"temperature": 0.0, "stop": None}) == {}
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    gbnf = response_format_grammar({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert "score" in gbnf and "root" in gbnf
    assert response_format_grammar({"type": "text"}) is None
    with pytest.raises(ValueError, match="unknown response_format"):
        response_format_grammar({"type": "yaml"})


def test_openai_arguments_for_each_control() -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    kwargs = openai_controls(
        {
            "response_format": response_format,
            "frequency_penalty": 0.5,
            "logit_bias": {"15": 3.0},
            "grammar": "g",
            "repeat_last_n": 128,
        }
    )
    assert kwargs == {
        "response_format": response_format,
        "frequency_penalty": 0.5,
        "logit_bias": {"15": 3.0},
        "extra_body": {"grammar": "g", "repeat_last_n": 128},  # not OpenAI's own: for servers that read them
    }
    assert openai_controls({"temperature": 0.0}) == {}


def test_openai_request_carries_the_controls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    with ScriptedServer([(200, {}, completion_json('{"score": 7}'))]) as server:
        settings = ChatModelSettings(
            provider="openai", base_url=server.base_url, model="fake-model", api_key_env=UNSET_KEY_ENV
        )
        client = chat_client(settings)
        response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
        result = client.complete(
            QUESTION, response_format=response_format, frequency_penalty=0.5, repeat_penalty=1.2, logit_bias={15: 1}
        )
        body = server.requests[0]["json"]
    assert result.text == '{"score": 7}'
    assert body["response_format"] == response_format
    assert (body["frequency_penalty"], body["repeat_penalty"], body["logit_bias"]) == (0.5, 1.2, {"15": 1.0})
    assert "grammar" not in body and "seed" not in body


# ------------------------------------------------------------------------------------ the real llama.cpp


@pytest.mark.full
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_llama_cpp_with_a_grammar_writes_only_what_the_grammar_allows(seed: int) -> None:
    client = chat_client(LOCAL)
    result = client.complete(
        [{"role": "user", "content": "Tell me about your day in a few sentences."}],
        temperature=1.0,
        max_tokens=8,
        seed=seed,
        grammar=DIGIT_GRAMMAR,
    )
    assert re.fullmatch(r"[0-9]|10", result.text), result.text
    assert result.finish_reason == "stop"


@pytest.mark.full
def test_llama_cpp_with_a_json_schema_writes_json_that_fits_it() -> None:
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "enum": list(range(11))}},
        "required": ["score"],
        "additionalProperties": False,
    }
    result = chat_client(LOCAL).complete(
        [{"role": "user", "content": "Rate Paris from 0 to 10."}],
        max_tokens=16,
        response_format={"type": "json_schema", "json_schema": {"name": "score", "schema": schema}},
    )
    reply: Any = json.loads(result.text)
    assert set(reply) == {"score"} and reply["score"] in range(11)


@pytest.mark.full
def test_llama_cpp_repeat_penalty_changes_a_repetitive_greedy_answer() -> None:
    messages = [{"role": "user", "content": "Write the word hello twenty times."}]
    client = chat_client(LOCAL)
    plain = client.complete(messages, max_tokens=40)
    penalised = client.complete(messages, max_tokens=40, repeat_penalty=1.8, repeat_last_n=256)
    assert client.loaded().llm.last_n_tokens_size == 256  # the window of that call
    assert penalised.text != plain.text
    assert penalised.text.lower().count("hello") < plain.text.lower().count("hello")
    client.complete(messages, max_tokens=4)
    assert client.loaded().llm.last_n_tokens_size == 64  # the shared model is back to its default
