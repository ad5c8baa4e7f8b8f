"""Fixtures of the evaluation tests: the tiny adapter and every evaluation asset materialized once (`scored`)."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.evaluation.golden_assets import golden_answers_asset, golden_questions_asset, golden_scores_asset
from mebot.assets.evaluation.judge import judge_scores_asset, judge_validity, judge_validity_check
from mebot.assets.evaluation.leaderboard import leaderboard
from mebot.assets.evaluation.retrieval import retrieval_metrics
from mebot.assets.evaluation.rouge import rouge_scores_asset
from mebot.resources.settings import load_settings
from tests.assets.evaluation.world import (
    KEYS,
    OVERRIDES,
    RAG,
    answers_frame,
    build_index,
    chunks_frame,
    eval_resources,
    fake_finetuned_models,
    fake_model_answers,
    finetuned_row,
    qa_frame,
    upstream,
    write_config,
    write_tiny_adapter,
)
from tests.helpers import ephemeral_instance


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    return write_tiny_adapter(tmp_path_factory.mktemp("adapter") / "adapter.gguf")


@pytest.fixture(scope="package")
def scored(tmp_path_factory):
    """Everything materialized once: the evaluation assets over inputs and answers written straight to where the
    IO manager reads them (the fakes are definitions only, never run: each run costs seconds)."""
    root = tmp_path_factory.mktemp("evaluation")
    config, data = write_config(root, OVERRIDES), root / "data"
    build_index(config, data, chunks_frame())
    resources = eval_resources(config, data)
    instance = ephemeral_instance()
    chunks_frame().to_parquet(data / "rag_chunks.parquet")
    qa_frame().to_parquet(data / "synthetic_qa.parquet")
    for key in KEYS:
        (data / "model_answers").mkdir(exist_ok=True)
        answers_frame(key).to_parquet(data / "model_answers" / f"{key}.parquet")
        if key != RAG:
            (data / "finetuned_models").mkdir(exist_ok=True)
            row = finetuned_row(key, root / f"{key}.gguf")
            pd.DataFrame([row]).to_parquet(data / "finetuned_models" / f"{key}.parquet")
    settings = load_settings(config)
    rouge_scores, judge_scores = rouge_scores_asset(settings), judge_scores_asset(settings)
    golden_questions = golden_questions_asset(settings)  # eval.golden_path is "" here: no golden pairs, no scores
    everything = [
        upstream("rag_chunks", chunks_frame()),
        upstream("synthetic_qa", qa_frame()),
        fake_finetuned_models({}),
        fake_model_answers(settings),
        rouge_scores,
        judge_scores,
        judge_validity,
        judge_validity_check,
        retrieval_metrics,
        golden_questions,
        golden_answers_asset(settings),
        golden_scores_asset(settings),
        leaderboard,
    ]

    def run(selection: list, partition: str | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            everything, selection=selection, partition_key=partition, resources=resources, instance=instance
        )
        assert result.success
        return result

    results = {"validity": run([golden_questions, judge_validity, retrieval_metrics])}
    for key in KEYS:
        results[key] = run([rouge_scores, judge_scores], key)
    results["leaderboard"] = run([leaderboard])
    return {"config": config, "data": data, "results": results, "resources": resources}
