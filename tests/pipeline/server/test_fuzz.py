"""Every input to the API and the page's endpoints answers 2xx or 4xx (with a JSON error naming the problem),
never 5xx: a bounded property-based fuzz (hypothesis) of /api, /v1/chat/completions, /v1/models and the page's
endpoints (/, its static files, /healthz, /api/feedback), in-process over a real index built on a small site with
the fake models (inprocess.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from mebot.pipeline.server.app import create_app
from tests.pipeline.server.inprocess import BuiltIndex, build_index

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODELS = ["rag", "extractive", "finetune", "ft-none", "qa", "finetune:x", "", "rag\x00"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "assistant", "system", "tool", "other"]) | json_values,
            "content": st.text(max_size=300)
            | json_values
            | st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["text", "image"]) | json_values},
                    optional={"text": json_values | st.text()},
                )
            ),
        },
    )
    | json_values,
    max_size=6,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(MODELS) | json_values,
        "messages": messages | json_values,
        "stream": st.booleans() | json_values,
        "temperature": json_values,
        "max_tokens": json_values,
    },
)
raw_bodies = st.binary(max_size=3000) | chat_bodies.map(lambda body: json.dumps(body).encode())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    built: BuiltIndex = build_index(tmp_path_factory.mktemp("fuzz"))
    settings_ = built.settings({"rate_limit_per_minute": 10**6, "rate_limit_burst": 10**6})
    with TestClient(create_app(settings_, built.registry(settings_)), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_no_5xx(response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]


@FUZZ
@given(body=raw_bodies)
@example(body=b"[" * 200_000)
@example(body=b"1" * 5000)
@example(body=b'{"model": "rag", "messages": [{"role": "user", "content": "' + b"9" * 5000 + b'"}]}')
@example(body=b'{"model": "rag", "messages": ' + b"1" * 5000 + b"}")
@example(body=b"\xff\xfe\xfa")
@example(body=b'{"model": "rag", "messages": [{"role": "user", "content": "\\udc80"}]}')
@example(body=json.dumps({"model": "rag", "messages": [{"role": "user", "content": "hi"}] * 10_000}).encode())
@example(body=json.dumps({"model": "rag", "messages": [{"role": "user", "content": "x" * 900_000}]}).encode())
@example(body=b'{"model": "rag", "messages": [{"role": "user", "content": "hi"}], "stream": true}')
def test_chat_completions_never_answers_5xx(client: TestClient, body: bytes):
    assert_no_5xx(client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}))


feedback_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=40) | json_values,
        "rating": st.sampled_from(["up", "down", "sideways"]) | json_values,
        "comment": st.text(max_size=300) | json_values,
    },
).map(lambda body: json.dumps(body).encode())


@FUZZ
@given(body=st.binary(max_size=3000) | feedback_bodies)
@example(body=b"[" * 200_000)
@example(body=b'{"id": "' + b"9" * 5000 + b'", "rating": "up"}')
@example(body=json.dumps({"id": "x", "rating": "up", "comment": "c" * 900_000}).encode())
def test_feedback_never_answers_5xx(client: TestClient, body: bytes):
    assert_no_5xx(client.post("/api/feedback", content=body, headers={"content-type": "application/json"}))


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates too: what a client may percent-encode


query_bytes = (
    st.binary(max_size=30) | st.text(max_size=60).map(utf8) | st.sampled_from([*MODELS, "1", "true", "no"]).map(utf8)
)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from([b"query", b"question", b"model", b"retrieval_only", b"x"]) | st.binary(max_size=5),
        query_bytes,
        max_size=4,
    )
)
@example(params={b"query": b"\xff\xfe", b"retrieval_only": b"1"})
@example(params={b"query": b"x" * 5000})
@example(params={b"query": b"what?", b"model": b"finetune"})
def test_api_never_answers_5xx(client: TestClient, params: dict):
    query = "&".join(f"{quote_from_bytes(key)}={quote_from_bytes(value)}" for key, value in params.items())
    assert_no_5xx(client.get(f"/api?{query}"))


@FUZZ
@given(
    path=st.sampled_from(["/", "/v1/models", "/healthz", "/static/", "/static/app.js", "/api/feedback"])
    | st.text(max_size=40).map(lambda text: "/static/" + quote_from_bytes(utf8(text))),
    query=st.binary(max_size=40).map(quote_from_bytes),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]),
)
@example(path="/static/..%2f..%2fmebot.yaml", query="", method="GET")
@example(path="/static/%00", query="", method="GET")
def test_the_page_and_models_never_answer_5xx(client: TestClient, path: str, query: str, method: str):
    response = client.request(method, f"{path}?{query}")
    assert response.status_code < 500, response.text[:500]
