"""The sample site's golden questions (golden/sample_site.yaml) hold up against the site itself.

Page text comes straight from the HTML with lxml, independent of the crawler: a page's main content (`<main>`, else
`<article>`, else `<body>`) is where its facts must be; any other page's whole body (sidebars, listings and all)
is where they must not be, so a fact points at one page only.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import lxml.html
import pytest

from mebot.assets.evaluation.golden import (
    GoldenQuestion,
    RegexFact,
    answer_states_facts,
    load_golden,
    right_and_wrong_pairs,
    states_fact,
)

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "data" / "sample_site"
GOLDEN = ROOT / "golden" / "sample_site.yaml"
_BLOCKS = {
    "p",
    "div",
    "li",
    "td",
    "th",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "br",
    "pre",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "ul",
    "ol",
    "table",
    "blockquote",
    "figcaption",
    "dt",
    "dd",
}


@cache
def page_text(path: Path, whole: bool = False) -> str:
    """The page's text, a line per block element (so words from adjacent blocks or table cells never run
    together); its main content unless `whole`."""
    root = lxml.html.fromstring(path.read_bytes())
    for dropped in root.xpath("//script | //style | //noscript | //template | //head"):
        dropped.drop_tree()
    node = root.find("body") if root.find("body") is not None else root
    if not whole:
        node = next(iter(root.xpath("//main") or root.xpath("//article")), node)
    for image in node.xpath(".//figure//img[@alt]"):  # a figure's image is content: its alt text is on the page
        image.tail = "\n" + image.get("alt") + "\n" + (image.tail or "")
    for element in node.iter():
        if isinstance(element.tag, str) and element.tag in _BLOCKS:
            element.tail = "\n" + (element.tail or "")
            element.text = "\n" + (element.text or "")
    return "\n".join(" ".join(line.split()) for line in node.text_content().splitlines() if line.strip())


def content_pages() -> dict[str, Path]:
    """URL path -> file for the pages that can be a source: the about page and every post."""
    pages = {"/about/": SITE / "about" / "index.html"}
    pages |= {f"/posts/{p.parent.name}/": p for p in sorted(SITE.glob("posts/*/index.html"))}
    return pages


def all_pages() -> list[Path]:
    return sorted(SITE.rglob("*.html"))


def source_file(question: GoldenQuestion) -> Path:
    assert question.source is not None
    path = question.source if question.source.endswith("/") else question.source + "/"
    return content_pages()[path]


def in_second_half(question: GoldenQuestion) -> bool:
    """Stated in the second half of the page's text and not before (a fact repeated in a comment does not count)."""
    text = page_text(source_file(question))
    assert question.facts is not None
    middle = len(text) // 2
    return answer_states_facts(text[middle:], question.facts) and not answer_states_facts(text[:middle], question.facts)


GOLDEN_SET = load_golden(GOLDEN)
ANSWERABLE = [q for q in GOLDEN_SET.questions if q.answerable]


def test_the_file_loads_with_enough_questions() -> None:
    assert len(GOLDEN_SET.questions) >= 40
    assert len(GOLDEN_SET.questions) - len(ANSWERABLE) >= 5


def test_every_content_page_is_the_source_of_a_question() -> None:
    assert len(content_pages()) == 22  # about + 21 posts: a new page needs questions too
    sources = {source_file(q) for q in ANSWERABLE}
    assert sorted(set(content_pages().values()) - sources) == []


def test_a_third_of_the_answerable_questions_are_about_the_second_half_of_their_page() -> None:
    late = [q.id for q in ANSWERABLE if in_second_half(q)]
    assert len(late) * 3 >= len(ANSWERABLE), late


def test_no_question_gives_its_own_answer_away() -> None:
    """A bot that repeats the question back must not score."""
    assert [q.id for q in ANSWERABLE if q.facts and answer_states_facts(q.question, q.facts)] == []


def test_every_question_with_a_plain_fact_gives_the_judge_a_right_and_a_wrong_answer() -> None:
    sayable = [q.id for q in ANSWERABLE if q.facts and any(not isinstance(f, RegexFact) for f in q.facts.any_of)]
    pairs = right_and_wrong_pairs(GOLDEN_SET, n=len(GOLDEN_SET.questions), seed=0)
    assert sorted(pairs.loc[pairs["kind"] == "matched", "qa_id"]) == sorted(sayable)
    assert (pairs["kind"] == "mismatched").sum() == len(sayable)


def test_unanswerable_questions_have_neither_facts_nor_source() -> None:
    for question in GOLDEN_SET.questions:
        if not question.answerable:
            assert question.facts is None and question.source is None, question.id


@pytest.mark.parametrize("question", ANSWERABLE, ids=[q.id for q in ANSWERABLE])
def test_every_fact_is_on_its_source_page_and_no_other(question: GoldenQuestion) -> None:
    source = source_file(question)
    assert question.facts is not None
    own_text = page_text(source)
    assert answer_states_facts(own_text, question.facts)
    for fact in question.facts.facts:
        assert states_fact(own_text, fact), f"{fact!r} is not on {question.source}"
        elsewhere = [p.relative_to(SITE) for p in all_pages() if p != source and states_fact(page_text(p, True), fact)]
        assert elsewhere == [], f"{fact!r} is also on {elsewhere}"


def test_the_page_text_is_read_by_block() -> None:
    text = page_text(SITE / "posts" / "croix-de-fer-8000km" / "index.html")
    assert "Chain (twice)\n2,600 km and 5,400 km\n£56" in text  # table cells do not run together
    assert "Related posts" in text and "Hello, I am" not in text
    assert "Recent posts" in page_text(SITE / "about" / "index.html", True)  # the sidebar is in the whole page
