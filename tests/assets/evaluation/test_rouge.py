"""ROUGE (rouge-score's own numbers, the unicode tokenizer), cosine similarity, embedding long texts without
truncation, and `rouge_scores` materialized per model (in `scored`)."""

import math

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

from mebot.assets.evaluation.rouge import (
    ROUGE_COLUMNS,
    ROUGE_SCORE_COLUMNS,
    UnicodeTokenizer,
    cosine_similarities,
    embed_texts,
    rouge_table,
)
from mebot.resources.embeddings import build_embedder
from mebot.resources.settings import Settings
from tests.assets.evaluation.world import (
    FIRST,
    KEYS,
    RAG,
    SECOND,
    metadata_of,
    output_of,
)


def test_rouge_scores_per_row_with_similarity_and_missing_answers_left_out(scored):
    rag = output_of(scored, RAG, "rouge_scores").set_index("qa_id")
    assert list(output_of(scored, RAG, "rouge_scores").columns) == ROUGE_SCORE_COLUMNS
    exact = rag.loc["q-brenda"]
    assert exact["rouge1_f1"] == pytest.approx(1.0) and exact["rougeL_f1"] == pytest.approx(1.0)
    assert exact["similarity"] == pytest.approx(1.0, abs=1e-4)
    first = output_of(scored, FIRST, "rouge_scores").set_index("qa_id")
    assert 0 < first.loc["q-brenda", "rouge1_f1"] < 1
    assert first.loc["q-brenda", "similarity"] > first.loc["q-scope", "similarity"]  # Brenda vs. a refractor
    second = output_of(scored, SECOND, "rouge_scores").set_index("qa_id")
    assert not second.loc["q-sensor", "answered"]
    assert second.loc["q-sensor", [*ROUGE_COLUMNS, "similarity"]].isna().all()  # missing, not zero
    for key in KEYS:  # numeric metadata on every partition: the UI's Plots tab compares them
        metadata = metadata_of(scored, key, "rouge_scores")
        assert isinstance(metadata["rouge1_f1_mean"], float) and isinstance(metadata["similarity_mean"], float)
        assert metadata["rouge_stemmer"] is True and metadata["rouge_tokenizer"] == "default"
    assert (
        metadata_of(scored, RAG, "rouge_scores")["rouge1_f1_mean"]
        > metadata_of(scored, SECOND, "rouge_scores")["rouge1_f1_mean"]
    )
    assert metadata_of(scored, SECOND, "rouge_scores")["missing"] == 1


@pytest.mark.full  # the real MiniLM (its 256-token limit is the point)
def test_similarity_embeds_a_text_longer_than_the_model_reads_without_truncating_it():
    embedder = build_embedder(Settings().models.embedding)
    filler = "The allotment shed holds tools, seed trays and an old radio. " * 60
    long_text = filler + "My sourdough starter is called Brenda."
    assert embedder.count_tokens([long_text])[0] > embedder.max_tokens
    vectors = embed_texts(embedder, None, [long_text, filler, ""])
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5) and not np.allclose(vectors[0], vectors[1])
    assert not vectors[2].any()  # an empty text: a zero vector, similarity 0


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


def test_cosine_similarities_row_by_row_with_zero_vectors():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert cosine_similarities(a, b) == pytest.approx([1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(1, 2\)"):
        cosine_similarities(a, b[:1])
