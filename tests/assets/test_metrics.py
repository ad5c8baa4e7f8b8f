import json
import math

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from assets.metrics import (
    EXTERNAL_COLUMNS,
    ROUGE_COLUMNS,
    ExternalAnswersError,
    RetrievalHit,
    UnicodeTokenizer,
    bootstrap_ci,
    cosine_similarities,
    distribution_from_mapping,
    external_qa_id,
    leaderboard_markdown,
    pairwise_table,
    parse_direct_score,
    passage_coverage,
    read_external_answers,
    retrieval_hit,
    retrieval_summary,
    rouge_table,
    score_distribution,
    validity_report,
    wins_ties_by_model,
)

# --------------------------------------------------------------------------------------------------- ROUGE

ROUGE_PAIRS = [
    ("The cat sat on the mat.", "The cat sat."),
    ("I bake sourdough bread every Sunday morning.", "Every Sunday I am baking bread."),
    ("My telescope is a 200mm Dobsonian.", "I own a Dobsonian telescope, 200mm."),
    ("Sheffield", "I live in Sheffield, in the north of England."),
    ("running runs ran", "run running"),
]


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_table_equals_rouge_scores_own_scorer(use_stemmer):
    references, answers = zip(*ROUGE_PAIRS, strict=True)
    table = rouge_table(list(references), list(answers), use_stemmer=use_stemmer)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    assert list(table.columns) == ROUGE_COLUMNS
    for row, (reference, answer) in zip(table.itertuples(index=False), ROUGE_PAIRS, strict=True):
        expected = scorer.score(reference, answer)
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert getattr(row, f"{kind}_precision") == pytest.approx(expected[kind].precision)
            assert getattr(row, f"{kind}_recall") == pytest.approx(expected[kind].recall)
            assert getattr(row, f"{kind}_f1") == pytest.approx(expected[kind].fmeasure)


def test_rouge_precision_is_over_the_answer_and_recall_over_the_reference():
    row = rouge_table(["the cat sat on the mat"], ["the cat sat"]).iloc[0]
    assert (row.rouge1_precision, row.rouge1_recall, row.rouge1_f1) == pytest.approx((1.0, 0.5, 2 / 3))
    assert (row.rouge2_precision, row.rouge2_recall) == pytest.approx((1.0, 2 / 5))


@pytest.mark.parametrize("answer", ["", "   ", None, math.nan])
def test_rouge_of_an_empty_or_missing_answer_is_zero(answer):
    table = rouge_table(["I live in Sheffield."], [answer])
    assert table.iloc[0].tolist() == [0.0] * len(ROUGE_COLUMNS)


NON_LATIN_PAIRS = [
    ("Το ψωμί μου είναι νόστιμο", "Το ψωμί είναι καλό"),  # Greek
    ("Я живу в Москве и пеку хлеб", "Я пеку хлеб в Москве"),  # Cyrillic
    ("我 每天 烤 面包", "我 烤 面包"),  # CJK, words separated by spaces
]


@pytest.mark.parametrize(("reference", "answer"), NON_LATIN_PAIRS)
def test_unicode_tokenizer_scores_non_latin_text_the_default_scores_zero(reference, answer):
    default = rouge_table([reference], [answer]).iloc[0]
    unicode = rouge_table([reference], [answer], tokenizer="unicode").iloc[0]
    assert default.rouge1_f1 == 0.0 and default.rougeL_f1 == 0.0
    # The same texts with every word swapped for an ASCII stand-in score the same under the default tokenizer.
    stand_in = {word: f"w{i}" for i, word in enumerate(dict.fromkeys(f"{reference} {answer}".lower().split()))}
    ascii_pair = [" ".join(stand_in[w] for w in text.lower().split()) for text in (reference, answer)]
    expected = rouge_table([ascii_pair[0]], [ascii_pair[1]]).iloc[0]
    assert unicode.rouge1_f1 > 0.5
    pd.testing.assert_series_equal(unicode, expected)


def test_unicode_tokenizer_matches_the_default_on_ascii_text():
    references, answers = zip(*ROUGE_PAIRS, strict=True)
    default = rouge_table(list(references), list(answers))
    unicode = rouge_table(list(references), list(answers), tokenizer="unicode")
    pd.testing.assert_frame_equal(default, unicode)


def test_unicode_tokenizer_stems_only_ascii_words():
    assert UnicodeTokenizer(use_stemmer=True).tokenize("Baking breads: Хлебы") == ["bake", "bread", "хлебы"]


def test_rouge_table_rejects_unequal_lengths_and_unknown_tokenizer():
    with pytest.raises(ValueError, match="2 references but 1 answers"):
        rouge_table(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="'words' is not known"):
        rouge_table(["a"], ["a"], tokenizer="words")


# ------------------------------------------------------------------------------------------ judge: logprobs

lp = math.log


def test_expected_score_from_single_digit_tokens_and_whitespace_prefixed_tokens():
    dist = score_distribution([{"7": lp(0.5), " 8": lp(0.3), "8": lp(0.1), "\n6": lp(0.1)}], ["7"])
    assert dist.valid_mass == pytest.approx(1.0)
    assert dist.probabilities[8] == pytest.approx(0.4)  # " 8" and "8" are one score
    assert dist.probabilities[6] == pytest.approx(0.1)
    assert dist.expected == pytest.approx(7 * 0.5 + 8 * 0.4 + 6 * 0.1)
    assert dist.argmax == 7
    assert dist.ten_resolved


def test_single_token_ten_is_a_candidate_at_the_first_position():
    dist = score_distribution([{"10": lp(0.6), "9": lp(0.3), "1": lp(0.1)}], ["10"])
    assert dist.probabilities[10] == pytest.approx(0.6)
    assert dist.probabilities[1] == pytest.approx(0.1)
    assert dist.expected == pytest.approx(6 + 2.7 + 0.1)
    assert dist.ten_resolved


def test_ten_written_as_one_then_zero_is_split_by_the_second_position():
    positions = [
        {"1": lp(0.5), "9": lp(0.3), "The": lp(0.2)},
        {"0": lp(0.6), "5": lp(0.1), ".": lp(0.3)},  # after "1": "10", "15" (not a score), "1."
    ]
    dist = score_distribution(positions, ["1", "0"])
    assert dist.ten_resolved
    # P(10) = .5 * .6, P(1) = .5 * (1 - .6 - .1), P(9) = .3; "The" and "15" are not scores.
    assert dist.valid_mass == pytest.approx(0.3 + 0.15 + 0.3)
    assert dist.probabilities[10] == pytest.approx(0.3 / 0.75)
    assert dist.probabilities[1] == pytest.approx(0.15 / 0.75)
    assert dist.probabilities[9] == pytest.approx(0.3 / 0.75)
    assert dist.expected == pytest.approx((10 * 0.3 + 1 * 0.15 + 9 * 0.3) / 0.75)
    assert dist.argmax == 9  # 10 and 9 tie at .4; the lower score wins a tie


def test_one_not_chosen_counts_as_one_and_says_ten_is_unresolved():
    dist = score_distribution([{"8": lp(0.7), "1": lp(0.3)}, {"/": lp(0.9)}], ["8", "/"])
    assert dist.probabilities[1] == pytest.approx(0.3)
    assert dist.probabilities[10] == 0.0
    assert not dist.ten_resolved


def test_continuation_after_a_forced_one_resolves_ten():
    dist = score_distribution([{"8": lp(0.5), "1": lp(0.5)}], ["8"], continuation_after_one={"0": lp(0.8)})
    assert dist.ten_resolved
    assert dist.probabilities[10] == pytest.approx(0.4)
    assert dist.probabilities[1] == pytest.approx(0.1)


def test_mass_on_invalid_tokens_is_excluded_and_reported():
    dist = score_distribution([{"The": lp(0.5), "\n": lp(0.3), "4": lp(0.2)}], ["The"])
    assert dist.valid_mass == pytest.approx(0.2)
    assert dist.probabilities[4] == pytest.approx(1.0)
    assert dist.expected == pytest.approx(4.0)


@pytest.mark.parametrize("positions", [[{"The": lp(0.9), "\n": lp(0.1)}], []])
def test_no_valid_mass_gives_no_expected_score(positions):
    dist = score_distribution(positions, ["The"] if positions else [])
    assert dist.valid_mass == 0.0
    assert dist.expected is None and dist.argmax is None and dist.probabilities == {}


def test_distribution_from_mapping_normalises_weights():
    dist = distribution_from_mapping({"0": 1, "5": 2, 10: 1})
    assert dist.probabilities[5] == pytest.approx(0.5)
    assert dist.expected == pytest.approx(5.0)
    assert dist.valid_mass == 1.0
    assert distribution_from_mapping({"9": 0.6, "8": 0.2}).valid_mass == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [({"11": 1.0}, "'11' is not a score"), ({"7": -0.1}, "non-negative"), ({"7": 0}, "no mass"), ([1], "object")],
)
def test_distribution_from_mapping_rejects_bad_keys_and_values(mapping, message):
    with pytest.raises(ValueError, match=message):
        distribution_from_mapping(mapping)


# --------------------------------------------------------------------------------------- judge: plain reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("7", 7.0),
        ("7.", 7.0),
        (" 8/10", 8.0),
        ("8 / 10", 8.0),
        ("Score: 9", 9.0),
        ("9 out of 10", 9.0),
        ("**6**", 6.0),
        ("Rating: 7.5", 7.5),
        ("10/10", 10.0),
        ("0", 0.0),
        ("On a scale of 0 to 10, I would give it a 7.", 7.0),
        ("Score (1-10): 4", 4.0),
        ("A score of 3", 3.0),
        ("I'd rate it 42, no, 6", 6.0),
        ("Ten.", 10.0),
        ("**seven**", 7.0),
        ("Score: eight", 8.0),
        ("No one could say", None),
        ("The answer is wrong", None),
        ("42", None),
        ("-3", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_direct_score(reply, expected):
    assert parse_direct_score(reply) == expected


# ------------------------------------------------------------------------------------------ judge validity


def test_a_judge_scoring_at_random_fails_validity():
    rng = np.random.default_rng(7)
    report = validity_report(list(rng.integers(0, 11, 300)), list(rng.integers(0, 11, 300)))
    assert report["auc"] == pytest.approx(0.5, abs=0.07)
    assert not report["passed"]


def test_a_judge_that_tells_right_from_wrong_passes_validity():
    report = validity_report([9, 10, 8, 9, None], [1, 0, 2, math.nan, 3])
    assert report["auc"] == 1.0 and report["accuracy"] == 1.0 and report["passed"]
    assert 3 < report["threshold"] <= 8
    assert (report["n_matched"], report["n_mismatched"], report["n_null"]) == (4, 4, 2)
    assert report["mean_matched"] == pytest.approx(9.0) and report["mean_mismatched"] == pytest.approx(1.5)


def test_validity_auc_counts_ties_as_half():
    # pairs (matched, mismatched): 5>3, 5=5, 7>3, 7>5 → (3 + 0.5) / 4
    report = validity_report([5, 7], [3, 5], min_auc=0.9)
    assert report["auc"] == pytest.approx(0.875)
    assert not report["passed"]
    assert report["accuracy"] == pytest.approx(0.75)


def test_validity_with_an_empty_side_has_no_auc():
    report = validity_report([9, 8], [None])
    assert report["auc"] is None and report["accuracy"] is None and not report["passed"]
    assert report["n_null"] == 1


# ------------------------------------------------------------------------------------- similarity, retrieval


def test_cosine_similarities_row_by_row_with_zero_vectors():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert cosine_similarities(a, b) == pytest.approx([1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(1, 2\)"):
        cosine_similarities(a, b[:1])


URL = "https://example.org/bread"
PAGE = (
    "I started baking sourdough in 2019 when the bakery near my flat closed. My starter is called Brenda and "
    "she lives in the fridge between bakes. Every Saturday I feed her twice and mix the dough before noon. "
    "The loaf proves overnight in a cold oven and goes into a dutch oven at 250 degrees on Sunday morning. "
    "I sell a few loaves to the neighbours and give the rest to the food bank on Monday."
)


def test_passage_straddling_two_chunks_is_found_in_the_chunk_with_most_of_it():
    passage = PAGE[PAGE.index("Every Saturday") : PAGE.index("I sell")]
    cut = PAGE.index("goes into")  # the chunk boundary: most of the passage lies in the first chunk
    first, second = PAGE[:cut], PAGE[cut:]
    assert passage_coverage(passage, first) > 0.5 > passage_coverage(passage, second)
    hit = retrieval_hit(URL, passage, [("https://example.org/other", "unrelated"), (URL, second), (URL, first)])
    assert hit == RetrievalHit(chunk_rank=3, page_rank=2)


def test_passage_inside_a_chunk_matches_despite_whitespace():
    passage = "My starter is called Brenda and\n\nshe lives   in the fridge between bakes."
    assert retrieval_hit(URL, passage, [(URL, PAGE)]) == RetrievalHit(chunk_rank=1, page_rank=1)


def test_same_text_on_the_wrong_page_is_no_hit():
    hit = retrieval_hit(URL, PAGE[:120], [("https://example.org/copy", PAGE)])
    assert hit == RetrievalHit(chunk_rank=None, page_rank=None)


def test_passage_not_retrieved_but_its_page_was():
    other = "My telescope is a 200mm Dobsonian. I observe the Moon from the back garden on clear nights."
    hit = retrieval_hit(URL, other, [(URL, PAGE)])
    assert hit == RetrievalHit(chunk_rank=None, page_rank=1)


def test_common_words_alone_do_not_count_as_the_passage():
    # Every word of this passage is on the page, but not one 3-word run of it.
    scrambled = "the bakes the in I and the is my the between of she"
    assert passage_coverage(scrambled, PAGE) == 0.0


def test_retrieval_summary_hit_rates_and_mrr():
    hits = [RetrievalHit(1, 1), RetrievalHit(2, 1), RetrievalHit(None, 3), RetrievalHit(None, None)]
    summary = retrieval_summary(hits, k=3)
    assert summary["chunk_hit@1"] == 0.25 and summary["chunk_hit@3"] == 0.5
    assert summary["chunk_mrr"] == pytest.approx((1 + 0.5) / 4)
    assert summary["page_hit@1"] == 0.5 and summary["page_hit@3"] == 0.75
    assert summary["page_mrr"] == pytest.approx((1 + 1 + 1 / 3) / 4)
    assert summary["n"] == 4
    assert math.isnan(retrieval_summary([], k=3)["chunk_mrr"])


# ------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_the_mean_and_is_deterministic_for_a_seed():
    values = list(np.random.default_rng(1).normal(5, 2, 50))
    mean, low, high = bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(np.mean(values))
    assert low < mean < high
    assert bootstrap_ci(values, seed=3) == (mean, low, high)
    assert bootstrap_ci(values, seed=4) != (mean, low, high)


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(2)
    _, low_small, high_small = bootstrap_ci(rng.normal(0, 1, 20))
    _, low_large, high_large = bootstrap_ci(rng.normal(0, 1, 2000))
    assert high_large - low_large < (high_small - low_small) / 4


def test_bootstrap_ci_drops_nulls_and_handles_tiny_inputs():
    assert bootstrap_ci([4.0, None, math.nan]) == (4.0, 4.0, 4.0)
    assert all(math.isnan(v) for v in bootstrap_ci([None]))
    assert bootstrap_ci([1.0, None, 3.0])[0] == 2.0


# -------------------------------------------------------------------------------------------- wins and ties


def test_pairwise_wins_ties_with_epsilon_and_nulls():
    scores = pd.DataFrame(
        [
            ("q1", "rag", 8.0),
            ("q1", "ft", 6.0),
            ("q1", "base", 7.95),
            ("q2", "rag", 5.0),
            ("q2", "ft", 5.1),  # within epsilon of rag: a tie
            ("q2", "base", None),
            ("q3", "rag", 2.0),
            ("q3", "ft", 9.0),
            ("q3", "base", 9.0),
            ("q4", "rag", None),  # rag did not get a score: q4 counts for ft vs base only
            ("q4", "ft", 3.0),
            ("q4", "base", 4.0),
        ],
        columns=["qa_id", "model", "score"],
    )
    table = pairwise_table(scores, tie_epsilon=0.1).set_index(["model_a", "model_b"])
    assert list(table.index) == [("base", "ft"), ("base", "rag"), ("ft", "rag")]
    assert table.loc[("ft", "rag")].tolist() == [3, 1, 1, 1, 1 / 3, 1 / 3]
    assert table.loc[("base", "rag")].tolist() == [2, 1, 0, 1, 0.5, 0.0]  # 7.95 vs 8.0: tie; 9 vs 2: base
    assert table.loc[("base", "ft")].tolist() == [3, 2, 0, 1, 2 / 3, 0.0]

    totals = wins_ties_by_model(table.reset_index()).set_index("model")
    assert totals.loc["base"].tolist() == [3, 2, 0, 5, 0.6]
    assert totals.loc["rag"].tolist() == [1, 2, 2, 5, 0.2]
    assert totals.loc["ft"].tolist() == [1, 2, 3, 6, 1 / 6]
    assert list(totals.index) == ["base", "ft", "rag"]  # most wins first, then most ties, then name


def test_pairwise_with_no_shared_question_has_nan_rates():
    scores = pd.DataFrame({"qa_id": ["q1", "q2"], "model": ["a", "b"], "score": [1.0, 2.0]})
    row = pairwise_table(scores, tie_epsilon=0).iloc[0]
    assert row.n == 0 and math.isnan(row.win_rate_a)


def test_pairwise_rejects_two_scores_for_one_question_and_model():
    scores = pd.DataFrame({"qa_id": ["q1", "q1"], "model": ["a", "a"], "score": [1.0, 2.0]})
    with pytest.raises(ValueError, match="more than one score.*'a', 'q1'"):
        pairwise_table(scores, tie_epsilon=0)


# ------------------------------------------------------------------------------------ bring-your-own answers

EXTERNAL_ROWS = [
    {
        "question": "Where do you live?",
        "reference": "I live in Sheffield.",
        "model": "gpt-x",
        "answer": "Sheffield, in the north of England.",
        "qa_id": "q-1",
        "judge_distribution": {"8": 0.5, "9": 0.25, "10": 0.25},
        "judge_direct_score": 9,
        "source_url": "https://example.org/about",
        "split": "test",
    },
    {
        "question": "What is your starter called?",
        "reference": "Brenda.",
        "model": "gpt-x",
        "answer": "",
        "qa_id": None,
        "judge_distribution": None,
        "judge_direct_score": None,
        "source_url": None,
        "split": None,
    },
]


def write_external(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    else:
        frame = pd.DataFrame(rows)
        if "judge_distribution" in frame and path.suffix == ".csv":
            frame["judge_distribution"] = [json.dumps(d) if d else "" for d in frame["judge_distribution"]]
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_external_answers_round_trip(tmp_path, suffix):
    frame = read_external_answers(write_external(tmp_path / f"answers{suffix}", EXTERNAL_ROWS))
    assert list(frame.columns) == EXTERNAL_COLUMNS
    first, second = frame.iloc[0], frame.iloc[1]
    assert (first.question, first.reference, first.model, first.answer) == (
        "Where do you live?",
        "I live in Sheffield.",
        "gpt-x",
        "Sheffield, in the north of England.",
    )
    assert first.qa_id == "q-1"
    assert distribution_from_mapping(json.loads(first.judge_distribution_json)).expected == pytest.approx(8.75)
    assert first.judge_direct_score == 9.0
    assert (first.source_url, first.split) == ("https://example.org/about", "test")
    assert second.answer == ""
    assert second.qa_id == external_qa_id("What is your starter called?", "Brenda.")
    assert second.judge_distribution_json is None and math.isnan(second.judge_direct_score)
    assert second.source_url is None and second.split is None


def test_external_answers_missing_columns_are_all_named(tmp_path):
    path = write_external(tmp_path / "answers.jsonl", [{"question": "Where?", "answer": "Here."}])
    with pytest.raises(ExternalAnswersError, match=r"answers\.jsonl: missing required column\(s\) reference, model"):
        read_external_answers(path)


@pytest.mark.parametrize(
    ("suffix", "where"),
    [(".jsonl", "line 2"), (".csv", "line 3"), (".parquet", "row 2")],
)
def test_external_answers_bad_distribution_key_names_the_line(tmp_path, suffix, where):
    rows = [dict(EXTERNAL_ROWS[0]), {**EXTERNAL_ROWS[0], "qa_id": "q-2", "judge_distribution": {"11": 1.0}}]
    path = write_external(tmp_path / f"answers{suffix}", rows)
    with pytest.raises(ExternalAnswersError, match=f"{where}: judge distribution key '11' is not a score"):
        read_external_answers(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"judge_direct_score": 11}, "judge_direct_score 11 is outside 0..10"),
        ({"judge_distribution": {"7": -1}}, "non-negative"),
        ({"model": ""}, "model is empty"),
        ({"qa_id": "q-1"}, "line 2: model 'gpt-x' already answered this question \\(line 1\\)"),
    ],
)
def test_external_answers_row_errors_name_the_line(tmp_path, change, message):
    rows = [dict(EXTERNAL_ROWS[0]), {**EXTERNAL_ROWS[0], "qa_id": "q-2", **change}]
    with pytest.raises(ExternalAnswersError, match=message):
        read_external_answers(write_external(tmp_path / "answers.jsonl", rows))


def test_external_answers_unknown_format_and_bad_json(tmp_path):
    with pytest.raises(ExternalAnswersError, match=r"\.xlsx is not read"):
        read_external_answers(tmp_path / "answers.xlsx")
    bad = tmp_path / "answers.jsonl"
    bad.write_text(json.dumps(EXTERNAL_ROWS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ExternalAnswersError, match="line 2: not valid JSON"):
        read_external_answers(bad)
    with pytest.raises(ExternalAnswersError, match="no such answers file"):
        read_external_answers(tmp_path / "absent.csv")


# --------------------------------------------------------------------------------------------------- tables


def test_leaderboard_markdown_rounds_floats_and_keeps_every_row():
    frame = pd.DataFrame(
        {"model": [f"m{i}" for i in range(8)], "rouge1_f1": [i / 7 for i in range(8)], "unused": range(8)}
    )
    text = leaderboard_markdown(frame, ["model", "rouge1_f1"], digits=2)
    lines = text.splitlines()
    assert len(lines) == 2 + 8
    assert "unused" not in lines[0] and "rouge1_f1" in lines[0]
    assert "0.14" in lines[3] and "0.142" not in text
    with pytest.raises(ValueError, match="no column\\(s\\) judge"):
        leaderboard_markdown(frame, ["model", "judge"])
