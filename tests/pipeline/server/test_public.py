"""The server facing strangers (issue 25): spoofed forwarded headers do not escape the rate limit, every response
carries the security headers, conversations are capped, a spent budget says so (503), and each client has a daily
answer cap. The app over a real index built on a small site with the fake models (tests/pipeline/server/
inprocess.py): in-process through Starlette's TestClient, and over real HTTP through uvicorn run as `mebot serve`
runs it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from mebot.pipeline.server.app import create_app
from mebot.pipeline.server.limits import CONTENT_SECURITY_POLICY
from mebot.resources.chat import BudgetExceeded
from tests.pipeline.server.inprocess import BuiltIndex, build_index, real_server

QUESTION = "What is fact 1 about topic 2?"
RETRIEVAL = {"query": QUESTION, "retrieval_only": "1"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build_index(tmp_path_factory.mktemp("public"))


@pytest.fixture
def make_client(built: BuiltIndex) -> Iterator:
    clients: list[TestClient] = []

    def make(serve: dict | None = None, address: str = "203.0.113.10", registry=None) -> TestClient:
        settings = built.settings({"rate_limit_per_minute": 6000, "rate_limit_burst": 1000, **(serve or {})})
        app = create_app(settings, registry or built.registry(settings))
        client = TestClient(app, client=(address, 40000)).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def chat(model: str = "rag", messages: list | None = None, **extra) -> dict:
    messages = [{"role": "user", "content": QUESTION}] if messages is None else messages
    return {"model": model, "messages": messages, **extra}


# ------------------------------------------------------------------------------------------ client identity


def spoofed_statuses(url: str, forwarded_values: list[str]) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as http:
        return [
            http.get("/api", params=RETRIEVAL, headers={"X-Forwarded-For": value}).status_code
            for value in forwarded_values
        ]


def test_spoofed_forwarded_headers_from_loopback_share_one_bucket_over_real_http(built: BuiltIndex):
    spoofed = [f"198.51.100.{n}" for n in range(8)]
    with real_server(built, {"rate_limit_burst": 3, "rate_limit_per_minute": 1}) as server:
        statuses = spoofed_statuses(server.url, spoofed)
    assert statuses == [200, 200, 200, 429, 429, 429, 429, 429]


def test_a_trusted_proxy_names_the_client_over_real_http(built: BuiltIndex):
    serve = {"rate_limit_burst": 3, "rate_limit_per_minute": 1, "trusted_proxies": ["127.0.0.1"]}
    with real_server(built, serve) as server:
        distinct = spoofed_statuses(server.url, [f"198.51.100.{n}" for n in range(8)])
        repeated = spoofed_statuses(server.url, ["192.0.2.1"] * 4)
    assert distinct == [200] * 8  # eight visitors behind the proxy, one bucket each
    assert repeated == [200, 200, 200, 429]


# ------------------------------------------------------------------------------------------------ headers


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/", None),
        ("GET", "/static/app.js", None),
        ("GET", "/api?query=What+is+fact+1%3F&retrieval_only=1", None),
        ("GET", "/v1/models", None),
        ("GET", "/healthz", None),
        ("GET", "/no/such/page", None),
        ("POST", "/v1/chat/completions", b"[[["),
        ("POST", "/v1/chat/completions", chat(stream=True)),
    ],
)
def test_every_response_carries_the_security_headers(make_client, method, path, body):
    client = make_client()
    kwargs = {"json": body} if isinstance(body, dict) else {"content": body}
    response = client.request(method, path, **kwargs)
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


# --------------------------------------------------------------------------------------------------- inputs


def test_deeply_nested_json_is_a_400_naming_the_problem(make_client):
    response = make_client().post("/v1/chat/completions", content=b"[" * 200_000)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "messages, status, says",
    [
        ([{"role": "user", "content": "hi"}] * 51, 413, "51 messages; the limit is 50"),
        ([{"role": "user", "content": "x" * 15_000}] * 2, 413, "30000 characters in all; the limit is 20000"),
        ([], 400, "non-empty list"),
        ([{"role": "wizard", "content": "hi"}], 400, "message 1 has role 'wizard'"),
        ([{"role": "user", "content": "hi"}, "hello"], 400, "message 2 must be an object"),
    ],
)
def test_conversations_are_capped_and_checked_message_by_message(make_client, messages, status, says):
    response = make_client().post("/v1/chat/completions", json=chat(messages=messages))
    assert response.status_code == status
    assert says in response.json()["error"]["message"]


def test_a_lone_surrogate_is_a_400(make_client):
    body = b'{"model": "rag", "messages": [{"role": "user", "content": "why \\ud800"}]}'
    response = make_client().post("/v1/chat/completions", content=body)
    assert response.status_code == 400
    assert "not valid Unicode" in response.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------- spend


def test_a_spent_budget_is_a_503_that_says_so(make_client, built: BuiltIndex, monkeypatch):
    settings = built.settings()
    registry = built.registry(settings)

    def spent(model, question, on_token=None):
        raise BudgetExceeded("the next call would take the run past budget.max_usd 0.10")

    monkeypatch.setattr(registry, "answer", spent)
    client = make_client(registry=registry)
    for response in (client.get("/api", params={"query": QUESTION}), client.post("/v1/chat/completions", json=chat())):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "budget_exhausted"
        assert "budget is spent" in response.json()["error"]["message"]
    assert client.get("/api", params=RETRIEVAL).status_code == 200  # finding pages costs nothing


def test_each_client_gets_at_most_the_daily_number_of_answers(make_client):
    serve = {"max_answers_per_client_per_day": 2}
    client = make_client(serve)
    statuses = [client.post("/v1/chat/completions", json=chat()).status_code for _ in range(2)]
    refused = client.get("/api", params={"query": QUESTION})
    assert statuses == [200, 200]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "daily_cap"
    assert "2 answers one visitor may have per day" in refused.json()["error"]["message"]
    assert client.get("/api", params=RETRIEVAL).status_code == 200
    assert client.get("/api", params={"query": QUESTION, "model": "extractive"}).status_code == 200  # no model call


def test_the_daily_cap_is_off_by_default(make_client):
    client = make_client()
    assert [client.get("/api", params={"query": QUESTION}).status_code for _ in range(4)] == [200] * 4
