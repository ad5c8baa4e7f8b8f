"""Answering never fails on content: whatever a page holds (random Unicode, 50 kB of LaTeX, a 10,000-character line,
only code), its text goes crawl -> chunks -> index -> every answer path (RAG with the sentence context, RAG with
whole chunks, extractive) and each question gets an answer or a clear decline, never an exception.

The embedder is the real default one (MiniLM's own tokenizer is what over-long units used to trip); the chat model
is the fake of tests/fakes.py (content never reaches a model's weights, only its prompt). Hypothesis writes the
page text; one test crawls the worst of it over real HTTP with Scrapy first."""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mebot.assets.index.embeddings import embed_chunks, stack_vectors
from mebot.assets.index.extractive import DECLINE, ExtractiveBot
from mebot.assets.index.rag import RagAnswer, RagBot
from mebot.assets.ingest.chunks import chunk_pages
from mebot.assets.ingest.crawl import build_raw_pages
from mebot.assets.ingest.html_text import extract_page
from mebot.resources.crawler import ScrapyCrawler
from mebot.resources.embeddings import build_embedder
from mebot.resources.local_site import LocalSite
from mebot.resources.settings import Settings, parse_settings
from mebot.resources.vector_index import load_index, write_index
from tests.fakes import FakeChat, default_reply
from tests.sites import page_html, write_page

ALIGN = "\\begin{align*} r_{%d} &= \\left\\lceil (N+1)\\cdot p - z\\sqrt{N p (1-p)} \\right\\rceil \\\\ \\end{align*}\n"
LATEX_50KB = "".join(ALIGN % i for i in range(50_000 // len(ALIGN) + 1))
LONG_LINE = "".join(f"token{i}" for i in range(2000))[:10_000]
ONLY_CODE = "\n".join(f"def step_{i}(x):\n    return [x * {i} for _ in range({i})]  # {'=' * 40}" for i in range(150))
NORMAL_PAGE = "I keep bees on the allotment. The hives are painted green. Honey comes in August."


def page_markup(text: str, as_code: bool) -> str:
    """A page whose main content is `text`: in a <pre> (a code block) or as paragraphs split at blank lines."""
    if as_code:
        return f"<pre><code>{html.escape(text)}</code></pre>"
    return "".join(f"<p>{html.escape(part)}</p>" for part in text.split("\n\n"))


def questions_from(text: str) -> list[str]:
    """Questions a visitor could paste from the page: its words, a stretch of its longest line, and a plain one."""
    words = " ".join(text.split())
    longest = max(text.splitlines() or [""], key=len)
    return [q for q in (words[:300], longest[:500], "What do you write about?") if q.strip()]


def check_every_answer_path(bot: RagBot, questions: list[str]) -> None:
    for question in questions:
        for context in ("sentences", "chunks"):
            bot.settings = bot.settings.model_copy(
                update={"rag": bot.settings.rag.model_copy(update={"context": context})}
            )
            answer = bot.ask(question)
            assert isinstance(answer, RagAnswer) and isinstance(answer.answer, str), (context, question[:80])
        quoted = ExtractiveBot(bot).ask(question)
        assert quoted.answer == DECLINE or quoted.sources, question[:80]


def build_bot(settings: Settings, pages: pd.DataFrame, index_dir: Path) -> RagBot:
    chunks = chunk_pages(pages, settings.rag.chunk_tokens, settings.rag.overlap_tokens)
    embedder = build_embedder(settings.models.embedding)
    frame, _ = embed_chunks(chunks, embedder, None)
    write_index(
        index_dir, stack_vectors(frame, embedder.dim), frame["chunk_id"].tolist(), embedder.identity, 50_000, 16
    )
    index = load_index(index_dir, embedder.identity)
    return RagBot(settings, embedder, index, chunks, FakeChat(settings.models.chat, responder=quoting_model))


def quoting_model(messages: list[dict], params: dict, client: FakeChat) -> str:
    """The fake model's answer (the context sentence closest to the question) after words of its own: a model that
    answers with the page's punctuation alone is a model fault, which this test is not about."""
    return "From my notes: " + default_reply(messages, params, client)


SETTINGS = parse_settings({"rag": {"temperature": 0}})


def pages_frame(texts: list[tuple[str, bool]]) -> pd.DataFrame:
    """raw_pages rows as the crawl writes them, each page's text as extract_page reads its HTML."""
    rows = []
    for n, (text, as_code) in enumerate([*texts, (NORMAL_PAGE, False)]):
        path = f"/posts/p{n}/"
        markup = page_html(path, f"Page {n}", page_markup(text, as_code))
        page = extract_page(markup, SETTINGS.site.content_selectors, SETTINGS.site.drop_selectors)
        rows.append({"url": f"http://127.0.0.1:9{path}", "title": page.title, "text": page.text, "status": 200})
    return pd.DataFrame(rows)


@pytest.mark.full  # the real embedder, a few seconds an example
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=st.text(max_size=4000), as_code=st.booleans())
@example(text=LATEX_50KB, as_code=False)
@example(text=LONG_LINE, as_code=False)
@example(text=ONLY_CODE, as_code=True)
@example(text="$$ " + LATEX_50KB[:3000].replace("\n", " ") + " $$\n\nAfter the math, 964 readings.", as_code=False)
def test_any_page_text_gets_an_answer_or_a_decline_on_every_path(text: str, as_code: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bot = build_bot(SETTINGS, pages_frame([(text, as_code)]), Path(tmp) / "index")
        check_every_answer_path(bot, questions_from(text))


@pytest.mark.full  # a real Scrapy crawl over HTTP and the real embedder
def test_the_worst_pages_crawled_over_http_still_answer_on_every_path(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    worst = {"/latex/": (LATEX_50KB, False), "/line/": (LONG_LINE, False), "/code/": (ONLY_CODE, True)}
    links = "".join(f'<p><a href="{path}">{path}</a></p>' for path in worst)
    write_page(site_dir, "/", page_html("/", "Home", f"<p>{NORMAL_PAGE}</p>{links}"))
    for path, (text, as_code) in worst.items():
        write_page(site_dir, path, page_html(path, path.strip("/").title(), page_markup(text, as_code)))
    site = SETTINGS.site.model_copy(update={"download_delay": 0, "detect_listings": False})
    with LocalSite(site_dir) as served:
        base = served.base_url
        crawl = ScrapyCrawler().crawl(site, [base + "/"], on_progress=lambda _: None)
    pages, _ = build_raw_pages(crawl, site)
    kept = {url.removeprefix(base) for url in pages["url"]}
    assert set(worst) <= kept, kept
    bot = build_bot(SETTINGS, pages, tmp_path / "index")
    check_every_answer_path(bot, [q for text, _ in worst.values() for q in questions_from(text)])
