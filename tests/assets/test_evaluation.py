"""The evaluation assets through Dagster on tiny data: rouge_scores, judge_scores (the real local judge, both
methods), the judge_validity check, retrieval_metrics (a real FAISS index), the leaderboard over rag + every
sweep point (missing answers counted, CSV and plots written), and external_evaluation (bring-your-own files).

The answers are written by hand (model_answers is tested in test_answers.py), so what each metric must say is
known; the judge is the bundled SmolLM2, whose scores are whatever they are: the tests check they are recorded,
not that they are good (judge_validity says how good)."""

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets import metrics
from assets.answers import MODEL_ANSWER_COLUMNS, model_partitions
from assets.evaluation import (
    EXTERNAL_SCORE_COLUMNS,
    JUDGE_SCORE_COLUMNS,
    LEADERBOARD_COLUMNS,
    ROUGE_SCORE_COLUMNS,
    embed_texts,
    external_evaluation,
    judge_answers,
    judge_one,
    judge_scores,
    judge_summary,
    judge_validity,
    judge_validity_check,
    leaderboard,
    leaderboard_table,
    retrieval_metrics,
    rouge_scores,
    validity_pairs,
    validity_reports,
)
from pipeline.settings import EvalSettings, Settings, load_settings
from resources.chat import BudgetExceeded, ChatProviderError, ChatResult
from resources.embeddings import build_embedder
from tests.assets.test_answers import (
    build_index,
    chunks_frame,
    eval_resources,
    fake_finetuned_models,
    finetuned_row,
    qa_frame,
    upstream,
    write_config,
)

KEYS = model_partitions(load_settings()).get_partition_keys()
RAG, FIRST, SECOND = KEYS[0], KEYS[1], KEYS[2]
REFERENCES = qa_frame().set_index("qa_id")["answer"].to_dict()
# qa_id -> answer, per model; None: the model failed on that question (error set).
ANSWERS = {
    RAG: {
        "q-brenda": REFERENCES["q-brenda"],  # word for word: ROUGE 1
        "q-scope": "I own a Sky-Watcher 200P Dobsonian telescope.",
        "q-sensor": "The cloud sensor cost forty-two pounds.",
    },
    FIRST: {
        "q-brenda": "My starter is Brenda and I feed her rye flour.",
        "q-scope": "A small refractor.",
        "q-sensor": "About forty pounds.",
    },
    SECOND: {"q-brenda": "I like bread.", "q-scope": "I do not know.", "q-sensor": None},
}
OVERRIDES = {
    "eval": {"max_questions": 0, "validity_sample": 2, "bootstrap_resamples": 200},
    "models": {"judge": {"n_ctx": 2048}},
}


def answers_frame(model: str) -> pd.DataFrame:
    qa = qa_frame().set_index("qa_id")
    rows = []
    for qa_id, answer in ANSWERS[model].items():
        rows.append(
            {
                "qa_id": qa_id,
                "model": model,
                "question": qa.loc[qa_id, "question"],
                "reference": qa.loc[qa_id, "answer"],
                "answer": answer,
                "sources": "[]",
                "source_url": qa.loc[qa_id, "url"],
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "latency_s": 0.1,
                "cached": False,
                "error": None if answer is not None else "ModelOutputError: empty answer",
            }
        )
    return pd.DataFrame(rows, columns=MODEL_ANSWER_COLUMNS)


@dg.asset(name="model_answers", partitions_def=model_partitions(load_settings()))
def fake_model_answers(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return answers_frame(context.partition_key)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Everything materialized once: the evaluation assets over inputs and answers written straight to where the
    IO manager reads them (the fakes are definitions only, never run: each run costs seconds)."""
    root = tmp_path_factory.mktemp("evaluation")
    config, data = write_config(root, OVERRIDES), root / "data"
    build_index(config, data, chunks_frame())
    resources = eval_resources(config, data)
    instance = dg.DagsterInstance.ephemeral()
    chunks_frame().to_parquet(data / "rag_chunks.parquet")
    qa_frame().to_parquet(data / "synthetic_qa.parquet")
    for key in KEYS:
        (data / "model_answers").mkdir(exist_ok=True)
        answers_frame(key).to_parquet(data / "model_answers" / f"{key}.parquet")
        if key != RAG:
            (data / "finetuned_models").mkdir(exist_ok=True)
            row = finetuned_row(key, root / f"{key}.gguf")
            pd.DataFrame([row]).to_parquet(data / "finetuned_models" / f"{key}.parquet")
    everything = [
        upstream("rag_chunks", chunks_frame()),
        upstream("synthetic_qa", qa_frame()),
        fake_finetuned_models({}),
        fake_model_answers,
        rouge_scores,
        judge_scores,
        judge_validity,
        judge_validity_check,
        retrieval_metrics,
        leaderboard,
    ]

    def run(selection: list, partition: str | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            everything, selection=selection, partition_key=partition, resources=resources, instance=instance
        )
        assert result.success
        return result

    results = {"validity": run([judge_validity, retrieval_metrics])}
    for key in KEYS:
        results[key] = run([rouge_scores, judge_scores], key)
    results["leaderboard"] = run([leaderboard])
    return {"config": config, "data": data, "results": results, "resources": resources}


def _output(scored, key: str, asset: str) -> pd.DataFrame:
    return scored["results"][key].output_for_node(asset)


def _metadata(scored, key: str, asset: str) -> dict:
    (materialization,) = scored["results"][key].asset_materializations_for_node(asset)
    return {name: value.value for name, value in materialization.metadata.items()}


# ------------------------------------------------------------------------------------------------ per model


def test_rouge_scores_per_row_with_similarity_and_missing_answers_left_out(scored):
    rag = _output(scored, RAG, "rouge_scores").set_index("qa_id")
    assert list(_output(scored, RAG, "rouge_scores").columns) == ROUGE_SCORE_COLUMNS
    exact = rag.loc["q-brenda"]
    assert exact["rouge1_f1"] == pytest.approx(1.0) and exact["rougeL_f1"] == pytest.approx(1.0)
    assert exact["similarity"] == pytest.approx(1.0, abs=1e-4)
    first = _output(scored, FIRST, "rouge_scores").set_index("qa_id")
    assert 0 < first.loc["q-brenda", "rouge1_f1"] < 1
    assert first.loc["q-brenda", "similarity"] > first.loc["q-scope", "similarity"]  # Brenda vs. a refractor
    second = _output(scored, SECOND, "rouge_scores").set_index("qa_id")
    assert not second.loc["q-sensor", "answered"]
    assert second.loc["q-sensor", [*metrics.ROUGE_COLUMNS, "similarity"]].isna().all()  # missing, not zero
    for key in KEYS:  # numeric metadata on every partition: the UI's Plots tab compares them
        metadata = _metadata(scored, key, "rouge_scores")
        assert isinstance(metadata["rouge1_f1_mean"], float) and isinstance(metadata["similarity_mean"], float)
        assert metadata["rouge_stemmer"] is True and metadata["rouge_tokenizer"] == "default"
    assert (
        _metadata(scored, RAG, "rouge_scores")["rouge1_f1_mean"]
        > _metadata(scored, SECOND, "rouge_scores")["rouge1_f1_mean"]
    )
    assert _metadata(scored, SECOND, "rouge_scores")["missing"] == 1


def test_judge_scores_record_both_methods_with_the_real_local_judge(scored):
    frame = _output(scored, RAG, "judge_scores")
    assert list(frame.columns) == JUDGE_SCORE_COLUMNS and len(frame) == 3
    assert frame["judge_error"].isna().all()
    assert (frame["logprob_method"] == "logprob").all()  # llama.cpp gives logprobs
    for text, expected in zip(frame["judge_distribution_json"], frame["judge_expected"], strict=True):
        distribution = {int(k): v for k, v in json.loads(text).items()}
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-4)
        assert expected == pytest.approx(sum(k * p for k, p in distribution.items()), abs=1e-3)
        assert 0 <= expected <= 10
    assert (frame["judge_valid_mass"] > 0).all() and (frame["judge_valid_mass"] <= 1 + 1e-9).all()
    assert frame["judge_direct_text"].notna().all()  # the direct method ran on every row
    parsed = frame["judge_direct"].dropna()
    assert ((parsed >= 0) & (parsed <= 10)).all()
    metadata = _metadata(scored, RAG, "judge_scores")
    assert metadata["direct_unparseable"] == int(frame["judge_direct"].isna().sum())
    assert metadata["judge_expected_mean"] == pytest.approx(round(frame["judge_expected"].mean(), 4))
    assert metadata["judge_errors"] == 0 and "SmolLM2" in metadata["judge_model"]
    missing = _output(scored, SECOND, "judge_scores").set_index("qa_id").loc["q-sensor"]
    assert not missing["answered"] and pd.isna(missing["judge_expected"]) and pd.isna(missing["judge_direct_text"])


def test_judge_validity_judges_references_against_themselves_and_others_and_the_check_warns(scored):
    validity = scored["results"]["validity"].output_for_node("judge_validity")
    assert sorted(validity["kind"].value_counts().items()) == [("matched", 2), ("mismatched", 2)]
    mismatched = validity[validity["kind"] == "mismatched"]
    assert (mismatched["qa_id"] != mismatched["other_qa_id"]).all()
    matched = validity[validity["kind"] == "matched"]
    assert (matched["qa_id"] == matched["other_qa_id"]).all()
    assert validity["judge_expected"].notna().all()
    metadata = _metadata(scored, "validity", "judge_validity")
    # Two pairs a side are too few to trust any judge (MIN_VALIDITY_PAIRS): it cannot pass, whatever its AUC.
    assert 0 <= metadata["logprob_auc"] <= 1 and metadata["logprob_passed"] is False

    (evaluation,) = scored["results"][RAG].get_asset_check_evaluations()
    assert evaluation.check_name == "judge_validity" and evaluation.asset_key == dg.AssetKey("judge_scores")
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    check = {k: v.value for k, v in evaluation.metadata.items()}
    assert check["logprob_auc"] == pytest.approx(metadata["logprob_auc"])
    assert {"logprob_accuracy", "logprob_mean_matched", "logprob_mean_mismatched", "direct_auc"} <= set(check)
    assert check["logprob_pairs"] == 2 and evaluation.passed is False
    assert "too few to trust the judge" in evaluation.description


def test_retrieval_metrics_rank_each_questions_known_source(scored):
    frame = scored["results"]["validity"].output_for_node("retrieval_metrics").set_index("qa_id")
    assert sorted(frame.index) == ["q-brenda", "q-scope", "q-sensor"]  # the test split
    assert frame.loc["q-brenda", "chunk_rank"] == 1 and frame.loc["q-brenda", "page_rank"] == 1
    assert (frame["k"] == 4).all()
    assert [r["chunk_id"] for r in json.loads(frame.loc["q-sensor", "retrieved_json"])][0] == "c-sensor"
    metadata = _metadata(scored, "validity", "retrieval_metrics")
    ranks = frame["chunk_rank"].astype(float)
    assert metadata["chunk_hit_at_1"] == pytest.approx(float((ranks == 1).mean()))
    assert metadata["chunk_mrr"] == pytest.approx(float((1 / ranks).mean()))
    assert metadata["k"] == 4


# ----------------------------------------------------------------------------------------------- leaderboard


def test_leaderboard_has_rag_and_every_sweep_point_with_intervals_validity_wins_and_counts(scored):
    board = _output(scored, "leaderboard", "leaderboard")
    assert list(board.columns) == LEADERBOARD_COLUMNS
    assert board["model"].tolist() == KEYS  # rag, then every sweep point
    rows = board.set_index("model")
    assert rows.loc[RAG, "backend"] == "rag" and pd.isna(rows.loc[RAG, "n_epochs"])
    point = {p.key: p for p in Settings().finetune.sweep_points()}[FIRST]
    assert rows.loc[FIRST, "backend"] == "local_lora"
    assert rows.loc[FIRST, "learning_rate_multiplier"] == point.learning_rate_multiplier
    assert rows.loc[FIRST, "n_epochs"] == point.n_epochs and rows.loc[FIRST, "lora_r"] == point.lora_r
    assert rows.loc[SECOND, ["n_questions", "n_answered", "n_missing"]].tolist() == [3, 2, 1]
    rouge = _output(scored, SECOND, "rouge_scores")
    assert rows.loc[SECOND, "rouge1_f1"] == pytest.approx(rouge["rouge1_f1"].dropna().mean())  # on the rest
    for metric in ("rouge1_f1", "similarity", "judge_expected"):
        assert (board[f"{metric}_ci_low"] <= board[metric] + 1e-9).all()
        assert (board[metric] <= board[f"{metric}_ci_high"] + 1e-9).all()
    assert rows.loc[RAG, "rouge1_f1"] > rows.loc[SECOND, "rouge1_f1"]
    validity = _metadata(scored, "validity", "judge_validity")
    assert np.allclose(board["judge_logprob_validity_auc"], validity["logprob_auc"])
    comparisons = board["judge_expected_comparisons"]
    assert comparisons.tolist() == [3 + 2, 3 + 2, 2 + 2]  # questions both models answered, over both rivals
    wins = board[["judge_expected_wins", "judge_expected_ties", "judge_expected_losses"]].sum(axis=1)
    assert (wins == comparisons).all()
    assert rows.loc[RAG, "retrieval_k"] == 4 and rows.loc[RAG, "retrieval_chunk_hit_at_1"] >= 0
    assert rows[["retrieval_chunk_mrr"]].drop(RAG).isna().all().all()  # retrieval is RAG's alone

    data = scored["data"]
    on_disk = pd.read_parquet(data / "leaderboard.parquet")
    assert on_disk["model"].tolist() == KEYS
    csv = pd.read_csv(data / "leaderboard.csv")
    assert csv["model"].tolist() == KEYS and np.allclose(csv["rouge1_f1"], board["rouge1_f1"])
    metadata = _metadata(scored, "leaderboard", "leaderboard")
    table1, table2 = metadata["table1_rouge"], metadata["table2_judge"]
    assert all(c in table1.splitlines()[0] for c in ("n_epochs", "batch_size", "learning_rate_multiplier", "rouge2_f1"))
    assert all(c in table2.splitlines()[0] for c in ("judge_expected_wins", "judge_direct_ties", "validity_auc"))
    assert len(table1.splitlines()) == 2 + len(KEYS)
    assert metadata["plot_metrics_vs_lr"].startswith("![metrics vs learning-rate multiplier](data:image/png;base64,")
    assert metadata["plot_judge_distributions"].startswith("![judge score distributions](data:image/png;base64,")
    for path in metadata["plot_files"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(path).parent == data / "reports"
    assert metadata["answers_missing"] == 1 and metadata["models_without_scores"] == []


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


# ------------------------------------------------------------------------------------ judge: provider contract


class RecordedProvider:
    """Contract stand-in for a provider that returns no logprobs (no offline OpenAI-compatible server omits
    them) or fails on some calls; replies are ChatResults as ChatClient returns them."""

    def __init__(self, replies: list):
        self.replies = list(replies)
        self.calls: list[dict] = []

    def complete(self, messages: list[dict], **params) -> ChatResult:
        self.calls.append(params)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return ChatResult(reply, 20, 1, "stop", "recorded", None, False, 0.0)


def test_contract_a_provider_without_logprobs_falls_back_to_the_direct_score():
    provider = RecordedProvider(["7"])
    verdict = judge_one(provider, [{"role": "user", "content": "rate"}], ["logprob", "direct"])
    assert len(provider.calls) == 1  # one call serves both methods
    assert provider.calls[0]["logprobs"] is True and provider.calls[0]["top_logprobs"] == 20
    assert (verdict.logprob_method, verdict.expected, verdict.direct) == ("direct_fallback", 7.0, 7.0)


def test_contract_a_failing_or_unparseable_judgement_is_null_and_counted_and_the_budget_still_stops():
    answers = pd.DataFrame(
        {
            "qa_id": ["a", "b", "c"],
            "model": "m",
            "question": "Q?",
            "reference": "R",
            "answer": ["A", "A", "A"],
            "error": None,
        }
    )
    provider = RecordedProvider([ChatProviderError("HTTP 500 after 5 retries"), "no idea", "8"])
    frame = judge_answers(provider, answers, EvalSettings().judge_prompt, ["direct"])
    assert frame["judge_error"].tolist()[0].startswith("ChatProviderError") and frame["judge_error"][1:].isna().all()
    assert pd.isna(frame.loc[1, "judge_direct"]) and frame.loc[2, "judge_direct"] == 8.0
    summary = judge_summary(frame)
    assert (summary["judge_errors"], summary["direct_unparseable"], summary["judged"]) == (1, 1, 3)
    with pytest.raises(BudgetExceeded):
        judge_answers(RecordedProvider([BudgetExceeded("cap")]), answers[:1], EvalSettings().judge_prompt, ["direct"])


def test_similarity_embeds_a_text_longer_than_the_model_reads_without_truncating_it():
    embedder = build_embedder(Settings().models.embedding)
    filler = "The allotment shed holds tools, seed trays and an old radio. " * 60
    long_text = filler + "My sourdough starter is called Brenda."
    assert embedder.count_tokens([long_text])[0] > embedder.max_tokens
    vectors = embed_texts(embedder, None, [long_text, filler, ""])
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5) and not np.allclose(vectors[0], vectors[1])
    assert not vectors[2].any()  # an empty text: a zero vector, similarity 0


# ---------------------------------------------------------------------------------------- bring your own


EXTERNAL_LINES = [
    {
        "question": "What is your sourdough starter called?",
        "reference": "My sourdough starter is called Brenda.",
        "model": "gpt-4o",
        "answer": "My sourdough starter is called Brenda.",
        "judge_distribution": {"9": 0.25, "10": 0.75},
        "judge_direct_score": 10,
    },
    {
        "question": "What is your sourdough starter called?",
        "reference": "My sourdough starter is called Brenda.",
        "model": "my-bot",
        "answer": "I do not bake.",
        "judge_distribution": {"0": 0.5, "2": 0.5},
        "judge_direct_score": 1,
    },
    {
        "question": "Which telescope do you own?",
        "reference": "A Sky-Watcher 200P Dobsonian.",
        "model": "my-bot",
        "answer": "",
    },
]


def write_external_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "answers.jsonl").write_text("\n".join(json.dumps(line) for line in EXTERNAL_LINES[:2]) + "\n")
    pd.DataFrame([EXTERNAL_LINES[2]]).to_csv(directory / "more.csv", index=False)


def test_external_evaluation_scores_every_file_and_writes_its_own_leaderboard(tmp_path):
    config, data = write_config(tmp_path, OVERRIDES), tmp_path / "data"
    resources = eval_resources(config, data)
    empty = dg.materialize([external_evaluation], resources=resources)
    assert empty.output_for_node("external_evaluation").empty  # no files: nothing to do, not an error
    note = empty.asset_materializations_for_node("external_evaluation")[0].metadata["note"].value
    assert "no answers files" in note and str(data / "external") in note
    assert not (data / "external_leaderboard.parquet").exists()

    write_external_files(data / "external")
    result = dg.materialize([external_evaluation], resources=resources)
    scores = result.output_for_node("external_evaluation")
    assert list(scores.columns) == EXTERNAL_SCORE_COLUMNS and len(scores) == 3
    assert sorted(scores["source_file"].unique()) == ["answers.jsonl", "more.csv"]
    by_model = scores.set_index(["model", "answered"])
    gpt = by_model.loc[("gpt-4o", True)]
    assert gpt["judge_expected"] == pytest.approx(9.75) and gpt["rouge1_f1"] == pytest.approx(1.0)
    board = pd.read_parquet(data / "external_leaderboard.parquet").set_index("model")
    assert pd.read_csv(data / "external_leaderboard.csv")["model"].tolist() == ["gpt-4o", "my-bot"]
    assert board.loc["my-bot", ["n_questions", "n_answered", "n_missing"]].tolist() == [2, 1, 1]
    assert board.loc["gpt-4o", "judge_expected_wins"] == 1 and board.loc["my-bot", "judge_direct_losses"] == 1
    assert (board["backend"] == "external").all()
    metadata = result.asset_materializations_for_node("external_evaluation")[0].metadata
    assert metadata["files"].value == ["answers.jsonl", "more.csv"] and metadata["answers_missing"].value == 1


def test_validity_pairs_match_each_reference_with_itself_and_a_different_one_even_from_one_question():
    qa = qa_frame()
    test = qa[qa["split"] == "test"]
    pairs = validity_pairs(test, qa, 2, seed=0)
    assert pairs["kind"].tolist() == ["matched", "mismatched", "matched", "mismatched"]
    matched, mismatched = pairs[pairs["kind"] == "matched"], pairs[pairs["kind"] == "mismatched"]
    assert (matched["reference"] == matched["candidate"]).all()
    assert (mismatched["reference"] != mismatched["candidate"]).all()
    assert set(pairs["qa_id"]) <= set(test["qa_id"])
    assert validity_pairs(test, qa, 2, seed=0).equals(pairs)  # seeded: the same pairs every run
    # A single held-out question still gets a mismatched reference: another split's.
    only = test.iloc[:1]
    single = validity_pairs(only, qa, 6, seed=0)
    assert len(single) == 2 and single.iloc[1]["other_qa_id"] != only.iloc[0]["qa_id"]


def test_a_judge_passes_validity_only_with_a_high_auc_over_enough_pairs():
    def frame(matched: list[float], mismatched: list[float]) -> pd.DataFrame:
        kinds = ["matched"] * len(matched) + ["mismatched"] * len(mismatched)
        return pd.DataFrame({"kind": kinds, "judge_expected": matched + mismatched, "judge_direct": math.nan})

    good = validity_reports(frame([9, 8, 10], [1, 2, 0]), ["logprob", "direct"])
    assert good["logprob"]["auc"] == 1.0 and good["logprob"]["passed"] is True
    assert good["direct"]["auc"] is None and good["direct"]["passed"] is False  # no direct scores at all
    assert validity_reports(frame([9, 8], [1, 2]), ["logprob"])["logprob"]["passed"] is False  # too few pairs
    assert validity_reports(frame([3, 2, 5], [4, 3, 5]), ["logprob"])["logprob"]["passed"] is False  # AUC < 0.8
