"""The widget (/widget.js) on the person's own site, and keyboard and screen-reader use of the widget and the page,
in headless Chromium.

The site is served from another origin (a second 127.0.0.1 port, with its own strict Content-Security-Policy and a
style sheet that would break a widget that shared its CSS); mebot is the real app (create_app) under uvicorn on the
stand-in registry of test_browser.py, which streams a known answer a word at a time. A third port is a site that
is not in serve.allowed_origins."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from mebot.assets.index.rag import Source
from mebot.pipeline.server.app import create_app
from mebot.pipeline.server.models import RAG_MODEL, ModelChoice
from mebot.resources.settings import SettingsError, parse_settings
from tests.pipeline.server.test_browser import (
    FT_MODEL,
    PAGE_URL,
    PERSON,
    WORDS,
    StreamingRegistry,
    assert_security_headers,
)
from tests.sites import free_port

ANSWER = " ".join(WORDS)
SITE_CSS = """
body * { color: rgb(255, 0, 0) !important; font-size: 40px !important; }
button, textarea, form, ol, li, p, section { display: none !important; }
h1 { font-family: serif; }
"""
# The widget's parts, found through its (open) shadow root.
SHADOW = "document.querySelector('mebot-widget').shadowRoot"
WATCH_CSP = """window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"""


def site_page(mebot_url: str, model: str | None = None) -> str:
    """A page of the person's site with the widget's tag (`model`: its data-model, if any)."""
    options = f' data-model="{model}"' if model else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tobias's site</title><link rel="stylesheet" href="/site.css">
</head><body>
<a id="site-link" href="#about">About me</a>
<h1 id="site-title">Tobias's site</h1>
<script src="{mebot_url}/widget.js"{options}></script>
</body></html>"""


@dataclass
class Site:
    url: str
    server: ThreadingHTTPServer


def start_site(port: int, mebot_url: str) -> Site:
    """A static site with a strict CSP that lets in mebot's script and requests only; /rag.html names the model."""
    pages = {"/site.css": (SITE_CSS, "text/css"), "/rag.html": (site_page(mebot_url, RAG_MODEL), "text/html")}
    policy = (
        f"default-src 'self'; script-src 'self' {mebot_url}; connect-src {mebot_url}; style-src 'self'; "
        "object-src 'none'"
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            text, kind = pages.get(self.path, (site_page(mebot_url), "text/html"))
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Security-Policy", policy)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Site(f"http://127.0.0.1:{port}", server)


@dataclass
class Setup:
    mebot: str
    registry: StreamingRegistry
    site: Site  # in serve.allowed_origins
    other_site: Site  # not


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    site_port, other_port, mebot_port = free_port(), free_port(), free_port()
    assert len({site_port, other_port, mebot_port}) == 3
    mebot = f"http://127.0.0.1:{mebot_port}"
    settings = parse_settings(
        {
            "persona": {"name": PERSON},
            "serve": {"rate_limit_burst": 100, "allowed_origins": [f"http://127.0.0.1:{site_port}"]},
        }
    )
    registry = StreamingRegistry(tmp_path_factory.mktemp("widget-data"), delay_s=0.03)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, registry), host="127.0.0.1", port=mebot_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    sites = [start_site(site_port, mebot), start_site(other_port, mebot)]
    yield Setup(mebot, registry, *sites)
    for site in sites:
        site.server.shutdown()
    server.should_exit = True
    thread.join(timeout=10)


def open_site(browser, site: Site, path: str = "/"):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(WATCH_CSP)
    page.goto(site.url + path)
    page.wait_for_function(f"() => !!document.querySelector('mebot-widget') && !!{SHADOW}", timeout=30_000)
    return page, errors


def turn_count(page) -> int:
    return page.evaluate(f"() => {SHADOW}.querySelectorAll('.turns > li').length")


def wait_turn_answered(page, number: int) -> None:
    """Until the `number`th turn (1-based) has its whole answer and the status says so."""
    page.wait_for_function(
        f"""() => {{
          const turns = {SHADOW}.querySelectorAll('.turns > li');
          return turns.length >= {number} && turns[{number - 1}].querySelector('.answer').ariaBusy === 'false'
            && {SHADOW}.querySelector('.status').textContent === 'Answered.';
        }}""",
        timeout=30_000,
    )


# ------------------------------------------------------------------------------------ the script itself


def test_the_widget_script_is_javascript_with_the_name_and_the_security_headers(tmp_path: Path):
    name = 'Ana "O\'Neil" </script><b>'
    settings = parse_settings({"persona": {"name": name}})
    with TestClient(create_app(settings, StreamingRegistry(tmp_path))) as client:
        response = client.get("/widget.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert_security_headers(response)
    assert '"{{persona_name}}"' not in response.text
    assert 'const PERSONA = "Ana \\"O\'Neil\\" \\u003c/script>\\u003cb>";' in response.text  # a JS string, inert


def test_the_old_cors_origins_key_is_refused_with_its_new_name():
    with pytest.raises(SettingsError, match=r"serve.cors_origins is now serve.allowed_origins"):
        parse_settings({"serve": {"cors_origins": ["https://me.example"]}})


@pytest.mark.parametrize("bad", ["*", "me.example", "https://me.example/", "https://me.example/blog", "ftp://me.x"])
def test_allowed_origins_must_be_origins(bad: str):
    with pytest.raises(SettingsError, match="is not an origin") as error:
        parse_settings({"serve": {"allowed_origins": [bad]}})
    assert repr(bad) in str(error.value)


# -------------------------------------------------------------------------------- on the person's site


def test_the_widget_on_another_site_streams_answers_with_references_and_follows_up(browser, setup, tmp_path):
    setup.registry.extra_sources = [Source("javascript:alert(1)", "Click me", "c2", 0.5, "x", "a passage")]
    try:
        page, errors = open_site(browser, setup.site)
        bodies: list[dict] = []
        page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        responses = []
        page.on("response", lambda r: responses.append(r) if r.url.startswith(setup.mebot) else None)
        page.get_by_role("button", name=f"Ask {PERSON}").click()
        page.evaluate(f"""() => {{
          window.answerTexts = [];
          const turns = {SHADOW}.querySelector('.turns');
          new MutationObserver(() => {{
            const answer = turns.querySelector('li:last-child .answer');
            if (answer) window.answerTexts.push(answer.textContent);
          }}).observe(turns, {{characterData: true, childList: true, subtree: true}});
        }}""")
        page.get_by_label("Your question").fill("What is your sourdough starter called?")
        page.get_by_role("button", name="Ask", exact=True).click()
        wait_turn_answered(page, 1)
        growing = [text for text in dict.fromkeys(page.evaluate("window.answerTexts")) if text]
        assert len(growing) >= len(WORDS) - 2, growing  # streamed about a word at a time
        assert growing[-1] == ANSWER
        links = page.locator("mebot-widget .turns > li").nth(0).locator(".references a")
        assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [PAGE_URL]  # no javascript:
        assert links.nth(0).inner_text() == "My Weekday Sourdough"
        assert page.locator("mebot-widget .references span").all_inner_texts() == ["Click me"]

        page.get_by_label("Your question").fill("How old is she?")
        page.keyboard.press("Enter")
        wait_turn_answered(page, 2)
    finally:
        setup.registry.extra_sources = []
    assert turn_count(page) == 2  # both turns stay visible
    questions = page.locator("mebot-widget .question").all_inner_texts()
    assert questions == ["What is your sourdough starter called?", "How old is she?"]
    assert page.locator("mebot-widget .answer").all_inner_texts() == [ANSWER, ANSWER]
    assert bodies[0]["messages"] == [{"role": "user", "content": "What is your sourdough starter called?"}]
    assert bodies[1]["messages"] == [  # the follow-up carries the conversation
        {"role": "user", "content": "What is your sourdough starter called?"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "How old is she?"},
    ]
    assert bodies[1]["stream"] is True and bodies[1]["model"] == "rag"
    assert setup.registry.questions[-1] == ("rag", "How old is she?")
    # the default model once, then the two answers (a preflight is not reported to the page)
    assert [(r.request.method, r.url.rsplit("/", 1)[-1]) for r in responses] == [
        ("GET", "models"),
        ("POST", "completions"),
        ("POST", "completions"),
    ]
    for response in responses:  # CORS for the site, with the security headers kept
        assert_security_headers(response)
        assert response.headers["access-control-allow-origin"] == setup.site.url
    assert page.evaluate("window.cspViolations") == []  # works under the site's strict policy
    assert not errors, errors
    page.screenshot(path=str(tmp_path.parent / "mebot-widget-latest.png"))  # to look at


def preflight(setup: Setup, origin: str) -> httpx.Response:
    """What a browser asks before the widget's POST from a page of `origin`."""
    return httpx.options(
        setup.mebot + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_a_site_not_in_allowed_origins_is_refused(browser, setup):
    refused = preflight(setup, setup.other_site.url)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert_security_headers(refused)
    allowed = preflight(setup, setup.site.url)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == setup.site.url
    assert_security_headers(allowed)

    before = len(setup.registry.questions)
    page, errors = open_site(browser, setup.other_site)
    page.get_by_role("button", name=f"Ask {PERSON}").click()
    page.get_by_label("Your question").fill("What is your sourdough starter called?")
    page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible", timeout=30_000)
    assert alert.inner_text() == f"{PERSON}'s bot could not be reached from this page."
    assert len(setup.registry.questions) == before  # the browser never sent the question
    assert turn_count(page) == 0
    assert page.get_by_label("Your question").input_value() == "What is your sourdough starter called?"  # kept


def test_the_widget_shows_the_servers_error_and_keeps_the_question(browser, setup):
    page, errors = open_site(browser, setup.site)
    page.get_by_role("button", name=f"Ask {PERSON}").click()
    too_long = "Why? " * 300  # 1500 characters; serve.max_query_chars is 1000
    page.get_by_label("Your question").fill(too_long)
    page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible", timeout=30_000)
    assert alert.inner_text() == "the question is 1499 characters long; the limit is 1000"  # the server's words
    assert turn_count(page) == 0
    assert page.get_by_label("Your question").input_value() == too_long.strip()  # kept, to shorten and send again
    assert not errors, errors


@pytest.mark.parametrize(("path", "expected"), [("/", FT_MODEL), ("/rag.html", RAG_MODEL)], ids=["default", "named"])
def test_the_widget_answers_with_the_servers_default_model_unless_the_tag_names_one(browser, setup, path, expected):
    setup.registry.default = ModelChoice(FT_MODEL, "serve.default_model names it")
    try:
        page, errors = open_site(browser, setup.site, path)
        page.get_by_role("button", name=f"Ask {PERSON}").click()
        page.get_by_label("Your question").fill("What is your sourdough starter called?")
        page.keyboard.press("Enter")
        wait_turn_answered(page, 1)
    finally:
        setup.registry.default = ModelChoice(RAG_MODEL, "serve.default_model names it")
    assert setup.registry.questions[-1] == (expected, "What is your sourdough starter called?")
    assert not errors, errors


def test_the_sites_css_does_not_reach_the_widget_nor_the_widgets_the_site(browser, setup):
    page, errors = open_site(browser, setup.site)
    launcher = page.get_by_role("button", name=f"Ask {PERSON}")
    assert launcher.is_visible()
    assert launcher.evaluate("(b) => getComputedStyle(b).color") == "rgb(255, 255, 255)"
    assert launcher.evaluate("(b) => getComputedStyle(b).fontSize") == "15px"
    launcher.click()
    assert page.get_by_label("Your question").is_visible()
    assert page.get_by_role("button", name="Ask", exact=True).is_visible()
    title = page.locator("#site-title")
    assert title.evaluate("(h) => getComputedStyle(h).fontFamily") == "serif"
    assert title.evaluate("(h) => getComputedStyle(h).color") == "rgb(255, 0, 0)"
    assert page.evaluate("() => [...document.body.children].map((e) => e.tagName)") == [
        "A",
        "H1",
        "SCRIPT",
        "MEBOT-WIDGET",
    ]
    assert not errors, errors


# ---------------------------------------------------------------------------- keyboard and screen reader


def active_in_widget(page) -> str:
    """What has focus: `site:<tag>#id` on the site, or `widget:<tag>:<accessible text>` in the widget."""
    return page.evaluate(f"""() => {{
      const outer = document.activeElement;
      if (outer && outer.tagName === 'MEBOT-WIDGET') {{
        const inner = {SHADOW}.activeElement;
        if (!inner) return 'widget:none';
        return `widget:${{inner.tagName}}:${{inner.getAttribute('aria-label') || inner.id || inner.textContent}}`;
      }}
      return `site:${{outer ? outer.tagName : 'none'}}#${{outer ? outer.id : ''}}`;
    }}""")


def test_the_widget_works_from_the_keyboard_alone_and_announces_the_answer(browser, setup):
    page, errors = open_site(browser, setup.site)
    launcher = f"widget:BUTTON:Ask {PERSON}"
    page.keyboard.press("Tab")
    assert active_in_widget(page) == "site:A#site-link"
    page.keyboard.press("Tab")
    assert active_in_widget(page) == launcher
    assert page.get_by_role("dialog").count() == 0
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=f"Ask {PERSON}")
    assert dialog.is_visible()
    assert page.get_by_role("button", name=f"Ask {PERSON}").get_attribute("aria-expanded") == "true"
    assert active_in_widget(page) == "widget:TEXTAREA:question"  # straight into the question
    page.keyboard.type("What is your starter called?")
    page.keyboard.press("Enter")
    wait_turn_answered(page, 1)
    live = page.locator("mebot-widget [aria-live=polite][data-announcement]")
    assert live.text_content() == ANSWER  # the whole answer, once, for a screen reader
    assert active_in_widget(page) == "widget:TEXTAREA:question"  # ready for a follow-up
    # the order inside the panel: close, the conversation's reference links, question, Ask
    page.keyboard.press("Shift+Tab")
    assert active_in_widget(page) == "widget:A:My Weekday Sourdough"
    page.keyboard.press("Shift+Tab")
    assert active_in_widget(page) == "widget:BUTTON:Close"
    for _ in range(3):
        page.keyboard.press("Tab")
    assert active_in_widget(page) == "widget:BUTTON:Ask"
    page.keyboard.press("Escape")
    assert dialog.is_hidden()
    assert active_in_widget(page) == launcher  # focus back on the button
    assert page.get_by_role("button", name=f"Ask {PERSON}").get_attribute("aria-expanded") == "false"
    page.keyboard.press("Enter")  # opens again, the conversation kept
    assert dialog.is_visible() and turn_count(page) == 1
    assert not errors, errors


def test_the_page_has_labels_a_sensible_focus_order_and_announces_the_answer(browser, setup):
    page = browser.new_page()
    page.goto(setup.mebot + "/")
    page.wait_for_selector("#model[data-loaded=true]", timeout=30_000)
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select, button')]
      .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
      .map((e) => e.id)""")
    assert unnamed == []
    order = []
    for _ in range(3):
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.id"))
    assert order == ["question", "model", "ask-button"]
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.type("What is your starter called?")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('status-text').textContent === 'Answered.'", timeout=30_000)
    live = page.locator("#answer-announcement")
    assert live.get_attribute("aria-live") == "polite"
    assert live.text_content() == ANSWER
