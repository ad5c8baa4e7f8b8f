"""Retrieval: where a question's known source passage ranks among the retrieved chunks, and `retrieval_metrics`
over a real FAISS index (in `scored`)."""

import json
import math

import pytest

from mebot.assets.evaluation.retrieval import RetrievalHit, passage_coverage, retrieval_hit, retrieval_summary
from tests.assets.evaluation.world import metadata_of


def test_retrieval_metrics_rank_each_questions_known_source(scored):
    frame = scored["results"]["validity"].output_for_node("retrieval_metrics").set_index("qa_id")
    assert sorted(frame.index) == ["q-brenda", "q-scope", "q-sensor"]  # the test split
    assert frame.loc["q-brenda", "chunk_rank"] == 1 and frame.loc["q-brenda", "page_rank"] == 1
    assert (frame["k"] == 4).all()
    assert [r["chunk_id"] for r in json.loads(frame.loc["q-sensor", "retrieved_json"])][0] == "c-sensor"
    metadata = metadata_of(scored, "validity", "retrieval_metrics")
    ranks = frame["chunk_rank"].astype(float)
    assert metadata["chunk_hit_at_1"] == pytest.approx(float((ranks == 1).mean()))
    assert metadata["chunk_mrr"] == pytest.approx(float((1 / ranks).mean()))
    assert metadata["k"] == 4


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
