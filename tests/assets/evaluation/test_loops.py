"""Looping answers (assets/evaluation/loops.py): an 8-word run repeated 3 times."""

import pytest

from mebot.assets.evaluation.loops import has_loop, loop_rate

GLAD = "I'm glad you're excited about it. "


@pytest.mark.parametrize(
    ("text", "loops"),
    [
        (GLAD * 20, True),  # the fine-tuned model's loop of the issue
        (GLAD * 4, True),  # a 6-word sentence 4 times: its first 8 words occur 3 times
        (GLAD * 3, False),  # ... 3 times: only twice
        ("My sourdough starter is called Brenda and I feed her every morning with rye flour.", False),
        ("", False),
        (None, False),
        ("word " * 9, False),  # one word 9 times: 2 runs of 8
        ("word " * 10, True),
        # case and punctuation do not hide a loop
        ("The ROOF closes when clouds arrive, " + "the roof closes when clouds arrive. " * 2 + "the roof", True),
        # a long answer that repeats a phrase only twice, with other text between
        (
            "I cycled from Sheffield to Edinburgh over four days. It rained on the second day. "
            "I cycled from Sheffield to Edinburgh over four days, and I would do it again.",
            False,
        ),
    ],
)
def test_has_loop(text, loops):
    assert has_loop(text) is loops


def test_has_loop_with_other_sizes():
    assert has_loop("a b c a b c a b c", n=3, repeats=3)
    assert not has_loop("a b c a b c a b c", n=3, repeats=4)


def test_loop_rate_is_the_share_of_answers_that_loop():
    assert loop_rate([GLAD * 5, "A fine answer.", "Another one.", None, "  "]) == pytest.approx(1 / 3)
    assert loop_rate([]) is None and loop_rate([None, ""]) is None


def test_the_leaderboard_has_each_models_loop_rate():
    import pandas as pd

    from mebot.assets.evaluation.leaderboard import leaderboard_table, loop_rates_by_model
    from mebot.resources.settings import EvalSettings

    answers = pd.DataFrame(
        {
            "qa_id": ["a", "b", "a", "b", "c"],
            "model": ["rag", "rag", "e1", "e1", "e1"],
            "answer": ["Fine.", "Also fine.", GLAD * 20, "Fine.", None],
            "error": [None, None, None, None, "ModelOutputError: empty"],
        }
    )
    rates = loop_rates_by_model([answers])
    assert rates == {"rag": 0.0, "e1": 0.5}  # the errored row is not an answer
    scores = pd.DataFrame({"qa_id": ["a", "b"], "model": ["rag", "e1"], "answered": [True, True]})
    board, _ = leaderboard_table(
        scores, EvalSettings(bootstrap_resamples=10), models=["rag", "e1", "e2"], loop_rates=rates
    )
    assert board.set_index("model")["loop_rate"].to_dict() == pytest.approx(
        {"rag": 0.0, "e1": 0.5, "e2": float("nan")}, nan_ok=True
    )
