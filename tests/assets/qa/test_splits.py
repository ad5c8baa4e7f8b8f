"""Held-out splits (by_question, by_page, none) and the passage sample: deterministic given the seed."""

import pandas as pd
import pytest

from mebot.assets.qa.questions import normalize_question
from mebot.assets.qa.splits import assign_splits, sample_passages, split_pages
from mebot.resources.settings import QaSettings


def _passages(n_pages: int = 12, per_page: int = 3) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    rows, questions = [], {}
    for p in range(n_pages):
        for c in range(per_page):
            cid = f"chunk-{p}-{c}"
            rows.append({"chunk_id": cid, "url": f"https://x/page-{p}", "title": f"P{p}", "passage": f"text {p} {c}"})
            questions[cid] = [f"Question {i} about page {p} chunk {c}?" for i in range(2 if c else 3)]
    return pd.DataFrame(rows), questions


@pytest.mark.parametrize("mode", ["by_question", "by_page", "none"])
@pytest.mark.parametrize("seed", [1, 42])
def test_splits_are_deterministic_given_the_seed(mode, seed):
    passages, questions = _passages()
    qa = QaSettings(split=mode, seed=seed, train_fraction=0.6, validation_fraction=0.3)
    first = assign_splits(passages, questions, qa)
    pd.testing.assert_frame_equal(first, assign_splits(passages, questions, qa))
    assert first["qa_id"].is_unique
    assert set(first["split"]) <= {"train", "validation", "test"}
    if mode != "none":
        other = assign_splits(passages, questions, qa.model_copy(update={"seed": seed + 1}))
        assert not first["split"].equals(other["split"])  # the seed decides the assignment


@pytest.mark.parametrize("mode", ["by_question", "by_page"])
def test_held_out_questions_never_appear_in_train(mode):
    passages, questions = _passages()
    frame = assign_splits(passages, questions, QaSettings(split=mode, validation_fraction=0.1))
    train = set(frame.loc[frame["split"] == "train", "question"].map(normalize_question))
    held_out = set(frame.loc[frame["split"] != "train", "question"].map(normalize_question))
    assert held_out and train and not train & held_out
    assert (frame["split"] == "test").any()
    assert len(frame) == sum(len(q) for q in questions.values())  # each question exactly once


def test_by_question_holds_out_one_question_per_passage_and_trains_on_every_passage():
    passages, questions = _passages()
    frame = assign_splits(
        passages, questions, QaSettings(split="by_question", train_fraction=0.6, validation_fraction=0.3)
    )
    per_passage = frame.groupby("chunk_id")["split"].apply(list)
    for cid, splits in per_passage.items():
        assert sum(s != "train" for s in splits) == 1, cid  # one held out: validation or test
        assert splits.count("train") == len(questions[cid]) - 1
    held_out = frame.loc[frame["split"] != "train", "split"].value_counts()
    assert held_out.get("validation", 0) > 0 and held_out.get("test", 0) > 0


def test_by_question_passage_with_a_single_question_only_trains():
    passages, questions = _passages(n_pages=2, per_page=1)
    questions = {cid: qs[:1] for cid, qs in questions.items()}
    frame = assign_splits(passages, questions, QaSettings(split="by_question"))
    assert set(frame["split"]) == {"train"}


def test_by_page_keeps_each_page_in_one_split_with_the_fractions():
    passages, questions = _passages(n_pages=20)
    frame = assign_splits(passages, questions, QaSettings(split="by_page", train_fraction=0.8, validation_fraction=0.1))
    assert (frame.groupby("url")["split"].nunique() == 1).all()
    pages_per_split = frame.groupby("split")["url"].nunique().to_dict()
    assert pages_per_split == {"train": 16, "validation": 2, "test": 2}


@pytest.mark.parametrize("n_pages", [2, 3, 5])
def test_by_page_small_sites_still_get_a_test_page(n_pages):
    urls = [f"https://x/{i}" for i in range(n_pages)]
    splits = split_pages(urls, QaSettings(train_fraction=0.8, validation_fraction=0.1))
    assert "train" in splits.values() and "test" in splits.values()


def test_none_mode_tests_on_every_training_question():
    passages, questions = _passages(n_pages=3)
    frame = assign_splits(passages, questions, QaSettings(split="none"))
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == "test"]
    assert len(train) == len(test) == sum(len(q) for q in questions.values())
    assert list(train["question"]) == list(test["question"]) and list(train["answer"]) == list(test["answer"])
    assert set(frame["split"]) == {"train", "test"}


@pytest.mark.parametrize("max_passages", [1, 5, 12, 20])
def test_passage_sample_is_spread_over_pages_deterministic_and_grows_by_adding(max_passages):
    passages, _ = _passages(n_pages=8, per_page=3)
    sample = sample_passages(passages, max_passages, seed=42)
    assert len(sample) == max_passages and sample["chunk_id"].is_unique
    pd.testing.assert_frame_equal(sample, sample_passages(passages, max_passages, seed=42))
    per_page = sample["url"].value_counts()
    assert per_page.max() - per_page.min() <= 1 and len(per_page) == min(8, max_passages)  # pages take turns
    assert list(sample["chunk_id"]) == [c for c in passages["chunk_id"] if c in set(sample["chunk_id"])]  # order kept
    bigger = set(sample_passages(passages, max_passages + 3, seed=42)["chunk_id"])
    assert set(sample["chunk_id"]) < bigger  # a bigger sample keeps every earlier passage (and its cached questions)


@pytest.mark.parametrize("max_passages", [0, 24, 100])
def test_passage_sample_of_zero_or_more_than_there_are_keeps_everything(max_passages):
    passages, _ = _passages(n_pages=8, per_page=3)
    pd.testing.assert_frame_equal(sample_passages(passages, max_passages, seed=1), passages)


def test_a_different_seed_samples_other_passages():
    passages, _ = _passages(n_pages=8, per_page=3)
    first, second = (set(sample_passages(passages, 8, seed=seed)["chunk_id"]) for seed in (1, 2))
    assert first != second


@pytest.mark.parametrize(("n_pages", "fraction", "expected"), [(4, 0.1, 1), (12, 0.1, 1), (12, 0.25, 3), (12, 0.0, 0)])
def test_by_question_validation_gets_its_fraction_and_at_least_one_question(n_pages, fraction, expected):
    passages, questions = _passages(n_pages=n_pages, per_page=1)  # one passage per page, each with 3 questions
    frame = assign_splits(
        passages, questions, QaSettings(split="by_question", train_fraction=0.5, validation_fraction=fraction)
    )
    assert (frame["split"] == "validation").sum() == expected
    assert (frame["split"] == "test").sum() == n_pages - expected
