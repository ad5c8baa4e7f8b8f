"""`mebot serve` answers with the `extractive` model (the best sentences quoted, no LLM) on /api and /v1."""

from __future__ import annotations

import httpx
import pytest

from tests.pipeline.server.helpers import QUESTION, QUESTION_PAGE

TIMEOUT = httpx.Timeout(300, connect=10)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def test_models_list_extractive_after_rag(http):
    body = http.get("/v1/models").raise_for_status().json()
    assert [m["id"] for m in body["data"]][:2] == ["rag", "extractive"]


def test_api_extractive_quotes_the_source_page_with_its_title_and_link(http):
    body = http.get("/api", params={"query": QUESTION, "model": "extractive"}).raise_for_status().json()
    docs = body["sourceDocuments"]
    assert docs and docs[0]["metadata"]["url"].endswith(QUESTION_PAGE)
    assert body["text"].startswith("“") and "Brenda" in body["text"]
    assert f"— {docs[0]['metadata']['title']} ({docs[0]['metadata']['url']})" in body["text"]


def test_chat_completions_with_model_extractive(http):
    response = http.post(
        "/v1/chat/completions", json={"model": "extractive", "messages": [{"role": "user", "content": QUESTION}]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "extractive"
    assert "Brenda" in body["choices"][0]["message"]["content"]
