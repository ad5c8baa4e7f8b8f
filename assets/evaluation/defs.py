"""The `evaluation` group's assets and checks."""

import dagster as dg

from mebot.assets.evaluation.answers import model_answers_asset
from mebot.assets.evaluation.external import external_evaluation
from mebot.assets.evaluation.golden_assets import (
    golden_answers_asset,
    golden_questions_asset,
    golden_scores_asset,
    golden_summary_asset,
)
from mebot.assets.evaluation.judge import judge_scores_asset, judge_validity, judge_validity_check
from mebot.assets.evaluation.leaderboard import leaderboard
from mebot.assets.evaluation.retrieval import retrieval_metrics
from mebot.assets.evaluation.rouge import rouge_scores_asset
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """The per-model assets (model_answers, rouge_scores, judge_scores, golden_answers, golden_scores) have one
    partition per model of `settings`: `rag` and every point of finetune.sweep. golden_questions' code version
    carries the golden file's sha256 (eval.golden_path) as `settings` were read."""
    return [
        model_answers_asset(settings),
        golden_questions_asset(settings),
        golden_answers_asset(settings),
        golden_scores_asset(settings),
        golden_summary_asset,
        rouge_scores_asset(settings),
        judge_scores_asset(settings),
        judge_validity,
        judge_validity_check,
        retrieval_metrics,
        leaderboard,
        external_evaluation,
    ]
