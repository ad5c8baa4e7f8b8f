"""The web page in headless Chromium (Debian's chromium driven by playwright).

Two servers: the app in-process on a stand-in model registry that streams a known answer a word at a time (the
page's own behaviour: the title, the keys, the stream, references only with sources), and `mebot serve` on the real
index and models of the session's `mebot run` (a real answer, streamed by llama.cpp as it generates it, with a
reference to the right page)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

from mebot.assets.index.rag import Source
from mebot.pipeline.server.app import create_app
from mebot.pipeline.server.limits import CONTENT_SECURITY_POLICY
from mebot.pipeline.server.models import RAG_MODEL, ModelChoice, Reply, UnknownModelError
from mebot.pipeline.server.protocol import StreamedText
from mebot.resources.settings import parse_settings
from tests.sites import free_port

PERSON = "Tobias Renwick"
FT_MODEL = "ft-e1-b2-lr0.5"
WORDS = "My sourdough starter is called Brenda and she lives on the top shelf of our fridge.".split()
PAGE_URL = "https://renwick.example/posts/weekday-sourdough/"
STREAMED_QUESTION = "How much did your Raspberry Pi cloud sensor cost?"
STREAMED_QUESTION_PAGE = "/posts/raspberry-pi-cloud-sensor/"
PASSAGE = "Brenda is one year old today. Brenda is a jar of flour and water that lives in our fridge."
# Record the answer's text whenever it changes, with the time, from before the question is sent.
WATCH_ANSWER = """() => {
  window.answerChanges = [];
  const answer = document.getElementById("answer");
  new MutationObserver(() => window.answerChanges.push([performance.now(), answer.textContent]))
    .observe(answer, {characterData: true, childList: true, subtree: true});
}"""


# ------------------------------------------------------------------------ the page on a stand-in registry


@dataclass
class StreamingRegistry:
    """Stands in for ModelRegistry: `rag` answers WORDS with one source, the fine-tuned model the same words
    with none; each word is passed to `on_token` `delay_s` after the one before, as a model generates them."""

    data_dir: Path  # where the server keeps its visitor log
    delay_s: float = 0.06
    questions: list[tuple[str, str]] = field(default_factory=list)
    extra_sources: list[Source] = field(default_factory=list)  # after the real one (a test sets them)
    ready: bool = True
    not_ready_reason: str = ""
    loaded_at: float | None = None
    best: ModelChoice | None = None  # no `finetune` alias: the picker lists the models by name
    default: ModelChoice = field(default_factory=lambda: ModelChoice(RAG_MODEL, "serve.default_model names it"))

    def refresh(self) -> bool:
        return False

    def names(self) -> list[str]:
        return [RAG_MODEL, FT_MODEL]

    def index_version(self) -> str:
        return "test"

    def check(self, model: str) -> str:
        if model not in self.names():
            raise UnknownModelError(f"unknown model {model!r}")
        return model

    def answer(self, model: str, question: str, on_token: Callable[[str], None] | None = None) -> Reply:
        self.questions.append((model, question))
        for number, word in enumerate(WORDS):
            time.sleep(self.delay_s)
            if on_token is not None:
                on_token(("" if number == 0 else " ") + word)
        sources = [Source(PAGE_URL, "My Weekday Sourdough", "c1", 0.71, PASSAGE[:40], PASSAGE), *self.extra_sources]
        return Reply(model=model, text=" ".join(WORDS), sources=sources if model == RAG_MODEL else [])


@dataclass
class InProcessServer:
    url: str
    registry: StreamingRegistry


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """The real app (create_app) under uvicorn in a thread, on the stand-in registry."""
    settings = parse_settings({"persona": {"name": PERSON}, "serve": {"rate_limit_burst": 100}})
    registry = StreamingRegistry(tmp_path_factory.mktemp("page-data"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, registry), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    yield InProcessServer(f"http://127.0.0.1:{port}", registry)
    server.should_exit = True
    thread.join(timeout=10)


# Content-Security-Policy violations, recorded from before the page's first script runs.
WATCH_CSP = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"""
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def assert_security_headers(response) -> None:
    headers = response.headers
    assert {name: headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "default-src 'self'" in headers["content-security-policy"]


def open_page(browser, server: InProcessServer):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(WATCH_CSP)
    assert_security_headers(page.goto(server.url + "/"))
    page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
    return page, errors


def wait_answered(page, timeout_ms: int = 30_000) -> None:
    # (functions, not expression strings: Playwright turns a string into code with eval, which the page's CSP forbids)
    page.wait_for_function(
        "() => document.getElementById('status-text').textContent === 'Answered.'", timeout=timeout_ms
    )


def test_the_page_is_titled_with_the_persons_name(browser, page_server):
    page, errors = open_page(browser, page_server)
    assert page.title() == f"Ask {PERSON}"
    assert page.get_by_role("heading", level=1).inner_text() == f"Ask {PERSON}"
    assert not errors, errors


def test_enter_sends_the_question_and_shift_enter_starts_a_new_line(browser, page_server):
    page, errors = open_page(browser, page_server)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/v1/chat/completions" in request.url else None)
    box = page.get_by_label("Your question")
    box.click()
    page.keyboard.type("What is your starter called?")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("And how old is she?")
    page.wait_for_timeout(300)
    assert box.input_value() == "What is your starter called?\nAnd how old is she?"  # a new line, nothing sent
    assert sent == [] and page.locator("#result").is_hidden()
    before = len(page_server.registry.questions)
    page.keyboard.press("Enter")
    wait_answered(page)
    assert len(sent) == 1
    assert page_server.registry.questions[before:] == [("rag", "What is your starter called?\nAnd how old is she?")]
    assert box.input_value() == "What is your starter called?\nAnd how old is she?"  # Enter added no line
    assert not errors, errors


def test_the_answer_appears_in_pieces_as_it_is_generated(browser, page_server):
    page, errors = open_page(browser, page_server)
    page.evaluate(WATCH_ANSWER)
    page.get_by_label("Your question").fill("What is your sourdough starter called?")
    page.get_by_role("button", name="Ask").click()
    page.wait_for_function("() => (window.answerChanges || []).some(([, text]) => text.length > 0)", timeout=30_000)
    assert page.get_by_role("status").inner_text().strip() == "Answering…"  # text shown before the end
    wait_answered(page)
    changes = page.evaluate("window.answerChanges")
    texts = [text for _, text in changes]
    growing = [text for text in dict.fromkeys(texts) if text]
    assert len(growing) >= len(WORDS) - 2, texts  # about a word per change, not the answer at once
    assert all(b.startswith(a) for a, b in zip(growing, growing[1:], strict=False)), texts  # each adds to the last
    first = next(at for at, text in changes if text)
    last = next(at for at, text in reversed(changes) if text)
    assert last - first >= (len(WORDS) - 3) * StreamingRegistry.delay_s * 1000 * 0.8  # spread over the generation
    assert page.locator("#answer").inner_text() == " ".join(WORDS)
    assert not errors, errors


def test_references_show_with_a_link_only_when_the_answer_has_sources(browser, page_server):
    page, errors = open_page(browser, page_server)
    page.get_by_label("Model").select_option(FT_MODEL)
    page.get_by_label("Your question").fill("What is your sourdough starter called?")
    page.get_by_role("button", name="Ask").click()
    wait_answered(page)
    assert page.locator("#answer").inner_text() == " ".join(WORDS)
    assert page.locator("#references-section").is_hidden()  # a fine-tuned model has no sources: no block at all
    assert page.locator("#references li").count() == 0

    page.get_by_label("Model").select_option(RAG_MODEL)
    page.get_by_role("button", name="Ask").click()
    page.wait_for_function("() => document.getElementById('status-text').textContent !== 'Answered.'")
    wait_answered(page)
    assert page.locator("#references-section").is_visible()
    link = page.locator("#references a.reference-link")
    assert link.count() == 1 and link.get_attribute("href") == PAGE_URL
    assert link.inner_text() == "My Weekday Sourdough"
    page.locator("#references details summary").click()
    assert page.locator("#references blockquote").inner_text() == PASSAGE
    assert not errors, errors


def test_only_http_urls_become_links_and_the_page_works_under_its_content_security_policy(browser, page_server):
    evil = [
        Source("javascript:alert(document.domain)", "Click me", "c2", 0.5, "x", "a passage"),
        Source("data:text/html,<script>alert(1)</script>", "Data", "c3", 0.4, "y", "another passage"),
        Source("file:///etc/passwd", "File", "c4", 0.3, "z", "a third passage"),
    ]
    page_server.registry.extra_sources = evil
    try:
        page, errors = open_page(browser, page_server)
        scripts = []
        page.on("response", lambda response: scripts.append(response) if "/static/" in response.url else None)
        page.reload()
        page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
        page.get_by_label("Your question").fill("What is your sourdough starter called?")
        page.get_by_role("button", name="Ask").click()
        wait_answered(page)
    finally:
        page_server.registry.extra_sources = []
    assert page.locator("#references li").count() == 4
    links = page.locator("#references a")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [PAGE_URL]
    assert page.locator("#references span.reference-link").all_inner_texts() == ["Click me", "Data", "File"]
    assert {"app.js", "style.css"} <= {response.url.rsplit("/", 1)[-1] for response in scripts}
    for response in scripts:  # every static file with the headers
        assert_security_headers(response)
    assert page.evaluate("window.cspViolations") == []  # the page needs nothing its policy forbids
    assert not errors, errors


def test_the_name_in_the_page_is_escaped(tmp_path: Path):
    settings = parse_settings({"persona": {"name": "Ana <b>O'Neil</b> & co"}})
    with TestClient(create_app(settings, StreamingRegistry(tmp_path))) as client:
        page = client.get("/").text
    assert "<title>Ask Ana &lt;b&gt;O&#x27;Neil&lt;/b&gt; &amp; co</title>" in page
    assert "{{persona_name}}" not in page and "<b>O'Neil</b>" not in page


@pytest.mark.parametrize(
    ("pieces", "answer", "sent"),
    [
        (["  ", "\n Brenda", " is", " her name.", " \n"], "Brenda is her name.", ["Brenda", " is", " her name."]),
        (["Brenda", " ", " is"], "Brenda  is", ["Brenda", "  is"]),
        ([], "Said at once.", []),
    ],
    ids=["stripped", "inner-spaces-kept", "nothing-streamed"],
)
def test_streamed_pieces_add_up_to_the_answer(pieces, answer, sent):
    streamed = StreamedText()
    out = [text for piece in pieces if (text := streamed.add(piece))]
    assert out == sent
    assert "".join(out) + streamed.rest(answer) == answer


# ------------------------------------------------------------------------ mebot serve with the real models


def test_page_answers_a_question_with_a_reference_link(browser, server, tmp_path):
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(WATCH_CSP)
    assert_security_headers(page.goto(server.url + "/"))
    assert page.title() == f"Ask {PERSON}"
    picker = page.get_by_label("Model")
    page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
    assert "rag" in picker.locator("option").all_inner_texts()
    picker.select_option("rag")
    page.evaluate(WATCH_ANSWER)
    # a question the other server tests do not ask: generated now, not read from the LLM cache in one piece
    page.get_by_label("Your question").fill(STREAMED_QUESTION)
    page.get_by_role("button", name="Ask").click()
    wait_answered(page, timeout_ms=300_000)
    assert page.locator("#answer").inner_text().strip()
    assert page.locator("#spinner").is_hidden()
    texts = [text for _, text in page.evaluate("window.answerChanges") if text]
    assert len(dict.fromkeys(texts)) >= 3, texts  # llama.cpp's tokens arrived as they were generated
    links = page.locator("#references a.reference-link")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert any(href.endswith(STREAMED_QUESTION_PAGE) for href in hrefs), hrefs
    # a reference expands to show the chunk's text
    item = page.locator("#references li").filter(has=page.locator(f"a[href$='{STREAMED_QUESTION_PAGE}']")).first
    assert not item.locator("blockquote").is_visible()
    item.locator("summary").click()
    assert "Raspberry Pi" in item.locator("blockquote").inner_text()
    page.screenshot(path=str(tmp_path / "mebot-page.png"), full_page=True)
    assert (tmp_path / "mebot-page.png").stat().st_size > 1000
    assert not errors, errors
    assert all(url.startswith(server.url) for url in requests), requests  # nothing fetched from elsewhere
    assert page.evaluate("window.cspViolations") == []
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
