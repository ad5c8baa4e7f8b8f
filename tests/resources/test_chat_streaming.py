"""`ChatClient.complete(on_token=...)`: the answer piece by piece as the model generates it.

Fast tier: the base's contract on a fake provider (one piece when a provider does not stream or the answer is
cached; the cache key unchanged), and the OpenAI-compatible provider's stream against a scripted SSE server on
loopback (retried before the first piece, final after). Full tier: llama.cpp's tokens as it generates them, in
process and through llama.cpp's own OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mebot.resources.chat import ChatProviderError, chat_client
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings
from tests.fakes import FakeChat
from tests.resources.helpers import LlamaServer

QUESTION = [{"role": "user", "content": "Name three planets of the solar system and say one thing about each."}]
FAKE = ChatModelSettings(provider="openai", model="fake-model", base_url="http://127.0.0.1:1/v1")


class Enough(Exception):
    """Raised by a caller's on_token that wants no more (the server's client went away)."""


class Pieces:
    """An on_token callback that records each piece and when it came (and raises Enough after `stop_after`)."""

    def __init__(self, stop_after: int | None = None):
        self.items: list[tuple[float, str]] = []
        self.stop_after = stop_after

    def __call__(self, piece: str) -> None:
        self.items.append((time.monotonic(), piece))
        if self.stop_after is not None and len(self.items) >= self.stop_after:
            raise Enough(f"{len(self.items)} pieces")

    @property
    def text(self) -> str:
        return "".join(piece for _, piece in self.items)


# ------------------------------------------------------------------------------------ the base's contract


def test_a_provider_that_does_not_stream_gives_the_whole_answer_as_one_piece(tmp_path: Path) -> None:
    chat = FakeChat(FAKE, responder=lambda messages, params, client: "Mercury, Venus and Mars.")
    pieces = Pieces()
    result = chat.complete(QUESTION, on_token=pieces)
    assert [piece for _, piece in pieces.items] == ["Mercury, Venus and Mars."] and result.text == pieces.text
    assert "on_token" in chat.calls[0][1]  # providers find it in params ...


def test_streaming_keeps_the_cache_key_and_a_cached_answer_comes_as_one_piece(tmp_path: Path) -> None:
    cache = LlmCache(tmp_path / "cache.sqlite")
    chat = FakeChat(FAKE, cache=cache, responder=lambda messages, params, client: "Jupiter is the largest.")
    chat.complete(QUESTION, on_token=Pieces())  # generated and cached
    plain = chat.complete(QUESTION)  # ... but never in the key: the same call without it is a cache hit
    pieces = Pieces()
    again = chat.complete(QUESTION, on_token=pieces)
    assert plain.cached and again.cached and len(chat.calls) == 1
    assert [piece for _, piece in pieces.items] == ["Jupiter is the largest."]


# ------------------------------------------------------------------- OpenAI-compatible: a scripted stream


class SseServer:
    """Answers each POST with the next script: an HTTP status (an error), or a list of SSE data payloads sent
    `gap_s` apart, ending with `[DONE]` unless the script's last item is "CUT" (the connection drops)."""

    def __init__(self, scripts: list[int | list], gap_s: float = 0.05):
        self.scripts = scripts
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                owner.requests.append(body)
                script = owner.scripts[min(len(owner.requests), len(owner.scripts)) - 1]
                if isinstance(script, int):
                    data = json.dumps({"error": {"message": "busy", "type": "server_error", "code": None}}).encode()
                    self.send_response(script)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for item in script:
                    if item == "CUT":
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(f"data: {json.dumps(item)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(gap)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        gap = gap_s
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def delta(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict:
    message = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": message, "finish_reason": finish}],
    }


USAGE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "fake-model", "choices": []}
USAGE["usage"] = {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}
STREAM = [delta("", role="assistant"), delta("Mercury"), delta(", Venus"), delta(" and Mars."), delta(None, "stop")]


@pytest.fixture
def sse() -> Iterator[Any]:
    servers: list[SseServer] = []

    def start(scripts: list[int | list]) -> SseServer:
        servers.append(SseServer(scripts))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def openai_chat(base_url: str, monkeypatch: pytest.MonkeyPatch, model: str = "fake-model") -> Any:
    monkeypatch.setenv("MEBOT_TEST_STREAM_KEY", "sk-test")
    settings = ChatModelSettings(
        provider="openai", base_url=base_url, model=model, api_key_env="MEBOT_TEST_STREAM_KEY", max_retries=2
    )
    return chat_client(settings)


@pytest.mark.timeout(60)
def test_openai_stream_passes_each_piece_on_as_it_arrives(sse, monkeypatch: pytest.MonkeyPatch) -> None:
    server = sse([[*STREAM, USAGE]])
    pieces = Pieces()
    result = openai_chat(server.base_url, monkeypatch).complete(QUESTION, max_tokens=20, on_token=pieces)
    assert [piece for _, piece in pieces.items] == ["Mercury", ", Venus", " and Mars."]
    assert pieces.items[-1][0] - pieces.items[0][0] >= 0.08  # as they came, 0.05 s apart, not at the end
    assert result.text == "Mercury, Venus and Mars." and result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (21, 4)  # the usage of the last chunk
    request = server.requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


@pytest.mark.timeout(60)
def test_openai_stream_is_retried_before_the_first_piece_only(sse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mebot.resources.chat.base.backoff_delay_s", lambda attempt: 0.01)
    server = sse([503, [*STREAM, USAGE]])
    pieces = Pieces()
    result = openai_chat(server.base_url, monkeypatch).complete(QUESTION, on_token=pieces)
    assert len(server.requests) == 2 and result.text == pieces.text == "Mercury, Venus and Mars."

    cut = sse([[delta("", role="assistant"), delta("Mercury"), "CUT"], [*STREAM, USAGE]])
    pieces = Pieces()
    with pytest.raises(ChatProviderError, match="after part of the answer had been streamed"):
        openai_chat(cut.base_url, monkeypatch).complete(QUESTION, on_token=pieces)
    assert pieces.text == "Mercury" and len(cut.requests) == 1  # what was shown cannot be taken back: no retry


# ------------------------------------------------------------------------------------ llama.cpp, for real

LOCAL = ChatModelSettings(provider="llama_cpp", n_ctx=2048, n_threads=1)


@pytest.mark.full
def test_llama_cpp_streams_tokens_as_it_generates_them() -> None:
    chat = chat_client(LOCAL)
    whole = chat.complete(QUESTION, max_tokens=40)
    pieces = Pieces()
    streamed = chat.complete(QUESTION, max_tokens=40, on_token=pieces)
    assert len(pieces.items) >= 20  # a token (or a few) at a time
    assert pieces.items[-1][0] - pieces.items[0][0] > 0.05  # over the generation, not in one burst at the end
    assert pieces.text == streamed.text == whole.text  # the same greedy answer as without streaming
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (whole.prompt_tokens, whole.completion_tokens)
    assert streamed.finish_reason == whole.finish_reason


@pytest.mark.full
def test_an_error_in_on_token_stops_llama_cpp_at_once() -> None:
    chat = chat_client(LOCAL)
    pieces = Pieces(stop_after=3)
    with pytest.raises(Enough):
        chat.complete(QUESTION, max_tokens=200, on_token=pieces)
    assert len(pieces.items) == 3
    assert chat.complete([{"role": "user", "content": "Say hello."}], max_tokens=8).text  # the model still answers


@pytest.mark.full
def test_openai_provider_streams_from_llama_cpps_server(llama_server: LlamaServer, monkeypatch) -> None:
    chat = openai_chat(llama_server.base_url, monkeypatch, model=llama_server.model)
    pieces = Pieces()
    result = chat.complete(QUESTION, max_tokens=40, on_token=pieces)
    assert len(pieces.items) >= 10 and pieces.text == result.text
    assert result.completion_tokens > 0
