"""Sentence splitting, the site's sentences, and the selection of the focused RAG context (assets/index/context.py)."""

import numpy as np
import pandas as pd
import pytest

from mebot.assets.index.context import (
    ScoredSentence,
    SentenceStore,
    SentenceVectors,
    format_selection,
    is_unit,
    score_candidates,
    select_sentences,
    sentence_spans,
    shown,
    split_sentences,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It cost £62. Then it rained! Did it? Yes.", ["It cost £62.", "Then it rained!", "Did it?", "Yes."]),
        (
            "Dr. Smith met J. R. R. Tolkien at 3.5 km, e.g. here. Next.",
            ["Dr. Smith met J. R. R. Tolkien at 3.5 km, e.g. here.", "Next."],
        ),
        ('"Wow!" she said. It was 6°C.', ['"Wow!" she said.', "It was 6°C."]),
        ("We rode 221 km. 3,650 metres were climbed.", ["We rode 221 km.", "3,650 metres were climbed."]),
        ("A heading\n\nA paragraph. Another one.", ["A heading", "A paragraph.", "Another one."]),
        ("- first item\n- second item.\n1. numbered", ["first item", "second item.", "numbered"]),
        ("no full stop at the end", ["no full stop at the end"]),
        ("lower case after a stop. stays one sentence", ["lower case after a stop. stays one sentence"]),
        ("", []),
        ("  \n\n ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_sentence_spans_point_into_the_text_and_over_long_sentences_are_cut():
    text = "Intro. Items: " + ", ".join(f"item {i}" for i in range(200)) + "."
    spans = sentence_spans(text, max_chars=120)
    assert text[spans[0][0] : spans[0][1]] == "Intro."
    assert all(0 < b - a <= 120 for a, b in spans)
    joined = " ".join(text[a:b] for a, b in spans[1:])
    assert joined.replace(" ", "") == text[7:].replace(" ", "")  # nothing lost, nothing added


CODE = "```python\nimport duckdb\n\nARCHIVE = 's3://bucket/x/'. Not. A sentence.\nprint(ARCHIVE)\n```"
MATH = "$$ \\begin{align*} r &= \\lfloor (N+1) p \\rfloor. \\\\ s &= N. \\end{align*} $$"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Before it. The code:\n\n{CODE}\n\nAfter it.", ["Before it.", "The code:", CODE, "After it."]),
        (
            f"Before.\n\n{MATH}\n\nFor 999 readings, that is 964. Next.",
            ["Before.", MATH, "For 999 readings, that is 964.", "Next."],
        ),
        ("Unclosed:\n\n```code\nx = 1\n\ny = 2", ["Unclosed:", "```code\nx = 1\n\ny = 2"]),  # cut inside a block
        ("y = 2\n```\n\nAfter the code. More.", ["y = 2", "```", "After the code.", "More."]),  # cut: a bare fence
        ("Take \\(x_{(k)}. Y\\) and $a. B$ here. Next one.", ["Take \\(x_{(k)}. Y\\) and $a. B$ here.", "Next one."]),
        ("It cost $5. Then I paid $10. Done.", ["It cost $5.", "Then I paid $10.", "Done."]),  # prices are no math
        (
            "Method | Cost\nMethod: chain | Cost: £56\nMethod: tyres | Cost: £170",
            ["Method | Cost", "Method: chain | Cost: £56", "Method: tyres | Cost: £170"],
        ),
    ],
    ids=[
        "code-block",
        "display-math",
        "unclosed-fence",
        "orphan-closing-fence",
        "inline-math",
        "dollar-prices",
        "table-rows",
    ],
)
def test_code_blocks_and_display_math_are_units_and_inline_math_stays_in_its_sentence(text, expected):
    assert split_sentences(text) == expected


def test_a_unit_longer_than_max_chars_stays_whole_and_prose_around_it_is_still_cut():
    code = "```code\n" + "\n".join(f"value_{i} = {i} * factor + offset" for i in range(200)) + "\n```"
    long_line = "word " * 400
    sentences = split_sentences(f"{long_line}\n\n{code}", max_chars=120)
    assert sentences[-1] == code and len(code) > 5000
    assert all(len(s) <= 120 for s in sentences[:-1]) and len(sentences) > 10


def test_units_are_shown_with_their_lines_and_prose_on_one_line():
    assert is_unit(CODE) and is_unit(MATH) and not is_unit("Plain. Text.")
    assert shown(CODE) == CODE and shown("two\n  lines") == "two lines"


def test_the_store_cuts_a_unit_by_the_cutter_and_each_piece_is_a_sentence():
    pieces = lambda text: [text[:20], text[20:]]  # noqa: E731 - a stand-in for Embedder.pieces
    store = SentenceStore(_chunks({"/c/": [f"Intro.\n\n{CODE}\n\nOutro."]}), cut_unit=pieces)
    assert [s.text for s in store.sentences] == ["Intro.", CODE[:20], CODE[20:], "Outro."]
    whole = SentenceStore(_chunks({"/c/": [f"Intro.\n\n{CODE}\n\nOutro."]}))
    assert [s.text for s in whole.sentences] == ["Intro.", CODE, "Outro."]


def _chunks(pages: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for url, texts in pages.items():
        for n, text in enumerate(texts):
            rows.append(
                {"chunk_id": f"{url}#{n}", "url": url, "title": f"Title of {url}", "chunk_index": n, "text": text}
            )
    return pd.DataFrame(rows)


def test_the_store_keeps_page_order_and_counts_the_chunk_overlap_once():
    store = SentenceStore(
        _chunks(
            {
                "/a/": ["One. Two. Three is long enough.", "is long enough. Four. Five."],  # overlap from mid-sentence
                "/b/": ["Alpha. Beta.", "Beta. Gamma."],  # overlap from a sentence start
            }
        )
    )
    assert [s.text for s in store.sentences] == [
        "One.",
        "Two.",
        "Three is long enough.",
        "Four.",
        "Five.",
        "Alpha.",
        "Beta.",
        "Gamma.",
    ]
    assert [s.page_position for s in store.sentences] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert store.of_chunks(["/a/#1"]) == [2, 3, 4]  # the overlap's sentence belongs to both chunks
    assert store.neighbours(3, 1) == [2, 3, 4]
    assert store.neighbours(4, 2) == [2, 3, 4]  # never across a page boundary
    assert store.neighbours(5, 1) == [5, 6]


def _store() -> SentenceStore:
    return SentenceStore(
        _chunks(
            {
                "/bike/": ["I ride a steel bike. It weighs 11 kg. The saddle is leather. I bought it in 2019."],
                "/bread/": ["I bake sourdough. My starter is called Brenda. She lives in the fridge. Rye flour."],
            }
        )
    )


def _scored(order: list[int]) -> list[ScoredSentence]:
    """Candidates ranked in `order`, best first."""
    return [ScoredSentence(index=i, rank=r, fused=-r, dense=0.0, lexical=0.0) for r, i in enumerate(order)]


def _words(text: str) -> int:
    return len(text.split())


def test_selection_takes_neighbours_groups_by_page_best_page_first_and_labels_each_group():
    store = _store()
    # best: "My starter is called Brenda." (5), then "It weighs 11 kg." (1)
    selection = select_sentences(
        store, _scored([5, 1]), sentences=2, neighbours=1, max_tokens=1000, count_tokens=_words
    )
    assert [p.index for p in selection.picked] == [5, 1]
    assert [(url, indices) for url, _, indices in selection.groups] == [("/bread/", [4, 5, 6]), ("/bike/", [0, 1, 2])]
    assert format_selection(store, selection) == (
        'From "Title of /bread/":\nI bake sourdough. My starter is called Brenda. She lives in the fridge.\n\n'
        'From "Title of /bike/":\nI ride a steel bike. It weighs 11 kg. The saddle is leather.'
    )


def test_selection_marks_gaps_and_keeps_page_order_within_a_group():
    store = _store()
    selection = select_sentences(
        store, _scored([3, 0]), sentences=2, neighbours=0, max_tokens=1000, count_tokens=_words
    )
    assert format_selection(store, selection) == 'From "Title of /bike/":\nI ride a steel bike. … I bought it in 2019.'


def test_selection_stays_within_the_token_budget_but_always_keeps_the_best_sentence():
    store = _store()
    tiny = select_sentences(store, _scored([5, 1, 2]), sentences=3, neighbours=2, max_tokens=3, count_tokens=_words)
    assert [p.index for p in tiny.picked] == [5]  # over budget, but the best sentence is always kept
    budget = _words(format_selection(store, tiny)) + 6  # room for "It weighs 11 kg." with its label, not more
    some = select_sentences(
        store, _scored([5, 1, 2]), sentences=3, neighbours=2, max_tokens=budget, count_tokens=_words
    )
    assert _words(format_selection(store, some)) <= budget
    assert "Brenda" in format_selection(store, some)


def test_score_candidates_fuses_bm25_and_cosine_and_each_alone():
    store = _store()
    vectors = SentenceVectors(lambda texts: np.array([[1.0, 0.0] if "bike" in t else [0.0, 1.0] for t in texts]))
    question_vector = np.array([1.0, 0.0])  # "means" the bike sentence
    candidates = list(range(len(store)))
    lexical = score_candidates(store, candidates, "What is your starter called?", question_vector, vectors, "bm25")
    dense = score_candidates(store, candidates, "What is your starter called?", question_vector, vectors, "dense")
    fused = score_candidates(store, candidates, "What is your starter called?", question_vector, vectors, "rrf")
    assert store.sentences[lexical[0].index].text == "My starter is called Brenda."
    assert store.sentences[dense[0].index].text == "I ride a steel bike."
    assert {fused[0].index, fused[1].index} == {lexical[0].index, dense[0].index}  # each list's best ranks high
    assert fused[0].lexical > 0 and not np.isnan(fused[0].dense)


def test_sentence_vectors_embed_each_text_once():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.ones((len(texts), 3))

    vectors = SentenceVectors(embed)
    assert vectors(["a", "b", "a"]).shape == (3, 3)
    vectors(["b", "c"])
    assert calls == [["a", "b"], ["c"]]
