"""The HTTP API's formats, apart from the server's state (pipeline/server/app.py uses them): the JSON error every
failure is answered with (`ApiError`, `error_body`, `error_response`), the request body read and checked
(`read_json` with its size limit, `last_user_message`), the replies' shapes (`completion` and `completion_chunk`,
the OpenAI-compatible answer whole and streamed; `source_json`, `source_document` for /api, `usage`), and
`StreamedText`, which keeps a streamed answer's pieces adding up to the non-streaming answer.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from mebot.assets.index.rag import Source
from mebot.pipeline.server.models import Reply

MAX_BODY_BYTES = 1 << 20


# ------------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_busy_error",
}


def error_body(status: int, message: str, code: str) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "code": code}}


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


class StreamedText:
    """The pieces of a streamed answer, passed on so that they add up to the answer the non-streaming reply gives
    (which is stripped): whitespace before the first word and after the latest one is held back."""

    def __init__(self) -> None:
        self.sent = ""
        self._held = ""

    def add(self, piece: str) -> str:
        """The part of `piece` to send now (may be empty)."""
        text = self._held + piece
        if not self.sent:
            text = text.lstrip()
        body = text.rstrip()
        self._held = text[len(body) :]
        self.sent += body
        return body

    def rest(self, answer: str) -> str:
        """What is still to send once the answer is known: its end when what was sent begins it, else nothing
        (the answer was changed after generation; the finish chunk's `text` carries it whole)."""
        return answer[len(self.sent) :] if answer.startswith(self.sent) else ""


# ----------------------------------------------------------------------------------------------- formats


def completion(completion_id: str, created: int, model: str, reply: Reply) -> dict:
    """The non-streaming chat completion: the answer as the assistant's message, with usage and sources."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}],
        "usage": usage(reply),
        "sources": [source_json(s) for s in reply.sources],
    }


def completion_chunk(
    completion_id: str, created: int, model: str, delta: dict, finish: str | None = None, **extra: Any
) -> str:
    """One server-sent event of a streamed chat completion; `extra` adds fields (the finish chunk's usage,
    sources and the whole answer as `text`)."""
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def source_json(source: Source, with_text: bool = False) -> dict:
    """A source as the chat completions answer it; `with_text` adds the chunk's text (the stream's finish chunk,
    which the page shows under each reference)."""
    found = {"url": source.url, "title": source.title, "chunk_id": source.chunk_id, "score": source.score}
    return {**found, "text": source.text} if with_text else found


def source_document(source: Source) -> dict:
    """The reproduced write-up's (LangChain's) source document, with the chunk id and score added."""
    return {
        "pageContent": source.text,
        "metadata": {"url": source.url, "title": source.title, "chunk_id": source.chunk_id, "score": source.score},
        "score": source.score,
    }


def usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _too_large() -> ApiError:
    return ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")


async def read_json(request: Request) -> dict:
    """The request body as a JSON object; 413 past MAX_BODY_BYTES, 400 for anything that is not a JSON object
    (invalid UTF-8, nesting too deep to parse, numbers too long to convert)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_BODY_BYTES):
        raise _too_large()
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        parts.append(part)
    try:
        body = json.loads(b"".join(parts))
    except RecursionError:
        raise ApiError(400, "the request body is JSON nested too deeply", "invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise ApiError(400, f"the request body is not valid JSON ({exc.__class__.__name__})", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_json")
    return body


def check_text(value: str, what: str) -> str:
    """`value`, refused when it cannot be encoded as UTF-8 (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        message = f"{what} holds characters that are not valid Unicode (lone surrogates)"
        raise ApiError(400, message, "bad_text") from None
    return value


MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def message_text(message: Any, number: int) -> str:
    """The text of one message (string content, or a list of text parts); 400 naming the message otherwise."""
    if not isinstance(message, dict):
        raise ApiError(400, f"message {number} must be an object with role and content", "bad_messages")
    role = message.get("role")
    if role not in MESSAGE_ROLES:
        raise ApiError(
            400, f"message {number} has role {str(role)[:40]!r}; use one of {', '.join(MESSAGE_ROLES)}", "bad_messages"
        )
    content = message.get("content")
    if content is None and role != "user":
        return ""
    if isinstance(content, list):
        if not all(isinstance(part, dict) for part in content):
            raise ApiError(400, f"message {number}: every content part must be an object", "bad_messages")
        content = "\n".join(
            part["text"] for part in content if part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    if not isinstance(content, str):
        raise ApiError(400, f"message {number} has no text content", "bad_messages")
    return check_text(content, f"message {number}")


def last_user_message(messages: Any, max_messages: int = 100, max_chars: int = 100_000) -> str:
    """The text of the last message with role `user`, after checking every message: at most `max_messages`
    messages of at most `max_chars` characters in all (413 past either)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "bad_messages")
    if len(messages) > max_messages:
        raise ApiError(
            413, f"the conversation has {len(messages)} messages; the limit is {max_messages}", "too_many_messages"
        )
    texts = [message_text(message, number) for number, message in enumerate(messages, start=1)]
    total = sum(len(text) for text in texts)
    if total > max_chars:
        raise ApiError(
            413, f"the messages hold {total} characters in all; the limit is {max_chars}", "conversation_too_long"
        )
    for message, text in zip(reversed(messages), reversed(texts), strict=True):
        if message["role"] == "user":
            return text
    raise ApiError(400, "'messages' holds no message with role 'user'", "bad_messages")
