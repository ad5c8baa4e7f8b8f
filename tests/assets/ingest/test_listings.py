"""build_raw_pages on listing and archive pages: found by structure (openings of other pages, link density,
og:type), not only by URL patterns, and pages that ask not to be indexed."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import pytest

from mebot.assets.ingest.crawl import build_raw_pages
from mebot.resources.settings import SiteSettings
from tests.assets.ingest.records import SITE, page, paths_of, records

# ---------------------------------------------------------------- listing pages by structure, noindex

OPENINGS = {
    "/posts/a/": "Alpha opens with a sentence of well over fifteen words about sourdough starters and the fridge they "
    "live in.",
    "/posts/b/": "Beta opens with a long sentence about riding a gravel bike up the steepest lanes of the Peak "
    "District in rain.",
    "/posts/c/": "Gamma opens with a story about a telescope, a cold garden, a cloudy forecast and an unexpectedly "
    "clear night.",
}
MORE = "<p>The rest of the post goes on for a while, with details that only this post has.</p>"


def article(path: str, title: str, body: str, og_type: str = "", description: str = "") -> str:
    head = f'<link rel="canonical" href="{path}">'
    head += f'<meta property="og:type" content="{og_type}">' if og_type else ""
    head += f'<meta name="description" content="{description}">' if description else ""
    return (
        f"<html><head>{head}<title>{title}</title></head><body><article><h1>{title}</h1>{body}</article></body></html>"
    )


def posts(og_type: str = "article") -> list[dict[str, Any]]:
    return [
        page(f"http://site.test{path}", article(path, path, f"<p>{text}</p>{MORE}", og_type))
        for path, text in OPENINGS.items()
    ]


def teaser(path: str, words: int = 14) -> str:
    """A listing's entry for a post: its title link, a date and the first `words` words of its opening."""
    opening = " ".join(OPENINGS[path].split()[:words])
    return f'<h2><a href="{path}">Title of {path}</a></h2><p>May 1, 2024</p><p>{opening}&hellip;</p>'


def kept_and_listings(*items: dict[str, Any], site: SiteSettings = SITE) -> tuple[set[str], dict[str, str], Counter]:
    frame, summary = build_raw_pages(records(*items), site)
    return set(paths_of(frame)), {urlsplit(u).path: why for u, why in summary.listings.items()}, summary.skipped


def test_a_page_repeating_the_openings_of_other_pages_is_a_listing_whatever_its_url() -> None:
    older = page(
        "http://site.test/blog/older.html",
        article("/blog/older.html", "Older", teaser("/posts/a/") + teaser("/posts/b/")),
    )
    kept, listings, skipped = kept_and_listings(*posts(), older)
    assert kept == set(OPENINGS)  # every post stays
    assert listings == {"/blog/older.html": "repeats the openings of 2 other pages"}
    assert skipped == {"listing_page": 1}


def test_an_excerpt_listing_that_calls_itself_an_article_is_one_when_it_begins_with_an_excerpt() -> None:
    """Some themes put og:type article on every page: a page that begins with another page's opening and repeats
    more of them is still a listing."""
    body = teaser("/posts/a/", 16) + teaser("/posts/b/", 16) + teaser("/posts/c/", 16)
    older = page("http://site.test/index-2.html", article("/index-2.html", "Page 2", body, og_type="article"))
    # its first teaser is its own opening too, so the other two count
    assert kept_and_listings(*posts(), older)[1] == {"/index-2.html": "repeats the openings of 2 other pages"}


def test_an_article_with_teasers_of_related_posts_after_its_own_text_is_content() -> None:
    body = f"<p>{' '.join(['My own opening paragraph about bikes and bread, long enough to count.'] * 2)}</p>{MORE}"
    body += "<h2>You may also like</h2>" + teaser("/posts/a/", 16) + teaser("/posts/b/", 16)
    related = page("http://site.test/posts/d/", article("/posts/d/", "D", body, og_type="article"))
    kept, listings, _ = kept_and_listings(*posts(), related)
    assert "/posts/d/" in kept and not listings
    without_og = page("http://site.test/posts/d/", article("/posts/d/", "D", body))  # no og:type: the excerpts decide
    assert kept_and_listings(*posts(), without_og)[1] == {"/posts/d/": "repeats the openings of 2 other pages"}


def test_descriptions_count_as_openings() -> None:
    """A home page listing each post's summary (its meta description), not its first words."""
    described = [
        page(
            f"http://site.test/posts/{name}/",
            article(
                f"/posts/{name}/",
                name,
                f"<p>{text}</p>{MORE}",
                description=f"What {name} is about, told in a dozen plain words here.",
            ),
        )
        for name, text in zip("xyz", OPENINGS.values(), strict=True)
    ]
    home = "".join(f"<p>What {name} is about, told in a dozen plain words here.</p>" for name in "xy")
    kept, listings, _ = kept_and_listings(*described, page("http://site.test/", article("/", "Home", home)))
    assert listings == {"/": "repeats the openings of 2 other pages"}
    assert kept == {"/posts/x/", "/posts/y/", "/posts/z/"}


@pytest.mark.parametrize(
    "body",
    [
        f"<p>As I wrote before: {OPENINGS['/posts/a/']}</p>{MORE}",  # quotes one other post: content
        "<p>" + " ".join(OPENINGS["/posts/a/"].split()[:9]) + " and then something else entirely.</p>" + MORE,
    ],
    ids=["one-excerpt", "nine-words"],
)
def test_a_post_quoting_one_opening_or_fewer_than_ten_words_is_content(body: str) -> None:
    quoting = page("http://site.test/posts/d/", article("/posts/d/", "D", body, og_type="article"))
    kept, listings, _ = kept_and_listings(*posts(), quoting)
    assert "/posts/d/" in kept and not listings


def archive(links: list[str], extra: str = "", og_type: str = "") -> dict[str, Any]:
    items = "".join(f'<li><a href="{href}">Title of {href}</a> &middot; May 1, 2024</li>' for href in links)
    return page(
        "http://site.test/archive.html", article("/archive.html", "Archive", f"{extra}<ul>{items}</ul>", og_type)
    )


def test_a_page_that_is_mostly_links_to_the_sites_pages_is_a_listing() -> None:
    kept, listings, _ = kept_and_listings(*posts(), archive(list(OPENINGS)))
    assert listings == {"/archive.html": "100% of its words are links to 3 other pages"}
    assert kept == set(OPENINGS)


@pytest.mark.parametrize(
    "item, kept",
    [
        (archive(["/posts/a/", "/posts/b/"], og_type="article"), True),  # an article of links is content
        (archive(["/posts/a/"]), True),  # one link: not a list of the site's pages
        (archive(["https://other.test/a/", "https://other.test/b/", "/posts/missing/"]), True),  # not crawled pages
        (archive(["/posts/a/", "/posts/b/"], extra="<p>" + "Words of my own. " * 6 + "</p>"), True),  # 37% links
        (
            archive(["/posts/a/", "/posts/b/"], extra="<p>" + "Words of my own. " * 6 + "</p>", og_type="website"),
            False,
        ),
        (archive(["/posts/a/", "/posts/a/#comments", "/posts/a/?utm_source=x"]), True),  # one page, three URLs
    ],
    ids=["og-article", "one-link", "other-sites", "own-words", "own-words-website", "same-page"],
)
def test_link_density_counts_distinct_crawled_pages_and_og_type(item: dict[str, Any], kept: bool) -> None:
    assert ("/archive.html" in kept_and_listings(*posts(), item)[0]) is kept


def test_links_to_pages_the_crawl_reached_under_another_url_count() -> None:
    redirected = {**posts()[0], "url": "http://site.test/posts/a/", "requested_url": "http://site.test/old/a/"}
    kept, listings, _ = kept_and_listings(redirected, *posts()[1:], archive(["/old/a/", "/posts/b/"]))
    assert listings == {"/archive.html": "100% of its words are links to 2 other pages"}


def test_structural_detection_can_be_turned_off_and_url_patterns_still_apply() -> None:
    tag = page("http://site.test/tags/x/", article("/tags/x/", "Tag", teaser("/posts/a/") + teaser("/posts/b/")))
    site = SiteSettings(download_delay=0, detect_listings=False)
    kept, listings, skipped = kept_and_listings(*posts(), archive(list(OPENINGS)), tag, site=site)
    assert kept == {*OPENINGS, "/archive.html"}
    assert listings == {"/tags/x/": "URL matches site.index_only"} and skipped == {"index_page": 1}


def test_the_canonical_url_is_what_the_listing_patterns_see() -> None:
    paged = page("http://site.test/?p=2", article("/page/2/", "Page 2", "<p>Older posts.</p>"))
    kept, listings, _ = kept_and_listings(*posts(), paged)
    assert listings == {"/page/2/": "URL matches site.index_only"} and kept == set(OPENINGS)


@pytest.mark.parametrize(
    "head, header, kept",
    [
        ('<meta name="robots" content="noindex, follow">', "", False),
        ('<meta name="robots" content="none">', "", False),
        ('<meta name="robots" content="index, nofollow">', "", True),
        ("", "noindex", False),
        ("", "mebot: noindex", False),
        ("", "otherbot: noindex", True),
        ("", "otherbot: noindex\nnoarchive", True),
        ("", "unavailable_after: 25 Jun 2030 15:00:00 PST", True),
        ("", "", True),
    ],
    ids=[
        "meta",
        "meta-none",
        "nofollow-only",
        "header",
        "header-for-us",
        "header-for-other",
        "two-headers",
        "date",
        "none",
    ],
)
def test_pages_that_ask_not_to_be_indexed_are_skipped(head: str, header: str, kept: bool) -> None:
    html = f"<html><head>{head}</head><body><article><h1>Draft</h1><p>Unlisted draft text.</p></article></body></html>"
    record = {**page("http://site.test/draft/", html), **({"x_robots_tag": header} if header else {})}
    frame, summary = build_raw_pages(records(*posts(), record), SITE)
    assert ("/draft/" in paths_of(frame)) is kept
    assert summary.skipped == ({} if kept else {"noindex": 1})
