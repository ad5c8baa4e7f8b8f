"""The page's 👎 and comment under an answer reach the visitor log (headless Chromium against the real server over
HTTP, on a real FAISS index with the fake models of tests/pipeline/server/inprocess.py)."""

from pathlib import Path

import pytest

from mebot.resources.layout import DataLayout
from mebot.resources.visitor_log import VisitorLog
from tests.helpers import CHROMIUM, CHROMIUM_ARGS
from tests.pipeline.server.inprocess import build_index, real_server

pytestmark = pytest.mark.full
QUESTION = "What is fact 1 about topic 2?"


def test_thumbs_down_and_a_comment_on_the_page_are_logged_against_the_answer(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    built = build_index(tmp_path)
    with real_server(built, {}) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(server.url + "/")
        assert page.locator("#feedback").is_hidden()  # nothing to rate before an answer
        page.fill("#question", QUESTION)
        page.click("#ask-button")
        page.wait_for_selector("#feedback:not([hidden])", timeout=30_000)
        page.fill("#feedback-comment", "That is not fact 1")
        page.click("#feedback-down")
        page.locator("#feedback-status", has_text="Thank you").wait_for(timeout=30_000)
        browser.close()
    rows = VisitorLog(DataLayout(built.data).visitor_log).read()
    assert rows[["channel", "question", "rating", "comment"]].to_dict("records") == [
        {"channel": "v1-stream", "question": QUESTION, "rating": "down", "comment": "That is not fact 1"}
    ]
