"""The benchmarks' text: the embedded sample site's pages, read from disk and extracted as the crawl does, and a
deterministic set of questions about them.

Reading the files (instead of crawling) keeps a benchmark of chunking or embedding free of a crawl; the same
pages are kept as a crawl keeps: not the 404 page, not what robots.txt disallows, not the listing pages
(`site.index_only`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from protego import Protego  # noqa: E402

from mebot.assets.ingest.html_text import extract_page  # noqa: E402
from mebot.resources.settings import PROJECT_ROOT, Settings  # noqa: E402
from tests.test_end_to_end import SAMPLE_SITE_QUESTIONS  # noqa: E402

SAMPLE_SITE = PROJECT_ROOT / "data" / "sample_site"
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)")


def sample_site_pages(settings: Settings | None = None) -> pd.DataFrame:
    """raw_pages-shaped rows (url path, title, text, status 200) of the sample site's content pages."""
    settings = settings or Settings()
    robots = Protego.parse((SAMPLE_SITE / "robots.txt").read_text(encoding="utf-8"))
    listing = [re.compile(p) for p in settings.site.index_only]
    rows = []
    for page in sorted(SAMPLE_SITE.rglob("*.html")):
        path = "/" + str(page.relative_to(SAMPLE_SITE)).removesuffix("index.html")
        if page.name == "404.html" or not robots.can_fetch(path, settings.site.user_agent):
            continue
        if any(p.search(path) for p in listing):
            continue
        extracted = extract_page(
            page.read_text(encoding="utf-8"), settings.site.content_selectors, settings.site.drop_selectors
        )
        if extracted.text:
            rows.append({"url": path, "title": extracted.title, "text": extracted.text, "status": 200})
    return pd.DataFrame(rows)


def questions(pages: pd.DataFrame, n: int = 50) -> list[tuple[str, str]]:
    """`n` (question, page url) pairs: the end-to-end test's hand-written questions, then questions made from the
    first sentence of the pages' paragraphs, taken round-robin over the pages (deterministic)."""
    pairs = [(q, url) for q, url in SAMPLE_SITE_QUESTIONS.items() if url in set(pages["url"])]
    candidates: list[list[tuple[str, str]]] = []
    for page in pages.itertuples(index=False):
        mine = []
        for paragraph in page.text.split("\n\n"):
            match = _SENTENCE.match(paragraph.strip())
            sentence = match.group(1) if match else ""
            if 8 <= len(sentence.split()) <= 40 and not sentence.startswith("- "):
                mine.append((f"What did you mean when you wrote: {sentence.rstrip('.!?')}?", page.url))
        candidates.append(mine)
    depth = 0
    while len(pairs) < n and any(depth < len(c) for c in candidates):
        for mine in candidates:
            if depth < len(mine) and len(pairs) < n:
                pairs.append(mine[depth])
        depth += 1
    return pairs
