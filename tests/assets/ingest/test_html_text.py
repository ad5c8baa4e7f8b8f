"""Unit tests of assets/ingest/html_text.py: HTML page → title, main-content text and canonical link."""

from __future__ import annotations

import lxml.html
import pytest

from mebot.assets.ingest.html_text import element_text, extract_page, resolve_canonical, robots_directives, words_of
from mebot.resources.settings import SiteSettings
from tests.sites import page_html

DEFAULTS = SiteSettings()
CONTENT = DEFAULTS.content_selectors
DROP = DEFAULTS.drop_selectors


def extract(html: str, content: list[str] = CONTENT, drop: list[str] = DROP):
    return extract_page(html, content, drop)


def body(inner: str) -> str:
    return f"<html><head><title>Head title</title></head><body>{inner}</body></html>"


# ---------------------------------------------------------------- site chrome


ARTICLE_TEXT = "The article sentence that must survive extraction."
CHROME_CASES = {
    "header": "<header><p>Header chrome line</p></header>",
    "nav": "<nav><a href='/'>Nav chrome link</a></nav>",
    "aside": "<aside><p>Aside chrome line</p></aside>",
    "footer": "<footer><p>Footer chrome line</p></footer>",
    "related-posts": "<section class='related-posts'><p>Related chrome line</p></section>",
    "comments": "<div class='comments'><p>Comment chrome line</p></div>",
    "script": "<script>var scriptChrome = 1;</script>",
    "style": "<style>.styleChrome { color: red }</style>",
    "form": "<form><label>Form chrome label</label><input name='q'></form>",
}


@pytest.mark.parametrize("chrome", list(CHROME_CASES.values()), ids=list(CHROME_CASES))
@pytest.mark.parametrize("position", ["before", "after"])
def test_site_chrome_inside_the_article_is_removed_and_article_text_stays(chrome: str, position: str) -> None:
    paragraph = f"<p>{ARTICLE_TEXT}</p>"
    inner = chrome + paragraph if position == "before" else paragraph + chrome
    page = extract(body(f"<article>{inner}</article>"))
    assert page.text == ARTICLE_TEXT


def test_chrome_of_a_full_page_template_is_dropped() -> None:
    html = page_html("/posts/a/", "A post", "<p>Only this paragraph is content.</p>", links=["/posts/b/"])
    page = extract(html)
    assert page.title == "A post"
    assert page.text == "Only this paragraph is content."
    for chrome in (
        "Test Site",
        "Related posts",
        "Be the first",
        "gardening",
        "Copyright",
        "Drafts",
        "dataLayer",
    ):
        assert chrome not in page.text


# ---------------------------------------------------------------- title


def test_h1_becomes_the_title_and_is_not_glued_into_the_text() -> None:
    page = extract(body("<article><h1>My Title</h1>First paragraph starts here.</article>"))
    assert page.title == "My Title"
    assert page.text == "First paragraph starts here."
    assert "My Title" not in page.text


@pytest.mark.parametrize(
    "html, title",
    [
        ("<html><head><title>  Head   title </title></head><body><p>text</p></body></html>", "Head title"),
        (
            "<html><head><title>Head title</title></head><body><article><h1></h1><p>t</p></article></body></html>",
            "Head title",
        ),
        (
            "<html><head><title>Head title</title></head>"
            "<body><article><h1>  Spread\n  heading </h1></article></body></html>",
            "Spread heading",
        ),
        ("<html><body><p>no title at all</p></body></html>", ""),
    ],
    ids=["no-h1", "empty-h1", "h1-whitespace-collapsed", "neither"],
)
def test_title_comes_from_h1_else_from_head_title(html: str, title: str) -> None:
    assert extract(html).title == title


# ---------------------------------------------------------------- text layout


@pytest.mark.parametrize(
    "inner, text",
    [
        ("<p>First.</p><p>Second.</p>", "First.\n\nSecond."),
        (
            "<p>A sentence spread\n   over several\n\tsource lines.</p>",
            "A sentence spread over several source lines.",
        ),
        ("<p>  lots   of    spaces  </p>", "lots of spaces"),
        ("<p>bold <b>word</b> and <a href='/x'>a\n link</a> inline.</p>", "bold word and a link inline."),
        ("<p>line one<br>line two<br/>line three</p>", "line one\nline two\nline three"),
        ("<pre>  def f():\n      return 1\n</pre>", "```code\n  def f():\n      return 1\n```"),
        ("<div>loose text<p>para</p>tail text</div>", "loose text\n\npara\n\ntail text"),
    ],
    ids=["paragraphs", "multiline-sentence", "spaces", "inline", "br", "pre", "mixed"],
)
def test_text_layout(inner: str, text: str) -> None:
    assert extract(body(f"<article>{inner}</article>")).text == text


@pytest.mark.parametrize(
    "table",
    [
        "<table><tr><th>name</th><th>year</th></tr><tr><td>a</td><td>b</td></tr></table>",
        "<table><thead><tr><th>name</th><th>year</th></tr></thead><tbody><tr><td>a</td><td>b</td></tr></tbody></table>",
    ],
    ids=["plain", "thead-tbody"],
)
def test_table_rows_become_pipe_separated_lines_that_keep_their_header(table: str) -> None:
    lines = extract(body(f"<article>{table}</article>")).text.splitlines()
    assert [line for line in lines if line] == ["name | year", "name: a | year: b"]


def test_table_without_a_header_row_keeps_plain_rows_and_a_caption_line() -> None:
    html = "<table><caption>Parts</caption><tr><td>chain</td><td>£56</td></tr><tr><td>tyres</td><td></td></tr></table>"
    lines = [line for line in extract(body(f"<article>{html}</article>")).text.splitlines() if line]
    assert lines == ["Parts", "chain | £56", "tyres |"]


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        ("<p>Before.</p><p>$$ a = b + c $$</p><p>After.</p>", ["Before.", "$$ a = b + c $$", "After."]),
        ("<p>So \\[ x^2 \\] holds.</p>", ["So", "$$ x^2 $$", "holds."]),
        (
            "<p>\\begin{align*} r &amp;= 1 \\\\ s &amp;= 2 \\end{align*}</p>",
            ["$$ \\begin{align*} r &= 1 \\\\ s &= 2 \\end{align*} $$"],
        ),
        (
            '<p>Then <span class="katex-display"><span class="katex"><math><semantics><mrow><mi>y</mi></mrow>'
            '<annotation encoding="application/x-tex">y = mx</annotation></semantics></math></span></span> ends.</p>',
            ["Then", "$$ y = mx $$", "ends."],
        ),
        ('<p>Inline <math alttext="z^2"><mi>z</mi></math> stays.</p>', ["Inline \\(z^2\\) stays."]),
        ("<p>Inline \\(a.B\\) stays in its sentence.</p>", ["Inline \\(a.B\\) stays in its sentence."]),
    ],
    ids=["dollars", "brackets", "align", "katex-display", "mathml-inline", "tex-inline"],
)
def test_display_math_is_a_paragraph_of_its_own_between_dollar_marks(inner: str, expected: list[str]) -> None:
    assert extract(body(f"<article>{inner}</article>")).text.split("\n\n") == expected


def test_a_figure_image_is_its_alt_text_and_other_images_are_not() -> None:
    html = (
        '<p><img src="/a.png" alt="Avatar of the author"></p>'
        '<figure><img src="/p.jpg" alt="Puffins on a cliff"><figcaption>Inner Farne.</figcaption></figure>'
        '<figure><img src="/q.jpg" alt=""></figure>'
    )
    assert extract(body(f"<article>{html}</article>")).text == "Puffins on a cliff\n\nInner Farne."


@pytest.mark.parametrize(
    "items",
    ["<ul><li>one</li><li>two <em>words</em></li></ul>", "<ol><li>one</li><li>two\n  words</li></ol>"],
    ids=["ul", "ol"],
)
def test_list_items_start_with_a_dash(items: str) -> None:
    lines = extract(body(f"<article><p>intro</p>{items}</article>")).text.splitlines()
    assert [line for line in lines if line] == ["intro", "- one", "- two words"]


def test_pre_keeps_its_lines_while_neighbouring_paragraphs_collapse() -> None:
    html = body("<article><p>before\n   pre</p><pre>x = 1\n\ny = 2</pre><p>after</p></article>")
    assert extract(html).text == "before pre\n\n```code\nx = 1\n\ny = 2\n```\n\nafter"


def test_table_cells_collapse_whitespace() -> None:
    html = body("<article><table><tbody><tr><td> spread\n  cell </td><td>b</td></tr></tbody></table></article>")
    assert extract(html).text == "spread cell | b"


def test_list_item_wrapping_a_paragraph_starts_with_a_dash() -> None:
    html = body("<article><ul><li><p>one</p></li><li><p>two</p></li></ul></article>")
    lines = [line for line in extract(html).text.splitlines() if line]
    assert lines == ["- one", "- two"]


def test_table_rows_are_consecutive_lines() -> None:
    html = body("<article><table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table></article>")
    assert extract(html).text == "a | b\nc | d"


def test_element_text_of_a_fragment() -> None:
    element = lxml.html.fragment_fromstring("<div>intro <b>bold</b><p>para\n two</p><br>after</div>")
    assert element_text(element) == "intro bold\n\npara two\n\nafter"


def test_comments_are_not_text() -> None:
    assert extract(body("<article><p>kept<!-- hidden comment --> text</p></article>")).text == "kept text"


# ---------------------------------------------------------------- content selectors


@pytest.mark.parametrize(
    "inner, text",
    [
        ("<div>outside</div><main><p>in main</p></main><article><p>in article</p></article>", "in article"),
        ("<div>outside</div><main><p>in main</p></main>", "in main"),
        ("<div>only body</div><p>second</p>", "only body\n\nsecond"),
    ],
    ids=["article", "main-when-no-article", "body-when-no-main"],
)
def test_content_selectors_fall_back_in_order(inner: str, text: str) -> None:
    assert extract(body(inner)).text == text


def test_custom_content_selectors_order_is_respected() -> None:
    html = body("<article><p>in article</p></article><div class='post'><p>in post</p></div>")
    assert extract(html, content=[".post", "article"]).text == "in post"
    assert extract(html, content=[".missing", "article"]).text == "in article"


def test_several_top_level_articles_are_all_kept_and_nested_ones_once() -> None:
    html = body(
        "<article><h1>First</h1><p>one</p></article>"
        "<article><p>two</p><article><p>nested</p></article></article>"
        "<article><p>three</p></article>"
    )
    page = extract(html)
    assert page.title == "First"
    assert page.text == "one\n\ntwo\n\nnested\n\nthree"


# ---------------------------------------------------------------- malformed and empty input


@pytest.mark.parametrize(
    "html",
    [
        "<html><body><article><p>Alpha text<p>Beta text<div>Gamma text</article>",
        "<article><p>Alpha text</p></div></div><p>Beta text</p></span><p>Gamma text</p></article>",
        "<p>Alpha text</p><p>Beta text</p><p>Gamma text",
        "<html><p>Alpha text</p><p>Beta text</p><p>Gamma text</p>",
        "<article><p>Alpha <b>text</p><p>Beta</b> text</p><p><i>Gamma text</article></i>",
        "<article><p>Alpha text \x00\x01</p><p>Beta text \ufffd</p><p>Gamma text</p></article>",
    ],
    ids=["unclosed", "stray-closers", "no-html-no-body", "no-body", "misnested", "control-chars"],
)
def test_malformed_html_still_yields_the_text(html: str) -> None:
    text = extract(html).text
    for word in ("Alpha text", "Beta text", "Gamma text"):
        assert word in text


@pytest.mark.parametrize("html", ["", " ", "\n\t \n", "<!-- only a comment -->", "<html></html>"])
def test_empty_or_whitespace_html_gives_empty_title_and_text(html: str) -> None:
    page = extract(html)
    assert page.title == ""
    assert page.text == ""
    assert page.canonical_href is None


def test_xhtml_page_with_xml_declaration_yields_its_text() -> None:
    html = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>X</title></head>'
        "<body><article><h1>Hello</h1><p>Body text.</p></article></body></html>"
    )
    page = extract(html)
    assert (page.title, page.text) == ("Hello", "Body text.")


# ---------------------------------------------------------------- canonical


@pytest.mark.parametrize(
    "head, href",
    [
        ('<link rel="canonical" href="https://example.com/a/">', "https://example.com/a/"),
        ('<link rel="canonical" href="  /posts/a/  ">', "/posts/a/"),
        ('<link rel="canonical" href="">', None),
        ('<link rel="alternate" href="/feed.xml">', None),
        ("", None),
    ],
    ids=["absolute", "relative-stripped", "empty", "other-rel", "none"],
)
def test_canonical_href_is_extracted(head: str, href: str | None) -> None:
    html = f"<html><head>{head}</head><body><p>text</p></body></html>"
    assert extract(html).canonical_href == href


@pytest.mark.parametrize(
    "page_url, href, expected",
    [
        ("http://site.test/posts/a/?x=1", "/posts/a/", "http://site.test/posts/a/"),
        ("http://site.test/posts/a/", "../b/", "http://site.test/posts/b/"),
        ("http://site.test/posts/a/", "c/", "http://site.test/posts/a/c/"),
        ("http://site.test/posts/a/", "https://other.test/x", "https://other.test/x"),
        ("http://site.test/posts/a/", "//cdn.test/y", "http://cdn.test/y"),
        ("http://site.test/posts/a/", None, "http://site.test/posts/a/"),
        ("http://site.test/posts/a/", "", "http://site.test/posts/a/"),
    ],
)
def test_resolve_canonical_joins_relative_hrefs(page_url: str, href: str | None, expected: str) -> None:
    assert resolve_canonical(page_url, href) == expected


# ---------------------------------------------------------------- what tells a listing from an article


def test_description_og_type_and_robots_are_read_from_the_head() -> None:
    html = (
        '<html><head><meta name="Description" content="  The  summary. "><meta property="og:type" content="Article">'
        '<meta name="ROBOTS" content="NoIndex, Follow"></head><body><p>text</p></body></html>'
    )
    page = extract(html)
    assert (page.description, page.og_type, page.robots) == ("The summary.", "article", {"noindex", "follow"})


@pytest.mark.parametrize(
    "head, description, og_type, robots",
    [
        ('<meta property="og:description" content="From Open Graph.">', "From Open Graph.", "", set()),
        ('<meta name="robots" content="none">', "", "", {"none", "noindex", "nofollow"}),
        ('<meta property="og:type" content="website">', "", "website", set()),
        ("", "", "", set()),
    ],
    ids=["og-description", "robots-none", "website", "nothing"],
)
def test_head_signals_default_to_empty(head: str, description: str, og_type: str, robots: set[str]) -> None:
    page = extract(f"<html><head>{head}</head><body><p>text</p></body></html>")
    assert (page.description, page.og_type, set(page.robots)) == (description, og_type, robots)


def test_robots_directives_parse_a_meta_or_header_value() -> None:
    assert robots_directives(" NOINDEX ,nofollow,, ") == {"noindex", "nofollow"}
    assert robots_directives("") == frozenset()


def test_link_items_are_list_items_with_links_and_links_outside_lists() -> None:
    html = page_html(
        "/list/",
        "A listing",
        "<p>Intro with <a href='/about/'>my about page</a> inline.</p>"
        "<ul><li><a href='/posts/a/'>Post A</a> &middot; March 2, 2024 &middot; <a href='/tags/x/'>x</a></li>"
        "<li>Plain item without a link</li>"
        "<li><a href='/posts/b/'>Post B</a><ul><li><a href='/posts/b/#part-2'>Part two</a></li></ul></li></ul>",
        links=["/posts/related/"],  # in the related-posts section: site chrome, dropped
    )
    items = extract(html).link_items
    assert [(item.hrefs, item.words) for item in items] == [
        (("/about/",), 3),  # a link outside a list item: its own words
        (("/posts/a/", "/tags/x/"), 6),  # a list item: all its words, once, with every link in it
        (("/posts/b/", "/posts/b/#part-2"), 4),  # a nested list belongs to its outermost item
    ]


def test_words_of_ignores_punctuation_and_case() -> None:
    assert words_of("Chasing Comet Tsuchinshan–ATLAS: 8,000 km!") == [
        "chasing",
        "comet",
        "tsuchinshan",
        "atlas",
        "8",
        "000",
        "km",
    ]


def test_an_empty_code_block_leaves_no_fences_behind() -> None:
    assert extract(body("<article><p>Before.</p><pre>\n  \n</pre><p>After.</p></article>")).text == "Before.\n\nAfter."


@pytest.mark.parametrize(
    ("pre", "fence"),
    [
        ('<pre><code class="language-python">x = 1</code></pre>', "```python"),
        ('<pre class="lang-sql">SELECT 1</pre>', "```sql"),
        ('<pre class="highlight">x</pre>', "```code"),
    ],
)
def test_a_code_block_s_opening_fence_names_its_language(pre: str, fence: str) -> None:
    assert extract(body(f"<article>{pre}</article>")).text.splitlines()[0] == fence
