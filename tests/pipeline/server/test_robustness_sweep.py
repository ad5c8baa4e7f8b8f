"""The robustness sweep: for every page of the sample site, questions built from its own sentences (prose, a table
row, display math, a code line, French, an image's alt text) go through every answer path and each gets an answer
or a clear decline, never an error.

Paths: `extractive` for every page's questions through GET /api and POST /v1/chat/completions (no model, quick);
`qa` (RAG with the bundled chat model) for one question of every page, and a fine-tune (`finetune` on /v1) for those
of the real-site pages (math, code, table, French, photos, the 10,000-word post); `mebot ask` and the web page for a
pasted display-math block and code block. Bounded: about thirty generated answers in all. All on the session's
`mebot run` of the sample site and `mebot serve` over it (tests/background_run.py).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from mebot.assets.index.context import split_sentences
from mebot.assets.ingest.html_text import extract_page
from mebot.resources.settings import load_settings
from tests.data.test_golden_sample_site import SITE, content_pages
from tests.pipeline.server.helpers import client_from
from tests.pipeline.server.test_browser import wait_answered
from tests.test_end_to_end import mebot_ask

SETTINGS = load_settings()
REAL_SITE_PAGES = {
    "/posts/percentile-confidence-intervals/",
    "/posts/un-week-end-a-lyon/",
    "/posts/northumberland-coast-in-photos/",
    "/posts/a-year-on-plot-14/",
}


def page_sentences(path: str) -> list[str]:
    html = content_pages()[path].read_text(encoding="utf-8")
    page = extract_page(html, SETTINGS.site.content_selectors, SETTINGS.site.drop_selectors)
    return [s for s in split_sentences(page.text) if len(s.split()) >= 4]


def questions_of(path: str) -> list[str]:
    """Questions from the page's own sentences: one from its middle, one pasted whole (a unit is cut to what a
    question may hold), and for a page with units, its display math and a code line."""
    sentences = page_sentences(path)
    middle = sentences[len(sentences) // 2]
    words = re.findall(r"\w[\w'-]*", middle)[:12]
    questions = [f"What did you write about {' '.join(words)}?", middle[:900]]
    for mark in ("$$", "```"):
        questions += [s[:900] for s in sentences if s.startswith(mark)][:1]
    return questions


PAGES = sorted(content_pages())
assert len(PAGES) >= 22 and REAL_SITE_PAGES <= set(PAGES)


def assert_answered(status: int, text: str, where: str) -> None:
    assert status == 200, f"{where}: HTTP {status} {text[:300]}"
    assert text.strip(), f"{where}: an empty answer"


def assert_answered_or_refused_clearly(status: int, text: str, where: str) -> None:
    """An answer, or for a paste longer than the server takes (serve.max_query_chars), a 413 that says the limit."""
    if status == 413:
        assert "characters long; the limit is" in text, f"{where}: {text[:300]}"
        return
    assert_answered(status, text, where)


def api(server, address: str, model: str, question: str) -> tuple[int, str]:
    with client_from(address, base_url=server.url, timeout=600) as client:
        response = client.get("/api", params={"query": question, "model": model})
    body = response.json()
    return response.status_code, body.get("text") or str(body)


def v1(server, address: str, model: str, question: str) -> tuple[int, str]:
    with client_from(address, base_url=server.url, timeout=600) as client:
        response = client.post(
            "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": question}]}
        )
    body = response.json()
    text = body["choices"][0]["message"]["content"] if response.status_code == 200 else str(body)
    return response.status_code, text


@pytest.mark.parametrize("path", PAGES)
def test_every_page_s_questions_get_an_extractive_answer_or_a_decline_on_api_and_v1(server, path):
    for n, question in enumerate(questions_of(path)):
        address = f"127.0.{PAGES.index(path) + 2}.{n + 1}"  # a rate-limit bucket of its own
        status, text = api(server, address, "extractive", question)
        assert_answered_or_refused_clearly(status, text, f"/api extractive {path} {question[:60]!r}")
        status, text = v1(server, address, "extractive", question)
        assert_answered_or_refused_clearly(status, text, f"/v1 extractive {path} {question[:60]!r}")


@pytest.mark.parametrize("path", PAGES)
def test_one_question_of_every_page_gets_a_rag_answer_and_of_the_real_site_pages_a_finetuned_one(server, path):
    question = questions_of(path)[0]
    address = f"127.1.{PAGES.index(path) + 2}.1"
    status, text = api(server, address, "qa", question)
    assert_answered(status, text, f"/api qa {path}")
    if path in REAL_SITE_PAGES:  # a fine-tune reads no page: four of its answers show it takes any question
        status, text = v1(server, address, "finetune", question)
        assert_answered(status, text, f"/v1 finetune {path}")


@pytest.mark.parametrize(
    ("model", "path", "mark"),
    [
        ("rag", "/posts/percentile-confidence-intervals/", "$$"),
        ("extractive", "/posts/percentile-confidence-intervals/", "```"),
    ],
)
def test_mebot_ask_answers_a_pasted_unit_of_the_technical_post(built, model, path, mark):
    question = next(q for q in questions_of(path) if q.startswith(mark))
    result: subprocess.CompletedProcess = mebot_ask(built.data, "--model", model, question)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), f"mebot ask --model {model}: no answer"


def test_the_page_answers_a_pasted_display_math_question(browser, server):
    question = next(q for q in questions_of("/posts/percentile-confidence-intervals/") if q.startswith("$$"))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
    page.get_by_label("Model").select_option("extractive")
    page.get_by_label("Your question").fill(question)
    page.get_by_role("button", name="Ask").click()
    wait_answered(page, timeout_ms=120_000)
    assert page.locator("#answer").inner_text().strip()
    assert not errors, errors


def test_the_sweep_covers_every_page_of_the_sample_site():
    assert {p.relative_to(SITE).parent.as_posix() for p in content_pages().values()} >= {
        "about",
        "posts/percentile-confidence-intervals",
        "posts/a-year-on-plot-14",
    }
    assert any(q.startswith("$$") for q in questions_of("/posts/percentile-confidence-intervals/"))
    assert any(q.startswith("```") for q in questions_of("/posts/percentile-confidence-intervals/"))
