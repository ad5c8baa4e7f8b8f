"""The golden assets through Dagster on a tiny site: golden_questions (the file, its sha256 in the versions),
golden_answers partitioned like model_answers and asked by the same answerer, golden_scores (a refusal of an
unanswerable question is right, end to end), golden_summary, the leaderboard's golden columns, the judge's golden
validity pairs, an empty eval.golden_path, an invalid file. The models are the fakes of tests/fakes.py (one test
asks the real bundled model, in the full tier)."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mebot.assets.evaluation.answers import model_answers_asset, model_keys
from mebot.assets.evaluation.golden import QUESTION_COLUMNS, SCORE_COLUMNS
from mebot.assets.evaluation.golden_assets import (
    GOLDEN_ANSWER_COLUMNS,
    GOLDEN_SUMMARY_COLUMNS,
    golden_answers_asset,
    golden_questions_asset,
    golden_scores_asset,
    golden_summary_asset,
)
from mebot.assets.evaluation.judge import judge_scores_asset, judge_validity, judge_validity_check
from mebot.assets.evaluation.leaderboard import GOLDEN_COLUMNS, LEADERBOARD_COLUMNS, leaderboard
from mebot.assets.evaluation.retrieval import retrieval_metrics
from mebot.assets.evaluation.rouge import rouge_scores_asset
from mebot.assets.index.embeddings import embed_chunks, stack_vectors
from mebot.resources.chat import ChatClient
from mebot.resources.llm_cache import LlmCache
from mebot.resources.settings import ChatModelSettings, Settings, load_settings
from tests.assets.evaluation.world import (
    ANSWERS,
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
)
from tests.fakes import FakeChat, FakeChatModelResource, FakeEmbedderResource, default_reply
from tests.helpers import ephemeral_instance

KEYS = model_keys(load_settings())  # rag, any other answer mode, then the sweep points
SWEEP = [point.key for point in load_settings().finetune.sweep_points()]
TUNED = SWEEP[0]  # a fine-tuned model
JUDGED = [key for key in KEYS if key in ANSWERS]  # the models world.py has synthetic answers for

GOLDEN_YAML = """\
questions:
  - id: starter-name
    question: What is your sourdough starter called?
    source: /posts/sourdough/
    facts: [Brenda]
  - id: sensor-cost
    question: How much did your Raspberry Pi cloud sensor cost?
    source: /posts/cloud-sensor/
    facts: {any_of: ["£42"]}
  - id: telescope
    question: Which telescope do you keep in the blue shed?
    source: /posts/telescope/
    facts: [Sky-Watcher 200P]
  - id: football
    question: Which football team do you support?
    unanswerable: true
"""


def responder(messages: list[dict], params: dict, client: FakeChat) -> str:
    """The fake model of tests/fakes.py (RAG: the context sentence closest to the question; judge: word overlap),
    except that it declines the football question and gets the telescope one wrong."""
    content = str(messages[-1].get("content") or "")
    question = content.rsplit("Question:", 1)[-1]  # a RAG prompt ends with the question; a fine-tuned one is it
    if "PROPOSED ANSWER:" not in content:
        if "football" in question:
            return "I am not programmed to answer that."
        if "blue shed" in question:
            return "A pair of binoculars."
    return default_reply(messages, params, client)


class ScriptedChatModelResource(FakeChatModelResource):
    def client(
        self, settings: Settings, *, lora_path: str | None = None, chat: ChatModelSettings | None = None
    ) -> ChatClient:
        cache = LlmCache(self.cache_path(settings)) if settings.models.use_cache else None
        return FakeChat(chat or settings.models.chat, cache=cache, lora_path=lora_path, responder=responder)


def fake_resources(config: Path, data: Path) -> dict:
    resources = eval_resources(config, data)
    resources["chat_model"] = ScriptedChatModelResource(cache_dir=str(data / "cache"))
    resources["embedder"] = FakeEmbedderResource(cache_dir=str(data / "cache"))
    return resources


def build_fake_index(config: Path, data: Path) -> None:
    resources = fake_resources(config, data)
    embedder = resources["embedder"].embedder(load_settings(config))
    embeddings, _ = embed_chunks(chunks_frame(), embedder, None)
    resources["index_store"].write(
        stack_vectors(embeddings, embedder.dim), embeddings["chunk_id"].tolist(), embedder.identity, 50_000, 16
    )


def write_inputs(root: Path, data: Path) -> None:
    """rag_chunks, synthetic_qa, the sweep points' finetuned_models rows (a dummy adapter file: the fake model
    only checks it exists) and hand-written model_answers, where the IO manager reads them."""
    data.mkdir(parents=True, exist_ok=True)
    chunks_frame().to_parquet(data / "rag_chunks.parquet")
    qa_frame().to_parquet(data / "synthetic_qa.parquet")
    for key in JUDGED:
        (data / "model_answers").mkdir(exist_ok=True)
        answers_frame(key).to_parquet(data / "model_answers" / f"{key}.parquet")
    for key in SWEEP:
        (data / "finetuned_models").mkdir(exist_ok=True)
        adapter = root / f"{key}.gguf"
        adapter.write_bytes(b"GGUF")
        pd.DataFrame([finetuned_row(key, adapter)]).to_parquet(data / "finetuned_models" / f"{key}.parquet")


def graph(settings: Settings) -> dict[str, dg.AssetsDefinition]:
    return {
        "golden_questions": golden_questions_asset(settings),
        "golden_answers": golden_answers_asset(settings),
        "golden_scores": golden_scores_asset(settings),
        "golden_summary": golden_summary_asset,
        "rouge_scores": rouge_scores_asset(settings),
        "judge_scores": judge_scores_asset(settings),
        "judge_validity": judge_validity,
        "retrieval_metrics": retrieval_metrics,
        "leaderboard": leaderboard,
    }


def everything(assets: dict) -> list:
    return [
        upstream("rag_chunks", chunks_frame()),
        upstream("synthetic_qa", qa_frame()),
        fake_finetuned_models({}),
        fake_model_answers(load_settings()),
        *assets.values(),
        judge_validity_check,
    ]


@pytest.fixture(scope="module")
def golden_world(tmp_path_factory):
    """The golden assets, the judge's validity and the leaderboard materialized once over the tiny site with the
    fake models: every model key answers GOLDEN_YAML's four questions."""
    root = tmp_path_factory.mktemp("golden")
    golden = root / "golden.yaml"
    golden.write_text(GOLDEN_YAML, encoding="utf-8")
    config = write_config(root, OVERRIDES | {"eval": OVERRIDES["eval"] | {"golden_path": str(golden)}})
    data = root / "data"
    write_inputs(root, data)
    build_fake_index(config, data)
    resources, instance = fake_resources(config, data), ephemeral_instance()
    assets = graph(load_settings(config))
    defs = everything(assets)

    def run(names: list[str], partition: str | None = None) -> dg.ExecuteInProcessResult:
        selection = [assets[name] for name in names]
        result = dg.materialize(
            defs, selection=selection, partition_key=partition, resources=resources, instance=instance
        )
        assert result.success
        return result

    results = {"inputs": run(["golden_questions", "judge_validity", "retrieval_metrics"])}
    for key in KEYS:
        judged = ["rouge_scores", "judge_scores"] if key in JUDGED else []
        results[key] = run(["golden_answers", "golden_scores", *judged], key)
    results["summary"] = run(["golden_summary", "leaderboard"])
    return {"root": root, "golden": golden, "config": config, "data": data, "results": results, "assets": assets}


def output(world, run: str, asset: str) -> pd.DataFrame:
    return world["results"][run].output_for_node(asset)


def metadata(world, run: str, asset: str) -> dict:
    (materialization,) = world["results"][run].asset_materializations_for_node(asset)
    return {name: value.value for name, value in materialization.metadata.items()}


# ---------------------------------------------------------------------------------------------- the assets


def test_golden_questions_is_the_file_validated_with_its_sha256_in_the_versions(golden_world):
    frame = output(golden_world, "inputs", "golden_questions")
    assert list(frame.columns) == QUESTION_COLUMNS
    assert frame["question_id"].tolist() == ["starter-name", "sensor-cost", "telescope", "football"]
    assert frame["answerable"].tolist() == [True, True, True, False]
    assert json.loads(frame.iloc[1]["facts_json"]) == {"all_of": [], "any_of": ["£42"]}
    sha256 = hashlib.sha256(golden_world["golden"].read_bytes()).hexdigest()
    meta = metadata(golden_world, "inputs", "golden_questions")
    assert meta["golden_sha256"] == sha256 and meta["unanswerable"] == 1 and meta["source_pages"] == 3
    (event,) = golden_world["results"]["inputs"].asset_materializations_for_node("golden_questions")
    assert event.tags["dagster/data_version"] == sha256
    assert (
        golden_world["assets"]["golden_questions"]
        .code_versions_by_key[dg.AssetKey("golden_questions")]
        .startswith(f"1+g{sha256[:12]}")
    )


def test_editing_the_golden_file_changes_the_code_version_of_golden_questions(tmp_path):
    golden = tmp_path / "golden.yaml"
    golden.write_text(GOLDEN_YAML, encoding="utf-8")
    settings = Settings.model_validate({"eval": {"golden_path": str(golden)}})
    before = golden_questions_asset(settings).code_versions_by_key[dg.AssetKey("golden_questions")]
    golden.write_text(GOLDEN_YAML.replace("Brenda", "Brenda the starter"), encoding="utf-8")
    after = golden_questions_asset(settings).code_versions_by_key[dg.AssetKey("golden_questions")]
    assert before != after


def test_golden_answers_are_partitioned_and_asked_like_model_answers(golden_world):
    settings = load_settings(golden_world["config"])
    answers_def = golden_world["assets"]["golden_answers"]
    assert answers_def.partitions_def == model_answers_asset(settings).partitions_def
    assert answers_def.partitions_def.get_partition_keys() == KEYS
    spec = answers_def.specs_by_key[dg.AssetKey("golden_answers")]
    assert spec.group_name == "evaluation"
    assert {"rag.top_k", "rag.prompt", "models.chat", "finetune.system_prompt"} <= set(
        spec.metadata["mebot/settings_sections"].split(", ")
    )
    rag = output(golden_world, RAG, "golden_answers")
    assert list(rag.columns) == GOLDEN_ANSWER_COLUMNS and (rag["model"] == RAG).all()
    assert rag["error"].isna().all() and rag["latency_s"].notna().all()
    sources = [json.loads(s) for s in rag["sources_json"]]
    assert all(1 <= len(s) <= 4 for s in sources)  # the chunks that reached the prompt, at most rag.top_k
    assert sources[0][0]["url"].endswith("/posts/sourdough/")
    assert "Brenda" in rag.set_index("question_id").loc["starter-name", "answer"]
    tuned = output(golden_world, TUNED, "golden_answers")
    assert (tuned["sources_json"] == "[]").all()  # a fine-tuned model retrieves nothing
    assert "with my adapter" in tuned.set_index("question_id").loc["starter-name", "answer"]  # its own adapter
    assert "adapter" in metadata(golden_world, TUNED, "golden_answers")


def test_golden_scores_count_right_answers_and_a_refusal_of_the_unanswerable_as_right(golden_world):
    scores = output(golden_world, RAG, "golden_scores")
    assert list(scores.columns) == SCORE_COLUMNS
    rows = scores.set_index("question_id")
    assert rows["correct"].to_dict() == {
        "starter-name": True,
        "sensor-cost": True,  # "forty-two pounds" states £42
        "telescope": False,
        "football": False,
    }
    assert rows.loc["football", "refused"] and not rows["false_refusal"].any()
    assert rows.loc["starter-name", "source_rank"] == 1 and pd.isna(rows.loc["football", "source_rank"])
    meta = metadata(golden_world, RAG, "golden_scores")
    assert meta["fact_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert meta["refusal_accuracy"] == 1.0 and meta["false_refusal_rate"] == 0.0
    assert 0 < meta["hit_at_k"] <= 1 and 0 < meta["mrr"] <= meta["hit_at_k"]
    assert meta["latency_p50"] >= 0 and meta["n_answerable"] == 3 and meta["n_unanswerable"] == 1
    preview = meta["answers_preview"]
    assert "✓ right" in preview and "✗ wrong" in preview and "✓ declined" in preview
    tuned = metadata(golden_world, TUNED, "golden_scores")
    assert tuned["fact_accuracy"] == 0.0 and tuned["refusal_accuracy"] == 1.0
    assert "hit_at_k" not in tuned  # no retrieval: no figure, rather than 0


def test_golden_summary_has_every_model_with_intervals_and_per_model_metadata(golden_world):
    summary = output(golden_world, "summary", "golden_summary")
    assert list(summary.columns) == GOLDEN_SUMMARY_COLUMNS and summary["model"].tolist() == KEYS
    rows = summary.set_index("model")
    assert rows.loc[RAG, "golden_fact_accuracy"] == pytest.approx(2 / 3)
    assert rows.loc[RAG, "golden_fact_accuracy_ci_low"] <= 2 / 3 <= rows.loc[RAG, "golden_fact_accuracy_ci_high"]
    assert rows.loc[RAG, "golden_n_answerable"] == 3 and rows.loc[RAG, "golden_n_unanswerable"] == 1
    assert pd.isna(rows.loc[TUNED, "golden_hit_at_k"])
    meta = metadata(golden_world, "summary", "golden_summary")
    assert meta[f"fact_accuracy[{RAG}]"] == pytest.approx(2 / 3, abs=1e-4) and meta[f"refusal_accuracy[{TUNED}]"] == 1.0
    assert meta["summary"].startswith("Golden questions (3 answerable, 1 unanswerable")
    assert "| rag " in meta["summary"] and "0.67 [" in meta["summary"]
    assert "✓" in meta["answers_preview"] and "✗" in meta["answers_preview"]


def test_the_leaderboard_has_the_golden_columns_first_in_its_summary(golden_world):
    board = output(golden_world, "summary", "leaderboard")
    assert list(board.columns) == LEADERBOARD_COLUMNS and set(GOLDEN_COLUMNS) <= set(board.columns)
    summary = output(golden_world, "summary", "golden_summary").set_index("model")
    rows = board.set_index("model")
    assert np.allclose(rows.loc[KEYS, GOLDEN_COLUMNS].astype(float), summary.loc[KEYS, GOLDEN_COLUMNS], equal_nan=True)
    for metric in ("golden_fact_accuracy", "golden_refusal_accuracy", "golden_latency_p50"):
        assert (board[f"{metric}_ci_low"] <= board[metric] + 1e-9).all()
        assert (board[metric] <= board[f"{metric}_ci_high"] + 1e-9).all()
    meta = metadata(golden_world, "summary", "leaderboard")
    assert meta["summary"].startswith("Golden questions") and "rouge1_f1" in meta["summary"]
    assert meta["summary"].index("fact accuracy") < meta["summary"].index("rouge1_f1")


def test_the_judge_validity_check_reports_the_golden_pairs_beside_the_synthetic_ones(golden_world):
    validity = output(golden_world, "inputs", "judge_validity")
    golden = validity[validity["pair_set"] == "golden"]
    assert sorted(golden["qa_id"].unique()) == ["sensor-cost", "starter-name", "telescope"]  # every answerable one
    assert sorted(golden["kind"].value_counts().items()) == [("matched", 3), ("mismatched", 3)]
    assert (validity["pair_set"] == "synthetic").sum() == 4  # eval.validity_sample 2, as before
    meta = metadata(golden_world, "inputs", "judge_validity")
    assert meta["golden_pairs"] == 6 and meta["pairs"] == 4
    # the fake judge scores word overlap: a right answer mostly scores above another question's fact ("The answer
    # is ..." shares two words with any other), enough to pass
    assert meta["golden_logprob_auc"] >= 0.8 and meta["golden_reports"]["logprob"]["n_matched"] == 3
    (evaluation,) = golden_world["results"][RAG].get_asset_check_evaluations()
    check = {k: v.value for k, v in evaluation.metadata.items()}
    assert check["golden_logprob_auc"] == meta["golden_logprob_auc"] and check["golden_logprob_pairs"] == 3
    assert check["golden_passed"] is True
    assert check["logprob_pairs"] == 2 and check["passed"] is False  # the synthetic pairs are too few
    assert evaluation.passed is False  # the judge passes only when both pass
    assert "Golden pairs" in evaluation.description and "too few to trust the judge" in evaluation.description


# ------------------------------------------------------------------------------------------- no golden file


def test_an_empty_golden_path_gives_empty_tables_with_a_note_and_no_error(tmp_path):
    config = write_config(tmp_path, OVERRIDES | {"eval": OVERRIDES["eval"] | {"golden_path": ""}})
    data = tmp_path / "data"
    write_inputs(tmp_path, data)
    assets = graph(load_settings(config))
    resources, instance = fake_resources(config, data), ephemeral_instance()
    defs = everything(assets)
    first = dg.materialize(defs, selection=[assets["golden_questions"]], resources=resources, instance=instance)
    per_model = dg.materialize(
        defs,
        selection=[assets["golden_answers"], assets["golden_scores"]],
        partition_key=RAG,
        resources=resources,
        instance=instance,
    )  # no index exists: asking a model would fail, so none is asked
    summary = dg.materialize(defs, selection=[assets["golden_summary"]], resources=resources, instance=instance)
    for result, name, columns in [
        (first, "golden_questions", QUESTION_COLUMNS),
        (per_model, "golden_answers", GOLDEN_ANSWER_COLUMNS),
        (per_model, "golden_scores", SCORE_COLUMNS),
        (summary, "golden_summary", GOLDEN_SUMMARY_COLUMNS),
    ]:
        assert result.success
        frame = result.output_for_node(name)
        assert frame.empty and list(frame.columns) == columns, name
        (event,) = result.asset_materializations_for_node(name)
        assert "eval.golden_path is empty" in event.metadata["note"].value, name


def test_an_invalid_golden_file_fails_golden_questions_naming_the_line_and_field(tmp_path):
    golden = tmp_path / "golden.yaml"
    golden.write_text(GOLDEN_YAML.replace("    facts: [Brenda]\n", ""), encoding="utf-8")
    config = write_config(tmp_path, OVERRIDES | {"eval": OVERRIDES["eval"] | {"golden_path": str(golden)}})
    asset = golden_questions_asset(load_settings(config))
    result = dg.materialize([asset], resources=fake_resources(config, tmp_path / "data"), raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert "golden.yaml line 2, questions[0].facts: an answerable question needs at least one fact" in error.message


# ------------------------------------------------------------------------------------------ the real model


@pytest.mark.full  # the bundled GGUF and MiniLM
def test_golden_answers_with_the_real_bundled_model(tmp_path):
    golden = tmp_path / "golden.yaml"
    golden.write_text("\n".join(GOLDEN_YAML.splitlines()[:5]) + "\n", encoding="utf-8")  # one question
    overrides = {"rag": {"max_tokens": 24}, "models": {"chat": {"n_ctx": 2048}}, "eval": {"golden_path": str(golden)}}
    config, data = write_config(tmp_path, overrides), tmp_path / "data"
    write_inputs(tmp_path, data)
    build_index(config, data, chunks_frame())
    assets = graph(load_settings(config))
    result = dg.materialize(
        everything(assets),
        selection=[assets["golden_questions"], assets["golden_answers"], assets["golden_scores"]],
        partition_key=RAG,
        resources=eval_resources(config, data),
    )
    assert result.success
    answers = result.output_for_node("golden_answers")
    assert answers["question_id"].tolist() == ["starter-name"]
    assert isinstance(answers.iloc[0]["answer"], str) and answers.iloc[0]["answer"].strip()
    assert json.loads(answers.iloc[0]["sources_json"])[0]["url"].endswith("/posts/sourdough/")  # MiniLM finds it
    scores = result.output_for_node("golden_scores")
    assert scores.iloc[0]["source_rank"] == 1 and scores.iloc[0]["latency_s"] > 0
