"""`mebot serve` over HTTP: the original bot's /api, /healthz, /v1/models, and every bad input's JSON error."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest

from mebot.assets.finetune.formats import adapter_chat_settings, ask_finetuned
from mebot.resources.chat import chat_client
from mebot.resources.settings import load_settings
from tests.pipeline.server.helpers import QUESTION, QUESTION_PAGE, SECRET, SERVE_SETTINGS, client_from

TIMEOUT = httpx.Timeout(300, connect=10)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def assert_clean_error(response: httpx.Response, status: int, server) -> dict:
    """A JSON error with the status, a message, and nothing that leaks the server's insides."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"] and body["error"]["code"]
    text = response.text
    for leak in ("Traceback", 'File "', str(server.data), "/work/", ".py", SECRET):
        assert leak not in text, leak
    return body["error"]


def test_healthz_reports_ready_with_the_index_version(http):
    body = http.get("/healthz").raise_for_status().json()
    assert body["ready"] is True and body["status"] == "ok"
    assert body["index_version"] and body["models"][0] == "rag"


def test_models_lists_rag(http):
    body = http.get("/v1/models").raise_for_status().json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]][:1] == ["rag"]
    assert all(m["object"] == "model" for m in body["data"])


def test_api_answers_in_the_original_bots_shape_with_the_right_page(http):
    response = http.get("/api", params={"query": QUESTION, "model": "qa"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].strip()
    docs = body["sourceDocuments"]
    assert 1 <= len(docs) <= 2  # of rag.top_k (test settings) retrieved, the chunks whose sentences were used
    for doc in docs:
        assert doc["pageContent"].strip()
        assert {"url", "title"} <= set(doc["metadata"]) and isinstance(doc["metadata"]["score"], float)
    assert docs[0]["metadata"]["url"].endswith(QUESTION_PAGE)
    assert "Brenda" in docs[0]["pageContent"]


def test_api_repeated_question_comes_from_the_llm_cache(http):
    first = http.get("/api", params={"query": QUESTION}).raise_for_status().json()
    again = http.get("/api", params={"query": QUESTION}).raise_for_status().json()
    assert again["cached"] is True
    assert again["text"] == first["text"]


def test_api_retrieval_only_returns_sources_without_an_answer(http):
    body = http.get("/api", params={"query": QUESTION, "retrieval_only": "1"}).raise_for_status().json()
    assert body["text"] == "" and body["retrieval_only"] is True
    assert body["sourceDocuments"][0]["metadata"]["url"].endswith(QUESTION_PAGE)


def test_api_without_a_query_is_400(http, server):
    assert_clean_error(http.get("/api"), 400, server)
    assert_clean_error(http.get("/api", params={"query": "   "}), 400, server)


def test_api_query_over_the_limit_is_413(http, server):
    limit = SERVE_SETTINGS["max_query_chars"]
    error = assert_clean_error(http.get("/api", params={"query": "x" * (limit + 1)}), 413, server)
    assert str(limit) in error["message"]
    assert http.get("/api", params={"query": "x" * limit, "retrieval_only": "1"}).status_code == 200


def test_api_unknown_model_is_400_naming_the_valid_ones(http, server):
    error = assert_clean_error(http.get("/api", params={"query": QUESTION, "model": "gpt-5"}), 400, server)
    assert "gpt-5" in error["message"] and "qa" in error["message"]
    # the session's `mebot run` trained the default sweep: its models are named, an untrained one is not served
    error = assert_clean_error(http.get("/api", params={"query": QUESTION, "model": "finetune:e9-b1-lr1"}), 400, server)
    assert "finetune:e1-b2-lr0.5" in error["message"] and "finetune:e1-b2-lr2" in error["message"]


def test_api_finetune_is_the_best_sweep_point_on_the_leaderboard_and_models_says_why(http, server):
    board = pd.read_parquet(server.data / "leaderboard.parquet")
    tuned = board[board["backend"] == "local_lora"].dropna(subset=["golden_fact_accuracy"])
    # the highest golden fact accuracy; a tie goes to the higher ROUGE-L F1, then the first by name
    ranking = ["golden_fact_accuracy", "rougeL_f1", "model"]
    best = tuned.sort_values(ranking, ascending=[False, False, True]).iloc[0]["model"]
    listed = {m["id"]: m for m in http.get("/v1/models").raise_for_status().json()["data"]}
    assert listed["finetune"]["resolves_to"] == f"ft-{best}"
    assert "golden_fact_accuracy" in listed["finetune"]["chosen_by"]  # serve.finetune_metric's default
    body = http.get("/api", params={"query": QUESTION, "model": "finetune"}).raise_for_status().json()
    assert body["model"] == f"ft-{best}" and body["text"].strip() and body["sourceDocuments"] == []
    # the server answers through the adapter: the base model, asked the same way (greedy), answers otherwise
    settings = load_settings(server.data.parent / "serve.yaml")  # the server's own settings
    without_adapter, _ = ask_finetuned(chat_client(adapter_chat_settings(settings)), settings, QUESTION)
    assert body["text"] != without_adapter


def chat(http, body, **kwargs):
    return http.post("/v1/chat/completions", **({"json": body} if not kwargs else kwargs))


def test_chat_malformed_json_is_400(http, server):
    error = assert_clean_error(
        chat(http, None, content=b'{"model": "rag", "messages": [', headers={"content-type": "application/json"}),
        400,
        server,
    )
    assert error["code"] == "invalid_json"
    assert_clean_error(chat(http, None, content=b"\xff\xfe", headers={"content-type": "application/json"}), 400, server)
    assert_clean_error(chat(http, ["not", "an", "object"]), 400, server)


def test_chat_unknown_model_is_400_naming_the_valid_ones(http, server):
    error = assert_clean_error(
        chat(http, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}), 400, server
    )
    assert "gpt-4o" in error["message"] and "rag" in error["message"]
    assert_clean_error(chat(http, {"messages": [{"role": "user", "content": "hi"}]}), 400, server)


def test_chat_bad_messages_are_400(http, server):
    for messages in (None, [], "hello", [{"role": "system", "content": "no user here"}], [{"role": "user"}], [3]):
        assert_clean_error(chat(http, {"model": "rag", "messages": messages}), 400, server)
    assert_clean_error(
        chat(http, {"model": "rag", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}), 400, server
    )


def test_chat_question_over_the_limit_is_413(http, server):
    long = "y" * (SERVE_SETTINGS["max_query_chars"] + 1)
    assert_clean_error(chat(http, {"model": "rag", "messages": [{"role": "user", "content": long}]}), 413, server)


def test_chat_body_over_a_megabyte_is_413(http, server):
    body = b'{"model": "rag", "messages": [{"role": "user", "content": "' + b"z" * (1 << 20) + b'"}]}'
    assert_clean_error(chat(http, None, content=body, headers={"content-type": "application/json"}), 413, server)


def test_unknown_path_and_method_are_json_errors(http, server):
    assert_clean_error(http.get("/nope"), 404, server)
    assert_clean_error(http.get("/v1/chat/completions"), 405, server)


def test_rate_limit_answers_429_with_retry_after_then_recovers(server):
    burst = SERVE_SETTINGS["rate_limit_burst"]
    with client_from("127.0.0.3", base_url=server.url, timeout=TIMEOUT) as other:
        # requests rejected for their size still spend tokens, and cost the server almost nothing
        too_long = {"query": "q" * (SERVE_SETTINGS["max_query_chars"] + 1)}
        responses = [other.get("/api", params=too_long) for _ in range(burst + 20)]
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {413, 429}
        assert statuses[:burst] == [413] * burst  # the burst goes through
        limited = [r for r in responses if r.status_code == 429]
        assert limited, statuses
        error = assert_clean_error(limited[0], 429, server)
        assert error["code"] == "rate_limited"
        retry_after = int(limited[0].headers["retry-after"])
        assert 1 <= retry_after <= 60
        time.sleep(retry_after)
        assert other.get("/api", params={"query": QUESTION, "retrieval_only": "1"}).status_code == 200
    # another client has its own bucket
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as mine:
        assert mine.get("/api", params={"query": QUESTION, "retrieval_only": "1"}).status_code == 200


def test_cors_allows_only_the_listed_origins(http):
    allowed = http.options(
        "/v1/chat/completions",
        headers={
            "Origin": "http://allowed.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
    denied = http.options(
        "/v1/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers
    simple = http.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in simple.headers
    simple = http.get("/healthz", headers={"Origin": "http://allowed.example"})
    assert simple.headers["access-control-allow-origin"] == "http://allowed.example"


def test_page_and_its_assets_are_served_without_external_urls(http):
    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert http.get(asset).status_code == 200
    for text in (page.text, http.get("/static/app.js").text, http.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
