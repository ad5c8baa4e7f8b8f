"""BM25 terms, scores and reciprocal rank fusion (assets/index/lexical.py)."""

import numpy as np
import pytest

from mebot.assets.index.lexical import Bm25Index, ranks, rrf, terms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How much did Kepler's dental surgery set you back?", ["kepler", "dental", "surgery", "set", "back"]),
        ("It cost £640 and 6,412 km", ["cost", "640", "6412", "km"]),
        ("Comet Tsuchinshan–ATLAS, C/2023 A3", ["comet", "tsuchinshan", "atla", "c", "2023", "a3"]),
        ("The pedals and the glass", ["pedal", "glass"]),
        ("What is it?", []),
    ],
)
def test_terms(text, expected):
    assert terms(text) == expected


def test_bm25_scores_the_document_with_the_rare_question_words_first():
    index = Bm25Index(["The Telrad finder cost £40.", "I bought a telescope.", "The telescope cost £300."])
    scores = index.scores("How much was the Telrad?")
    assert int(np.argmax(scores)) == 0
    assert scores[1] == 0  # no question word
    assert np.isneginf(index.fusable_scores("How much was the Telrad?")[1])
    assert not index.scores("What is it?").any()  # stopwords only


def test_ranks_are_stable_on_ties():
    assert ranks(np.array([0.5, 0.9, 0.5, 0.1])).tolist() == [1, 0, 2, 3]


def test_rrf_sums_reciprocal_ranks_and_ignores_minus_infinity():
    dense = np.array([0.9, 0.8, 0.1])
    lexical = np.array([-np.inf, 2.0, 5.0])
    fused = rrf([dense, lexical], k=60)
    assert fused[0] == pytest.approx(1 / 61)  # first by dense, nothing from BM25
    assert fused[1] == pytest.approx(1 / 62 + 1 / 62)
    assert fused[2] == pytest.approx(1 / 63 + 1 / 61)
    assert min(fused[1], fused[2]) > fused[0]  # found by both beats first in one only
    with pytest.raises(ValueError, match="differ in length"):
        rrf([dense, lexical[:2]])
