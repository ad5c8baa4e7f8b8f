"""Stage 1 (assets/ingest/crawl.py): the pure helpers on hand-made records (the `raw_pages` asset crawling
real sites: test_raw_pages.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import pytest

from mebot.assets.ingest.crawl import (
    RAW_PAGES_COLUMNS,
    boilerplate_lines,
    build_raw_pages,
    explain_empty_crawl,
    normalize_url,
    robots_by_origin,
    robots_violations,
)
from mebot.resources.crawler import CrawlRecords
from mebot.resources.settings import SiteSettings
from tests.assets.ingest.records import FETCHED_AT, SITE, error, page, post, records, skipped

UA = SITE.user_agent

# ================================================================ normalize_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://site.test/a/#section", "http://site.test/a/"),
        ("http://site.test/a/?utm_source=x&utm_medium=y&utm_campaign=z", "http://site.test/a/"),
        ("http://site.test/a/?fbclid=abc&ref=home&gclid=1", "http://site.test/a/"),
        ("http://site.test/a/?UTM_Source=x&page=2", "http://site.test/a/?page=2"),
        ("http://site.test/a/?b=2&a=1&utm_term=t", "http://site.test/a/?a=1&b=2"),
        ("http://site.test/a/?b=2&a=1&a=0", "http://site.test/a/?a=0&a=1&b=2"),
        ("http://site.test/a/?q=&x=1", "http://site.test/a/?q=&x=1"),
        ("HTTP://Site.TEST:8080/Path/Keeps/Case/", "http://site.test:8080/Path/Keeps/Case/"),
        ("http://site.test", "http://site.test/"),
        ("http://site.test/a/?", "http://site.test/a/"),
        ("http://site.test/a/?referrer=x&prefix=y", "http://site.test/a/?prefix=y&referrer=x"),
    ],
    ids=[
        "fragment",
        "utm",
        "fbclid-ref-gclid",
        "tracking-case-insensitive",
        "sorted",
        "repeated-key",
        "blank-value",
        "host-lowercased",
        "empty-path",
        "empty-query",
        "ref-only-exact",
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_normalize_url_is_idempotent() -> None:
    url = "HTTP://Site.test/x/?utm_source=a&z=1&a=2#frag"
    assert normalize_url(normalize_url(url)) == normalize_url(url)


# ================================================================ build_raw_pages


def test_build_raw_pages_keeps_one_row_per_page_with_title_and_text() -> None:
    html = post("/a/", "Alpha", "Alpha body text.")
    frame, summary = build_raw_pages(
        records(
            {"kind": "robots", "url": "http://site.test/robots.txt", "text": "User-agent: *"},
            page("http://site.test/b/", post("/b/", "Beta", "Beta body text."), referer="http://site.test/"),
            page("http://site.test/a/", html, start=True),
        ),
        SITE,
    )
    assert list(frame.columns) == RAW_PAGES_COLUMNS
    assert frame["url"].tolist() == ["http://site.test/a/", "http://site.test/b/"]  # sorted by URL
    alpha = frame.iloc[0]
    assert (alpha["title"], alpha["text"], alpha["status"]) == ("Alpha", "Alpha body text.", 200)
    assert alpha["html_sha256"] == hashlib.sha256(html.encode()).hexdigest()
    assert alpha["fetched_at"] == FETCHED_AT
    assert frame.iloc[1]["referer"] == "http://site.test/"
    assert frame["status"].dtype == "int64"
    assert summary.pages == 2
    assert not summary.skipped and not summary.errors


def test_same_page_under_a_second_url_is_a_duplicate_url_by_canonical_link() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/a/", post("/a/", "Alpha", "Alpha text.", canonical="/a/")),
            page("http://site.test/a/index.html", post("/a/", "Alpha", "Alpha text v2.", canonical="/a/")),
            page("http://site.test/a/?utm_source=feed", post("/a/", "Alpha", "Alpha text v3.")),
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/a/"]
    assert frame.iloc[0]["text"] == "Alpha text."  # the first one is kept
    assert summary.skipped == {"duplicate_url": 2}
    assert summary.pages == 1


def test_canonical_link_to_another_host_is_not_trusted() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/a/", post("/a/", "Alpha", "Alpha text.", canonical="https://other.test/x/")),
            page("http://site.test/b/", post("/b/", "Beta", "Beta text.", canonical="https://other.test/x/")),
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/a/", "http://site.test/b/"]
    assert summary.pages == 2


@pytest.mark.parametrize("canonical", ["file://site.test/etc/passwd", "ftp://site.test/a/", "javascript:alert(1)"])
def test_canonical_link_of_another_scheme_is_ignored(canonical: str) -> None:
    frame, summary = build_raw_pages(
        records(page("http://site.test/a/", post("/a/", "Alpha", "Alpha text.", canonical=canonical))), SITE
    )
    assert frame["url"].tolist() == ["http://site.test/a/"]


def test_a_recorded_page_of_another_scheme_is_never_kept() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/a/", post("/a/", "Alpha", "Alpha text.")),
            page("file://site.test/home/me/.env", "OPENAI_API_KEY=sk-secret"),
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/a/"]
    assert summary.skipped == {"scheme": 1}


def test_relative_canonical_link_is_resolved_and_normalized() -> None:
    frame, _ = build_raw_pages(
        records(
            page(
                "http://site.test/a/amp/",
                post("/a/", "Alpha", "Alpha text.", canonical="../?utm_source=x#top"),
            )
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/a/"]


def test_same_text_under_two_urls_is_duplicate_content() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/a/", post("/a/", "Alpha", "Shared body text.")),
            page("http://site.test/copy-of-a/", post("/copy-of-a/", "Copy", "Shared body text.")),
            page("http://site.test/b/", post("/b/", "Beta", "Different text.")),
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/a/", "http://site.test/b/"]
    assert summary.skipped == {"duplicate_content": 1}


def test_pages_without_text_are_not_duplicates_of_each_other() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/a/", "<html><body><article><h1>Only A</h1></article></body></html>"),
            page("http://site.test/b/", "<html><body><article><h1>Only B</h1></article></body></html>"),
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/a/", "http://site.test/b/"]
    assert frame["text"].tolist() == ["", ""]
    assert "duplicate_content" not in summary.skipped


@pytest.mark.parametrize(
    "path, kept",
    [
        ("/tags/python/", False),
        ("/tag/python/", False),
        ("/category/x/", False),
        ("/categories/", False),
        ("/page/2/", False),
        ("/posts/tagged-item/", True),
        ("/pages/about/", True),
    ],
)
def test_index_only_pages_are_skipped(path: str, kept: bool) -> None:
    frame, summary = build_raw_pages(records(page(f"http://site.test{path}", post(path, "Listing", "Links."))), SITE)
    assert (len(frame) == 1) is kept
    assert summary.skipped.get("index_page", 0) == (0 if kept else 1)


def test_index_only_patterns_come_from_settings() -> None:
    site = SiteSettings(download_delay=0, index_only=[r"^/archive/"])
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/archive/2020/", post("/archive/2020/", "Archive", "Links.")),
            page("http://site.test/tags/x/", post("/tags/x/", "Tag", "Tag links.")),
        ),
        site,
    )
    assert frame["url"].tolist() == ["http://site.test/tags/x/"]
    assert summary.skipped == {"index_page": 1}


def test_error_pages_are_kept_with_their_status_and_empty_text() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/", post("/", "Home", "Home text.")),
            page(
                "http://site.test/gone/",
                "<html><body><h1>Not found</h1><p>sorry</p></body></html>",
                status=404,
            ),
            page("http://site.test/broken/", "", status=500),
        ),
        SITE,
    )
    rows = frame.set_index("url")
    assert rows.loc["http://site.test/gone/", "status"] == 404
    assert rows.loc["http://site.test/gone/", "text"] == ""
    assert rows.loc["http://site.test/gone/", "title"] == ""
    assert rows.loc["http://site.test/broken/", "status"] == 500
    assert summary.errors == {"http_404": 1, "http_500": 1}
    assert summary.pages == 1  # error rows are not pages


def test_skipped_and_error_reasons_are_counted() -> None:
    frame, summary = build_raw_pages(
        records(
            page("http://site.test/", post("/", "Home", "Home text.")),
            skipped("http://site.test/cv.pdf", "non_html"),
            skipped("http://site.test/slides.pdf", "non_html"),
            skipped("https://other.test/", "off_site"),
            skipped("http://site.test/private/", "robots_txt"),
            skipped("http://site.test/huge/", "too_large"),
            error("http://site.test/loop/", "too_many_redirects"),
            error("http://site.test/slow/", "timeout"),
            error("http://site.test/slow2/", "timeout"),
        ),
        SITE,
    )
    assert frame["url"].tolist() == ["http://site.test/"]
    assert summary.skipped == {"non_html": 2, "off_site": 1, "robots_txt": 1, "too_large": 1}
    assert summary.errors == {"too_many_redirects": 1, "timeout": 2}
    metadata = summary.as_metadata()
    assert metadata["pages"].value == 1
    assert metadata["skipped"].data == {"non_html": 2, "off_site": 1, "robots_txt": 1, "too_large": 1}


def test_empty_crawl_gives_an_empty_frame_with_the_columns() -> None:
    frame, summary = build_raw_pages(records(), SITE)
    assert list(frame.columns) == RAW_PAGES_COLUMNS
    assert frame.empty
    assert summary.pages == 0


# ================================================================ explain_empty_crawl


@pytest.mark.parametrize(
    "record, expected",
    [
        (skipped("http://site.test/", "robots_txt", start=True), ["robots.txt", "http://site.test/", UA]),
        (
            error("http://site.test/", "unreachable", start=True),
            ["could not fetch", "http://site.test/", "unreachable"],
        ),
        (page("http://site.test/", "", status=503, start=True), ["http://site.test/", "HTTP 503"]),
        (page("http://site.test/", "", status=404, start=True), ["HTTP 404"]),
        (
            {**skipped("http://site.test/cv.pdf", "non_html", start=True), "status": 200},
            ["not an HTML page", "cv.pdf"],
        ),
    ],
    ids=["robots", "unreachable", "http-503", "http-404", "non-html"],
)
def test_explain_empty_crawl_names_the_cause(record: dict[str, Any], expected: list[str]) -> None:
    message = explain_empty_crawl(records(record), UA)
    for part in expected:
        assert part in message
    assert "site.start_urls" in message


def test_explain_empty_crawl_without_any_start_record() -> None:
    message = explain_empty_crawl(CrawlRecords(start_urls=["http://a.test/", "http://b.test/"]), UA)
    assert "no start URL answered" in message
    assert "http://a.test/, http://b.test/" in message


def test_explain_empty_crawl_when_pages_were_fetched_but_none_kept() -> None:
    message = explain_empty_crawl(records(page("http://site.test/", "<html></html>", start=True)), UA)
    assert "kept none" in message
    assert "content_selectors" in message and "index_only" in message


# ================================================================ robots


ROBOTS = "User-agent: *\nDisallow: /private/\n\nUser-agent: mebot\nDisallow: /drafts/\n"


@pytest.mark.parametrize(
    "url, user_agent, violates",
    [
        ("http://site.test/private/x/", UA, False),  # mebot has its own group, which does not list /private/
        ("http://site.test/private/x/", "otherbot/1.0", True),
        ("http://site.test/drafts/a/", UA, True),
        ("http://site.test/drafts/a/", "otherbot/1.0", False),
        ("http://site.test/posts/a/", UA, False),
        ("http://other.test/drafts/a/", UA, False),  # no robots.txt known for that origin
        ("https://site.test/drafts/a/", UA, False),  # another origin (scheme)
    ],
)
def test_robots_violations(url: str, user_agent: str, violates: bool) -> None:
    pages = pd.DataFrame({"url": [url, "http://site.test/"]})
    result = robots_violations(pages, {"http://site.test": ROBOTS}, user_agent)
    assert result == ([url] if violates else [])


def test_robots_by_origin_keys_robots_texts_by_scheme_and_host() -> None:
    crawl = records(
        {"kind": "robots", "url": "http://site.test:8080/robots.txt", "text": "A"},
        {"kind": "robots", "url": "https://other.test/robots.txt", "text": "B"},
        page("http://site.test:8080/", ""),
    )
    assert robots_by_origin(crawl) == {"http://site.test:8080": "A", "https://other.test": "B"}


# ================================================================ boilerplate_lines

CHROME_LINE = "Subscribe to my newsletter for weekly updates"


def frame_of(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts})


@pytest.mark.parametrize(
    "texts, expected",
    [
        ([f"Unique text {i}.\n{CHROME_LINE}" for i in range(4)], {CHROME_LINE: 1.0}),
        ([f"Unique text {i}.\n{CHROME_LINE}" for i in range(3)] + ["Page 3 only."], {CHROME_LINE: 0.75}),
        ([f"Unique text {i}.\n{CHROME_LINE}" for i in range(2)] + ["Page 2.", "Page 3."], {}),  # exactly half
        ([f"Unique text {i}.\nShare this post" for i in range(4)], {}),  # 15 chars: too short to matter
        ([f"Unique text {i}.\nShare this post!" for i in range(4)], {"Share this post!": 1.0}),  # 16 chars
        ([f"Unique text {i}.\n{CHROME_LINE}" for i in range(2)], {}),  # fewer than 3 pages
        ([f"Unique text {i}.\n{CHROME_LINE}" for i in range(2)] + ["", ""], {}),  # empty texts do not count
        (
            [f"{CHROME_LINE}\nbody {i}\n  {CHROME_LINE}  " for i in range(3)],
            {CHROME_LINE: 1.0},
        ),  # once per page
    ],
    ids=[
        "all-pages",
        "three-of-four",
        "exactly-half",
        "short-line",
        "just-long-enough",
        "two-pages",
        "empty-texts",
        "counted-once-per-page",
    ],
)
def test_boilerplate_lines(texts: list[str], expected: dict[str, float]) -> None:
    assert boilerplate_lines(frame_of(texts)) == expected
