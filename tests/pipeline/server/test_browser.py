"""The web page in headless Chromium (Debian's chromium driven by playwright): ask, see the answer and a reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.pipeline.server.conftest import QUESTION, QUESTION_PAGE

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def test_page_answers_a_question_with_a_reference_link(browser, server, tmp_path):
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    picker = page.get_by_label("Model")
    page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
    assert "rag" in picker.locator("option").all_inner_texts()
    picker.select_option("rag")
    page.get_by_label("Your question").fill(QUESTION)
    page.get_by_role("button", name="Ask").click()
    page.wait_for_function("document.getElementById('answer').textContent.trim().length > 0", timeout=300_000)
    assert page.get_by_role("status").inner_text().strip() == "Answered."
    assert page.locator("#spinner").is_hidden()
    links = page.locator("#references a.reference-link")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert any(href.endswith(QUESTION_PAGE) for href in hrefs), hrefs
    # references expand to show the chunk's text
    first = page.locator("#references details").first
    assert not first.locator("blockquote").is_visible()
    first.locator("summary").click()
    assert "Brenda" in first.locator("blockquote").inner_text()
    page.screenshot(path=str(tmp_path / "mebot-page.png"), full_page=True)
    assert (tmp_path / "mebot-page.png").stat().st_size > 1000
    assert not errors, errors
    assert all(url.startswith(server.url) for url in requests), requests  # nothing fetched from elsewhere
    shutil.copy(tmp_path / "mebot-page.png", tmp_path.parent / "mebot-page-latest.png")


def test_page_shows_the_servers_error_for_a_too_long_question(browser, server):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
    page.get_by_label("Your question").fill("x" * 2000)
    page.get_by_role("button", name="Ask").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible", timeout=30_000)
    assert "limit" in alert.inner_text()
