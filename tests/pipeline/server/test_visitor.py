"""The visitor log through the server: every answer through /api and /v1 (plain and streamed, as the page asks)
is logged with the id the client gets back, without the visitor's address or user agent; POST /api/feedback
rates it (an unknown id is a 404, bad input a 4xx, never a 5xx). The real server over a real FAISS index, with
the fake chat and embedding models (tests/pipeline/server/inprocess.py)."""

import json
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from mebot.pipeline.server.app import create_app
from mebot.resources.layout import DataLayout
from mebot.resources.visitor_log import VisitorLog
from tests.pipeline.server.inprocess import BuiltIndex, build_index
from tests.pipeline.server.test_fuzz import FUZZ, assert_no_5xx, json_values

QUESTION = "What is fact 1 about topic 2?"
ADDRESS = "203.0.113.77"
AGENT = "Mozilla/5.0 (VisitorLogProbe 9.9)"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build_index(tmp_path_factory.mktemp("visitor"))


@pytest.fixture
def client(built: BuiltIndex) -> Iterator:
    shutil.rmtree(DataLayout(built.data).visitors_dir, ignore_errors=True)

    def make(serve: dict | None = None) -> TestClient:
        settings = built.settings({"rate_limit_per_minute": 6000, "rate_limit_burst": 1000, **(serve or {})})
        made.append(TestClient(create_app(settings, built.registry(settings)), client=(ADDRESS, 40000)).__enter__())
        made[-1].headers["User-Agent"] = AGENT
        return made[-1]

    made: list[TestClient] = []
    yield make
    for test_client in made:
        test_client.__exit__(None, None, None)


def logged(built: BuiltIndex):
    return VisitorLog(DataLayout(built.data).visitor_log).read()


def log_bytes(built: BuiltIndex) -> bytes:
    return b"".join(p.read_bytes() for p in DataLayout(built.data).visitors_dir.iterdir() if p.is_file())


def test_api_answers_are_logged_under_the_id_returned_and_without_the_address(built, client):
    http = client()
    body = http.get("/api", params={"query": QUESTION}).json()
    rows = logged(built)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["id"] == body["id"] and row["channel"] == "api" and row["model"] == "rag"
    assert row["question"] == QUESTION and row["answer"] == body["text"]
    assert json.loads(row["sources_json"]) == [d["metadata"]["url"] for d in body["sourceDocuments"]]
    assert row["latency_s"] >= 0 and row["declined"] in (0, 1)
    raw = log_bytes(built)
    assert QUESTION.encode() in raw  # the probe can see what is stored...
    assert ADDRESS.encode() not in raw and b"VisitorLogProbe" not in raw  # ...and no address or user agent


def test_chat_completions_plain_and_streamed_are_logged_under_their_completion_id(built, client):
    http = client()
    plain = http.post(
        "/v1/chat/completions", json={"model": "rag", "messages": [{"role": "user", "content": QUESTION}]}
    )
    stream = http.post(
        "/v1/chat/completions",
        json={"model": "rag", "stream": True, "messages": [{"role": "user", "content": QUESTION}]},
    )
    streamed_id = json.loads(stream.text.split("data: ", 2)[1].split("\n")[0])["id"]
    rows = logged(built).set_index("id")
    assert rows.loc[plain.json()["id"], "channel"] == "v1"
    assert rows.loc[streamed_id, "channel"] == "v1-stream"


def test_retrieval_only_is_not_an_answer_and_a_log_turned_off_keeps_nothing(built, client):
    assert client().get("/api", params={"query": QUESTION, "retrieval_only": "1"}).json()["id"] is None
    off = client({"log": {"enabled": False}})
    assert off.get("/api", params={"query": QUESTION}).json()["id"] is None
    assert logged(built).empty


def test_feedback_rates_a_logged_answer(built, client):
    http = client()
    answer_id = http.get("/api", params={"query": QUESTION}).json()["id"]
    response = http.post("/api/feedback", json={"id": answer_id, "rating": "down", "comment": "Not what I asked"})
    assert response.status_code == 200 and response.json() == {"id": answer_id, "rating": "down"}
    assert logged(built)[["rating", "comment"]].to_dict("records") == [
        {"rating": "down", "comment": "Not what I asked"}
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"id": "0" * 32, "rating": "up"}, 404, "not_found"),
        ({"id": "x; DROP TABLE answers", "rating": "up"}, 400, "bad_request"),
        ({"rating": "up"}, 400, "bad_request"),
        ({"id": "KNOWN", "rating": "meh"}, 400, "bad_request"),
        ({"id": "KNOWN", "rating": "up", "comment": 5}, 400, "bad_request"),
        ({"id": "KNOWN", "rating": "up", "comment": "x" * 1001}, 413, "comment_too_long"),
        ({"id": "KNOWN", "rating": "up", "comment": "\ud800"}, 400, "bad_text"),
        ([1, 2], 400, "invalid_json"),
    ],
    ids=["unknown-id", "bad-id", "no-id", "bad-rating", "comment-not-text", "long-comment", "surrogate", "not-object"],
)
def test_bad_feedback_is_a_4xx_naming_the_problem(built, client, body, status, code):
    http = client()
    known = http.get("/api", params={"query": QUESTION}).json()["id"]
    if isinstance(body, dict) and body.get("id") == "KNOWN":
        body = {**body, "id": known}
    response = http.post("/api/feedback", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert logged(built)["rating"].isna().all()


def test_feedback_is_size_and_rate_limited(built, client):
    http = client({"rate_limit_per_minute": 1, "rate_limit_burst": 2})
    assert http.post("/api/feedback", content=b"{" + b" " * 9000 + b"}").status_code == 413
    assert http.post("/api/feedback", json={"id": "0" * 32, "rating": "up"}).status_code == 404
    assert http.post("/api/feedback", json={"id": "0" * 32, "rating": "up"}).status_code == 429


# ------------------------------------------------------------------------------------------------ fuzzing

FEEDBACK_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["KNOWN", "0" * 32, "chatcmpl-" + "a" * 24, ""]) | json_values,
        "rating": st.sampled_from(["up", "down", "UP", ""]) | json_values,
        "comment": st.text(max_size=1200) | json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_client(built: BuiltIndex):
    settings = built.settings({"rate_limit_per_minute": 10**6, "rate_limit_burst": 10**6})
    with TestClient(create_app(settings, built.registry(settings)), raise_server_exceptions=False) as http:
        http.known = http.get("/api", params={"query": QUESTION}).json()["id"]
        yield http


@FUZZ
@given(body=st.binary(max_size=2000) | FEEDBACK_BODIES)
@example(body=b"\xff\xfe")
@example(body=b"[" * 100_000)
@example(body={"id": "KNOWN", "rating": "down", "comment": "\udc80"})
def test_feedback_never_answers_5xx(fuzz_client, body):
    if isinstance(body, dict):
        body = json.dumps({k: fuzz_client.known if v == "KNOWN" else v for k, v in body.items()}).encode()
    assert_no_5xx(fuzz_client.post("/api/feedback", content=body, headers={"Content-Type": "application/json"}))
