"""The official `openai` SDK against `mebot serve`: models, chat completions, streaming, errors."""

from __future__ import annotations

import openai
import pytest

from tests.pipeline.server.helpers import QUESTION, QUESTION_PAGE


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! Ask me anything."},
    {"role": "user", "content": QUESTION},  # the last user message is the question
]


def test_sdk_lists_the_models(sdk):
    assert [m.id for m in sdk.models.list()][:1] == ["rag"]


def test_sdk_chat_completion_answers_with_sources(sdk):
    completion = sdk.chat.completions.create(model="rag", messages=MESSAGES)
    assert completion.object == "chat.completion" and completion.model == "rag"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    sources = completion.model_extra["sources"]
    assert sources[0]["url"].endswith(QUESTION_PAGE)


def test_sdk_streaming_delivers_the_same_answer_in_chunks(sdk):
    whole = sdk.chat.completions.create(model="rag", messages=MESSAGES).choices[0].message.content
    stream = sdk.chat.completions.create(model="rag", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole


def test_sdk_unknown_model_raises_bad_request_naming_rag(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 400
    assert "rag" in caught.value.message
