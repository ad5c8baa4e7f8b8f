"""Golden questions: the fact matcher, refusal detection, file validation and the scores, with no judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mebot.assets.evaluation.golden import (
    PAIR_COLUMNS,
    SCORE_COLUMNS,
    FactSpec,
    GoldenFileError,
    GoldenQuestion,
    GoldenSet,
    RegexFact,
    answer_states_facts,
    golden_summary,
    is_refusal,
    load_golden,
    right_and_wrong_pairs,
    score_golden_answers,
    source_rank,
    states_fact,
)

# ------------------------------------------------------------------------------------------------- matcher


@pytest.mark.parametrize(
    ("answer", "fact"),
    [
        # thousands separators and currency symbols, codes and words
        ("It cost £1,240.", "£1,240"),
        ("It was 1240 pounds in the end.", "£1,240"),
        ("GBP 1 240, give or take nothing", "£1,240"),
        ("£1240", "1,240 pounds"),
        ("about 62 quid", "£62"),
        ("£62.00 all in", "62 GBP"),
        ("$15 on eBay", "15 dollars"),
        ("USD 15", "$15"),
        ("€85 a night", "85 euros"),
        ("EUR 85", "€85"),
        ("It cost £1,240", "1240"),  # a bare number fact accepts any unit
        # units, spelled out, abbreviated or glued to the number
        ("8,000 km", "8000 kilometres"),
        ("8000km", "8,000 km"),
        ("eight thousand kilometers", "8,000 km"),
        ("6.8 kilograms", "6.8 kg"),
        ("6.80 kg", "6.8 kg"),
        ("the steepest 200 metres", "200 m"),
        ("45 millimetre tyres", "45 mm"),
        ("11 hrs 40 mins", "11 hours 40 minutes"),
        ("75 percent hydration", "75%"),
        ("75 per cent", "75%"),
        ("6 degrees Celsius", "6°C"),
        ("6 ℃", "6°C"),
        ("It was 6 degrees.", "6°C"),
        ("180 calories a square", "180 kcal"),
        ("38 gigabytes", "38 GB"),
        ("30 km/h", "30 kilometres per hour"),
        # number words
        ("a twelve-node cluster", "12-node"),
        ("three hundred", "300"),
        ("three hundred and twelve", "312"),
        ("forty pages long", "40 pages"),
        ("twenty-one", "21"),
        ("1.4 billion rows", "1,400,000,000 rows"),
        ("seventy million kilometres", "70 million km"),
        ("the 57th of 412", "57 of 412"),
        # case, punctuation, accents, apostrophes; plain strings on word boundaries
        ("APOLLO 13, obviously!", "Apollo 13"),
        ("a 32 mm plossl", "Plössl"),
        ("She raced as Juniper’s Dream.", "Juniper's Dream"),
        ("The comet is C/2023 A3.", "C/2023 A3"),
        ("a Tsuchinshan-ATLAS night", "Tsuchinshan–ATLAS"),
        ("my sister is a vet.", "vet"),
        ("DuckDB 0.10.0", "0.10.0"),
    ],
)
def test_states_fact_matches_the_same_fact_however_it_is_written(answer: str, fact: str) -> None:
    assert states_fact(answer, fact)


@pytest.mark.parametrize(
    ("answer", "fact"),
    [
        ("It cost £1,241.", "£1,240"),  # a near number
        ("It cost £12,400.", "£1,240"),
        ("£620", "£62"),
        ("£6.20", "£62"),
        ("£162", "£62"),
        ("62.5 pounds", "£62"),
        ("£1,240,000", "£1,240"),
        ("12 pounds", "twelve dollars"),  # another currency
        ("62", "£62"),  # the fact's unit is part of the fact
        ("62 km", "£62"),
        ("8,000 m", "8,000 km"),
        ("8,000 miles", "8,000 km"),
        ("120", "twelve"),
        ("twenty", "21"),
        ("Apollo 130", "Apollo 13"),
        ("a velvet jacket", "vet"),  # word boundaries
        ("DuckDB 0.1", "0.10.0"),
        ("60 degrees", "6°C"),
        ("6°C", "6°F"),
        ("", "Apollo 13"),
    ],
)
def test_states_fact_never_matches_a_different_fact(answer: str, fact: str) -> None:
    assert not states_fact(answer, fact)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("We got there at 2:40pm.", True), ("2.40 PM", True), ("14:40", True), ("at 12:40pm", False), ("2:45pm", False)],
)
def test_regex_facts_match_case_insensitively(answer: str, expected: bool) -> None:
    assert states_fact(answer, RegexFact(r"\b2[:.]40\s*p\.?m\b|\b14[:.]40\b")) is expected


@pytest.mark.parametrize(
    ("spec", "answer", "expected"),
    [
        (FactSpec(all_of=("Piranesi", "Susanna Clarke")), "Piranesi, by Susanna Clarke", True),
        (FactSpec(all_of=("Piranesi", "Susanna Clarke")), "Piranesi", False),
        (FactSpec(any_of=("heat flow", "semiconductor wafers")), "simulating semiconductor wafers", True),
        (FactSpec(any_of=("heat flow", "semiconductor wafers")), "fluid dynamics", False),
        (FactSpec(all_of=("£640",), any_of=("Kepler", "the cat")), "the cat's teeth cost £640", True),
        (FactSpec(all_of=("£640",), any_of=("Kepler", "the cat")), "Juno's teeth cost £640", False),
        (FactSpec(all_of=("£640",), any_of=("Kepler", "the cat")), "Kepler's teeth cost £64", False),
        (FactSpec(), "anything at all", False),
    ],
)
def test_answer_states_facts_needs_all_of_and_one_of_any_of(spec: FactSpec, answer: str, expected: bool) -> None:
    assert answer_states_facts(answer, spec) is expected


# ------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "answer",
    [
        "I am not programmed to answer that.",
        "I'm not programmed to answer that",
        "I don't know.",
        "Sorry, I can't answer that question.",
        "I cannot say.",
        "That's not something I've written about.",
        "I haven't written about that on my site.",
        "I’m not sure.",
        "I have no idea, sorry!",
        "I don't have any information about that.",
    ],
)
def test_declines_are_refusals(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "It cost £640.",
        "My favourite film is Apollo 13.",
        "I don't know exactly, but it was about £640.",  # states a figure: an answer, right or wrong
        "I'm not sure, maybe 12 hours?",
        "",
        None,
    ],
)
def test_answers_are_not_refusals(answer: str | None) -> None:
    assert not is_refusal(answer)


# ----------------------------------------------------------------------------------------------- validation

VALID = """\
questions:
  - id: dental
    question: How much was Kepler's dental surgery?
    source: /posts/2024-year-in-review/
    facts: {any_of: ["£640"]}
  - id: book
    question: Which novel?
    source: https://example.org/posts/book/
    facts:
      all_of: [Piranesi]
      any_of: [Susanna Clarke, {regex: 'clarke'}]
  - id: plain-list
    question: How far?
    source: /posts/ride/
    facts: [6412, "6,412 km"]
  - id: single
    question: Where?
    source: /about/
    facts: Preston
  - id: salary
    question: How much do you earn?
    unanswerable: true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "golden.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_golden_reads_every_form(tmp_path: Path) -> None:
    golden = load_golden(write(tmp_path, VALID))
    dental, book, plain, single, salary = golden.questions
    assert dental == GoldenQuestion(
        "dental", "How much was Kepler's dental surgery?", "/posts/2024-year-in-review/", FactSpec(any_of=("£640",)), 2
    )
    assert book.facts == FactSpec(all_of=("Piranesi",), any_of=("Susanna Clarke", RegexFact("clarke")))
    assert book.source == "https://example.org/posts/book/"
    assert plain.facts == FactSpec(any_of=("6412", "6,412 km"))
    assert single.facts == FactSpec(any_of=("Preston",))
    assert (salary.answerable, salary.facts, salary.source, salary.line) == (False, None, None, 20)
    assert [q.answerable for q in golden.questions] == [True, True, True, True, False]


def second(*lines: str) -> str:
    """A file whose first question (lines 2-5) is fine and whose second starts on line 6 with `lines`."""
    first = "questions:\n  - id: ok\n    question: Fine?\n    source: /about/\n    facts: [x]\n"
    return first + "  - " + "\n    ".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        (second("id: b", "question: Q?", "sourse: /about/"), 8, "questions[1].sourse", "unknown key"),
        (second("id: b", "source: /about/", "facts: [x]"), 6, "questions[1].question", "missing"),
        (second("id: ok", "question: Q?", "unanswerable: true"), 6, "questions[1].id", "duplicate id"),
        (
            second("id: b", "question: Q?", "unanswerable: true", "facts: [x]"),
            9,
            "questions[1].facts",
            "an unanswerable question has no facts",
        ),
        (
            second("id: b", "question: Q?", "unanswerable: true", "source: /x/"),
            9,
            "questions[1].source",
            "an unanswerable question has no source",
        ),
        (second("id: b", "question: Q?", "source: /about/"), 6, "questions[1].facts", "needs at least one fact"),
        (
            second("id: b", "question: Q?", "source: /about/", "facts: {}"),
            9,
            "questions[1].facts",
            "needs at least one fact",
        ),
        (
            second("id: b", "question: Q?", "source: /about/", "facts:"),
            9,
            "questions[1].facts",
            "needs at least one fact",
        ),
        (
            second("id: b", "question: Q?", "source: /about/", "facts: {any_of: []}"),
            9,
            "questions[1].facts.any_of",
            "an empty list",
        ),
        (
            second("id: b", "question: Q?", "source: /about/", "facts:", "  any_of:", "    - {regex: '(a'}"),
            11,
            "questions[1].facts.any_of[0].regex",
            "bad regular expression",
        ),
        (
            second("id: b", "question: Q?", "source: posts/x", "facts: [x]"),
            8,
            "questions[1].source",
            "site-relative path",
        ),
        (
            second("id: b", "question: Q?", "source: ftp://x.org/a", "facts: [x]"),
            8,
            "questions[1].source",
            "site-relative path",
        ),
        (
            second("id: b", "question: Q?", "source: /a/", "facts: {one_of: [x]}"),
            9,
            "questions[1].facts.one_of",
            "unknown key",
        ),
        (second("id: b", "question: Q?", "source: /a/", "facts: [x, []]"), 9, "questions[1].facts[1]", "a fact is"),
        (
            second("id: b", "question: Q?", "source: /a/", "facts: [x, '...']"),
            9,
            "questions[1].facts[1]",
            "at least one word or number",
        ),
        (second("id: b", "question: Q?", "unanswerable: maybe"), 8, "questions[1].unanswerable", "true or false"),
        (second("id: b c", "question: Q?", "unanswerable: true"), 6, "questions[1].id", "letters, digits"),
        (second("id: b", "question: ''", "unanswerable: true"), 7, "questions[1].question", "non-empty"),
        ("question:\n  - id: a\n", 1, "question", "unknown key"),
        ("questions: {id: a}\n", 1, "questions", "non-empty list"),
        ("# nothing yet\n", 1, "questions", "missing"),
    ],
)
def test_validation_errors_name_the_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(GoldenFileError) as error:
        load_golden(path)
    assert str(error.value).startswith(f"{path} line {line}, {field}: ")
    assert message in str(error.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "questions:\n  - id: a\n    question: [unclosed\n")
    with pytest.raises(GoldenFileError, match=r"golden\.yaml line \d+: not valid YAML"):
        load_golden(path)


def test_a_missing_file_is_a_golden_file_error(tmp_path: Path) -> None:
    with pytest.raises(GoldenFileError, match="cannot read"):
        load_golden(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------------- scores


def q(qid: str, facts: FactSpec | None, source: str | None = None) -> GoldenQuestion:
    return GoldenQuestion(qid, f"question {qid}?", source, facts, 1)


GOLDEN = GoldenSet(
    "golden.yaml",
    (
        q("a1", FactSpec(any_of=("£640",)), "/posts/vet/"),
        q("a2", FactSpec(any_of=("Apollo 13",)), "/about/"),
        q("a3", FactSpec(any_of=("6.8 kg",)), "/posts/c2c/"),
        q("u1", None),
        q("u2", None),
    ),
)


def sources(*paths: str) -> str:
    return json.dumps([{"url": f"https://example.org{p}", "title": p, "score": 0.5} for p in paths])


ANSWERS = pd.DataFrame(
    [
        # rag: right with the source second; a false refusal with the source first; wrong with no source in the top k
        ("a1", "rag", "It cost six hundred and forty pounds.", sources("/posts/x/", "/posts/vet/index.html"), 1.0),
        ("a2", "rag", "I am not programmed to answer that.", sources("/about/"), 2.0),
        ("a3", "rag", "About 68 kg.", sources("/posts/x/", "/posts/y/", "/posts/c2c/"), 3.0),
        ("u1", "rag", "I don't know.", sources("/posts/x/"), 4.0),
        ("u2", "rag", "I earn £90,000 a year.", sources("/posts/x/"), 10.0),
        # ft retrieves nothing; it declines both unanswerable questions and does not answer a3 at all
        ("a1", "ft", "£640", "[]", 0.5),
        ("a2", "ft", "Apollo 13", "", 0.5),
        ("u1", "ft", "That's not something I've written about.", "[]", 0.5),
        ("u2", "ft", "I can't answer that.", "[]", 1.5),
    ],
    columns=["question_id", "model", "answer", "sources_json", "latency_s"],
)


def test_scores_one_row_per_question_and_model() -> None:
    scores = score_golden_answers(GOLDEN, ANSWERS, k=2)
    assert list(scores.columns) == SCORE_COLUMNS
    rag = scores[scores["model"] == "rag"].set_index("question_id")
    assert rag["correct"].tolist() == [True, False, False, False, False]
    assert rag["refused"].tolist() == [False, True, False, True, False]
    assert rag["false_refusal"].tolist() == [False, True, False, False, False]
    assert rag["source_rank"].tolist() == [2, 1, pd.NA, pd.NA, pd.NA]  # c2c is third: outside k=2
    ft = scores[scores["model"] == "ft"].set_index("question_id")
    assert pd.isna(ft.loc["a3", "answer"]) and not ft.loc["a3", "correct"] and not ft.loc["a3", "refused"]
    assert math.isnan(ft.loc["a3", "latency_s"])
    assert ft["n_sources"].tolist() == [0, 0, 0, 0, 0]


def test_the_unanswerable_path_counts_declines_not_facts() -> None:
    scores = score_golden_answers(GOLDEN, ANSWERS, k=4).set_index(["model", "question_id"])
    assert scores.loc[("rag", "u1"), ["answerable", "correct", "refused", "false_refusal"]].tolist() == [
        False,
        False,
        True,
        False,
    ]
    # a confident invention is not a refusal
    assert scores.loc[("rag", "u2"), ["correct", "refused"]].tolist() == [False, False]
    assert scores.loc[("ft", "u2"), "refused"]


def test_summary_figures() -> None:
    summary = golden_summary(score_golden_answers(GOLDEN, ANSWERS, k=2))
    rag, ft = summary["rag"], summary["ft"]
    assert rag["fact_accuracy"] == pytest.approx(0.3333333)
    assert rag["refusal_accuracy"] == 0.5
    assert rag["false_refusal_rate"] == pytest.approx(0.3333333)
    assert rag["hit_at_k"] == pytest.approx(0.6666667)
    assert rag["mrr"] == pytest.approx(0.5)  # (1/2 + 1/1 + 0) / 3
    assert rag["latency_p50"] == 3.0
    assert rag["latency_p95"] == pytest.approx(8.8)  # between 4 and 10, 80% of the way
    assert (rag["n_answerable"], rag["n_unanswerable"], rag["n_retrieved"]) == (3, 2, 3)
    assert ft["fact_accuracy"] == pytest.approx(0.6666667)
    assert ft["refusal_accuracy"] == 1.0
    assert ft["false_refusal_rate"] == 0.0
    assert math.isnan(ft["hit_at_k"]) and math.isnan(ft["mrr"])  # retrieves nothing: no retrieval figures
    assert ft["latency_p50"] == 0.5
    assert ft["n_retrieved"] == 0


def test_answers_keyed_by_question_text_with_a_sources_column() -> None:
    answers = pd.DataFrame(
        {
            "question": ["QUESTION a1?", "question u1?"],
            "model": ["byo", "byo"],
            "answer": ["£640", "No idea."],
            "sources": [sources("/posts/vet/"), "[]"],
        }
    )
    scores = score_golden_answers(GOLDEN, answers, k=4).set_index("question_id")
    assert scores.loc["a1", "correct"] and scores.loc["a1", "source_rank"] == 1
    assert scores.loc["u1", "refused"]
    assert scores["latency_s"].isna().all()


def test_duplicate_answers_or_missing_columns_are_an_error() -> None:
    with pytest.raises(ValueError, match="more than one row"):
        score_golden_answers(GOLDEN, pd.concat([ANSWERS, ANSWERS.head(1)]), k=2)
    with pytest.raises(ValueError, match="needs columns"):
        score_golden_answers(GOLDEN, ANSWERS.drop(columns=["question_id"]), k=2)


def test_no_answers_score_nothing() -> None:
    scores = score_golden_answers(GOLDEN, ANSWERS.head(0), k=2)
    assert list(scores.columns) == SCORE_COLUMNS and scores.empty
    assert golden_summary(scores) == {}


@pytest.mark.parametrize(
    ("url", "rank"),
    [("https://site.org/posts/vet/", 1), ("/posts/vet", 1), ("/posts/vet/index.html", 1), ("/posts/vets/", None)],
)
def test_source_rank_compares_url_paths(url: str, rank: int | None) -> None:
    assert source_rank([{"url": url}], "/posts/vet/", k=3) == rank


# ------------------------------------------------------------------------------------- judge validity pairs

PAIR_GOLDEN = GoldenSet(
    "golden.yaml",
    GOLDEN.questions
    + (
        q("regex-only", FactSpec(any_of=(RegexFact("x+"),)), "/a/"),
        q("both", FactSpec(all_of=("Piranesi", "Susanna Clarke")), "/b/"),
    ),
)


def test_right_and_wrong_pairs() -> None:
    pairs = right_and_wrong_pairs(PAIR_GOLDEN, n=10, seed=7)
    assert list(pairs.columns) == PAIR_COLUMNS
    assert sorted(set(pairs["qa_id"])) == ["a1", "a2", "a3", "both"]  # regex-only facts cannot be said back
    facts = {question.id: question.facts for question in PAIR_GOLDEN.questions}
    for row in pairs.itertuples():
        states = answer_states_facts(row.candidate, facts[row.qa_id])
        assert states is (row.kind == "matched"), row
        assert (row.other_qa_id == row.qa_id) is (row.kind == "matched")
    assert pairs[pairs["qa_id"] == "both"]["reference"].iloc[0] == "The answer is Piranesi and Susanna Clarke."
    assert pairs.equals(right_and_wrong_pairs(PAIR_GOLDEN, n=10, seed=7))
    assert len(right_and_wrong_pairs(PAIR_GOLDEN, n=2, seed=7)) == 4
