"""The leaderboard over rag + every sweep point (missing answers counted, intervals, validity, wins; CSV and plots
written), the table on hand-made scores, bootstrap intervals and pairwise wins/ties."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mebot.assets.evaluation.leaderboard import (
    LEADERBOARD_COLUMNS,
    bootstrap_ci,
    leaderboard_table,
    pairwise_table,
    wins_ties_by_model,
)
from mebot.resources.settings import EvalSettings, Settings
from tests.assets.evaluation.world import (
    FIRST,
    KEYS,
    RAG,
    SECOND,
    metadata_of,
    output_of,
)


def test_leaderboard_has_rag_and_every_sweep_point_with_intervals_validity_wins_and_counts(scored):
    board = output_of(scored, "leaderboard", "leaderboard")
    # eval.golden_path is "" in this world: no golden columns at all rather than empty ones
    assert list(board.columns) == [c for c in LEADERBOARD_COLUMNS if "golden" not in c]
    # rag, extractive (not materialized in this world), then every sweep point
    assert [model for model in board["model"] if model != "extractive"] == KEYS
    rows = board.set_index("model")
    assert rows.loc[RAG, "backend"] == "rag" and pd.isna(rows.loc[RAG, "n_epochs"])
    point = {p.key: p for p in Settings().finetune.sweep_points()}[FIRST]
    assert rows.loc[FIRST, "backend"] == "local_lora"
    assert rows.loc[FIRST, "learning_rate_multiplier"] == point.learning_rate_multiplier
    assert rows.loc[FIRST, "n_epochs"] == point.n_epochs and rows.loc[FIRST, "lora_r"] == point.lora_r
    assert rows.loc[SECOND, ["n_questions", "n_answered", "n_missing"]].tolist() == [3, 2, 1]
    rouge = output_of(scored, SECOND, "rouge_scores")
    assert rows.loc[SECOND, "rouge1_f1"] == pytest.approx(rouge["rouge1_f1"].dropna().mean())  # on the rest
    for metric in ("rouge1_f1", "similarity", "judge_expected"):
        measured = board.dropna(subset=[metric])  # the unmaterialized extractive row has none
        assert len(measured) == len(KEYS)
        assert (measured[f"{metric}_ci_low"] <= measured[metric] + 1e-9).all()
        assert (measured[metric] <= measured[f"{metric}_ci_high"] + 1e-9).all()
    assert rows.loc[RAG, "rouge1_f1"] > rows.loc[SECOND, "rouge1_f1"]
    validity = metadata_of(scored, "validity", "judge_validity")
    assert np.allclose(board["judge_logprob_validity_auc"], validity["logprob_auc"])
    compared = board[board["model"] != "extractive"]
    comparisons = compared["judge_expected_comparisons"]
    assert comparisons.tolist() == [3 + 2, 3 + 2, 2 + 2]  # questions both models answered, over both rivals
    wins = compared[["judge_expected_wins", "judge_expected_ties", "judge_expected_losses"]].sum(axis=1)
    assert (wins == comparisons).all()
    assert rows.loc[RAG, "retrieval_k"] == 4 and rows.loc[RAG, "retrieval_chunk_hit_at_1"] >= 0
    assert rows[["retrieval_chunk_mrr"]].drop(RAG).isna().all().all()  # retrieval is RAG's alone

    data = scored["data"]
    on_disk = pd.read_parquet(data / "leaderboard.parquet")
    assert [model for model in on_disk["model"] if model != "extractive"] == KEYS
    csv = pd.read_csv(data / "leaderboard.csv")
    assert csv["model"].tolist() == board["model"].tolist()
    assert np.allclose(csv["rouge1_f1"], board["rouge1_f1"], equal_nan=True)
    metadata = metadata_of(scored, "leaderboard", "leaderboard")
    table1, table2 = metadata["table1_rouge"], metadata["table2_judge"]
    assert all(c in table1.splitlines()[0] for c in ("n_epochs", "batch_size", "learning_rate_multiplier", "rouge2_f1"))
    assert all(c in table2.splitlines()[0] for c in ("judge_expected_wins", "judge_direct_ties", "validity_auc"))
    assert len(table1.splitlines()) == 2 + len(board)  # header, rule, one line per model (extractive too)
    assert metadata["plot_metrics_vs_lr"].startswith("![metrics vs learning-rate multiplier](data:image/png;base64,")
    assert metadata["plot_judge_distributions"].startswith("![judge score distributions](data:image/png;base64,")
    for path in metadata["plot_files"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(path).parent == data / "reports"
    assert metadata["answers_missing"] == 1 and metadata["models_without_scores"] == ["extractive"]  # not run here


def test_leaderboard_table_counts_missing_answers_and_averages_the_rest():
    scores = pd.DataFrame(
        {
            "qa_id": ["a", "b", "c", "a", "b", "c"],
            "model": ["x", "x", "x", "y", "y", "y"],
            "answered": [True, True, False, True, True, True],
            "rouge1_f1": [0.2, 0.4, math.nan, 0.5, 0.5, 0.5],
            "judge_expected": [9.0, 5.0, math.nan, 5.0, 5.2, 1.0],
        }
    )
    board, pairwise = leaderboard_table(scores, EvalSettings(bootstrap_resamples=50), models=["x", "y", "z"])
    rows = board.set_index("model")
    assert rows.loc["x", ["n_questions", "n_answered", "n_missing"]].tolist() == [3, 2, 1]
    assert rows.loc["x", "rouge1_f1"] == pytest.approx(0.3) and rows.loc["y", "rouge1_f1"] == pytest.approx(0.5)
    assert rows.loc["z", "n_questions"] == 0 and pd.isna(rows.loc["z", "rouge1_f1"])  # no scores yet: a blank row
    table = pairwise["judge_expected"].iloc[0]
    assert (table["n"], table["wins_a"], table["wins_b"], table["ties"]) == (2, 1, 0, 1)  # 9 vs 5; 5 vs 5.2 ties
    assert rows.loc["x", "judge_expected_wins"] == 1 and rows.loc["y", "judge_expected_losses"] == 1


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
