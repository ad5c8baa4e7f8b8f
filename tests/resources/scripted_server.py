"""A scripted OpenAI-compatible server on loopback: answers each POST with the next scripted reply (status,
headers, JSON) and records every request; for retries, rate limits and budgets that a real server cannot be made
to produce on demand (the `scripted` fixture is in conftest.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion_json(text: str = "Paris.", prompt_tokens: int = 5, completion_tokens: int = 2) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_json(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


Reply = tuple[int, dict[str, str], dict]


class ScriptedServer:
    """Answers POSTs with the scripted replies in turn (the last one repeats); records every request."""

    def __init__(self, replies: list[Reply | Callable[[dict], Reply]]):
        self.replies = replies
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": json.loads(body or b"{}"),
                    "time": time.monotonic(),
                }
                server.requests.append(request)
                reply = server.replies[min(len(server.requests), len(server.replies)) - 1]
                status, headers, payload = reply(request) if callable(reply) else reply
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
