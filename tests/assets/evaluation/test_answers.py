"""model_answers: the rag partition (real retrieval over a real FAISS index, the real local chat model) and a
sweep partition (the bundled model with a real GGUF LoRA adapter through llama.cpp) materialized through
Dagster on tiny data; the rag partition never needs a fine-tuned model; rows the model cannot answer are
recorded; the sample of questions is the same for every model; an empty split names eval.splits; the partitions
are those of the settings given."""

import json

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.evaluation.answers import (
    MODEL_ANSWER_COLUMNS,
    RAG_MODEL,
    EmptyEvalSplitError,
    eval_questions,
    finetuned_chat_settings,
    model_answers_asset,
    model_keys,
)
from mebot.resources.settings import load_settings, parse_settings
from tests.assets.evaluation.world import (
    FAST,
    LONG_QUESTION,
    URL,
    build_index,
    chunks_frame,
    eval_resources,
    fake_finetuned_models,
    finetuned_row,
    materialize_inputs,
    qa_frame,
    sweep_partitions_of_default_settings,
    write_config,
)
from tests.helpers import ephemeral_instance

# The asset with the partitions of the default settings file (the tests' configs keep its sweep).
model_answers = model_answers_asset(load_settings())


@pytest.fixture(scope="module")
def rag_world(tmp_path_factory):
    """(config, data): settings with short answers, and a real index over CHUNKS; shared by the module's runs
    (they write different partitions)."""
    root = tmp_path_factory.mktemp("answers")
    config, data = write_config(root, FAST), root / "data"
    build_index(config, data, chunks_frame())
    return config, data


# ------------------------------------------------------------------------------------------------- pure parts


def test_partitions_are_rag_extractive_and_every_sweep_point():
    keys = model_answers.partitions_def.get_partition_keys()
    assert keys == [RAG_MODEL, "extractive", *[p.key for p in load_settings().finetune.sweep_points()]]
    spec = model_answers.specs_by_key[dg.AssetKey("model_answers")]
    assert spec.group_name == "evaluation"
    assert {"rag.top_k", "eval.max_questions", "models.chat"} <= set(
        spec.metadata["mebot/settings_sections"].split(", ")
    )
    mapping = model_answers.get_partition_mapping(dg.AssetKey("finetuned_models"))
    sweep = sweep_partitions_of_default_settings()

    def upstream_of(key: str) -> list[str]:
        subset = model_answers.partitions_def.subset_with_partition_keys([key])
        result = mapping.get_upstream_mapped_partitions_result_for_partitions(
            subset, model_answers.partitions_def, sweep
        )
        return sorted(result.partitions_subset.get_partition_keys())

    assert upstream_of(RAG_MODEL) == []  # rag waits for no fine-tuning
    assert all(upstream_of(key) == [key] for key in sweep.get_partition_keys())


def test_partitions_and_the_mapping_come_from_the_settings_given(make_config):
    sweep = {
        "n_epochs": [2],
        "batch_size": [1, 8],
        "learning_rate_multiplier": [1.0],
        "lora_r": [8],
        "lora_alpha": [16],
    }
    settings = load_settings(make_config({"finetune": {"sweep": sweep}}))
    asset = model_answers_asset(settings)
    expected = [RAG_MODEL, "extractive", "e2-b1-lr1", "e2-b8-lr1"]
    assert asset.partitions_def.get_partition_keys() == model_keys(settings) == expected
    mapping = asset.get_partition_mapping(dg.AssetKey("finetuned_models"))
    # each sweep point's answers wait for that point's model; rag maps to none
    assert mapping.downstream_partition_keys_by_upstream_partition_key == {
        "e2-b1-lr1": "e2-b1-lr1",
        "e2-b8-lr1": "e2-b8-lr1",
    }


def test_the_sample_of_questions_is_deterministic_and_the_same_whatever_the_row_order():
    qa = pd.DataFrame(
        {"qa_id": [f"q{i}" for i in range(20)], "question": "Q?", "answer": "A", "url": URL, "split": "test"}
    )
    first = eval_questions(qa, ["test"], 5)
    shuffled = eval_questions(qa.sample(frac=1, random_state=3), ["test"], 5)
    assert len(first) == 5 and set(first["qa_id"]) == set(shuffled["qa_id"])
    assert set(first["qa_id"]) <= set(eval_questions(qa, ["test"], 8)["qa_id"])  # growing only adds
    assert len(eval_questions(qa, ["test"], 0)) == 20


def test_an_empty_split_names_eval_splits():
    with pytest.raises(EmptyEvalSplitError, match=r"eval.splits = \['validation'\].*'test': 3"):
        eval_questions(qa_frame(), ["validation"], 0)


def test_an_openai_fine_tune_is_asked_by_its_model_id_and_a_local_one_through_its_adapter(tmp_path):
    settings = parse_settings({"models": {"chat": {"provider": "openai", "model": "gpt-4o-mini"}}})
    chat, lora = finetuned_chat_settings(settings, pd.Series({"backend": "openai", "model_id": "ft:gpt-4o-mini:me:1"}))
    assert (chat.provider, chat.model, lora) == ("openai", "ft:gpt-4o-mini:me:1", None)
    chat, lora = finetuned_chat_settings(settings, pd.Series({"backend": "local_lora", "adapter_path": "/a.gguf"}))
    assert (chat.provider, chat.gguf_path, lora) == ("llama_cpp", "", "/a.gguf")  # the adapter's own base model
    with pytest.raises(ValueError, match="no model_id"):
        finetuned_chat_settings(settings, pd.Series({"backend": "openai", "partition_key": "e1"}))


# ----------------------------------------------------------------------------------------- materializations


def test_rag_partition_answers_with_sources_and_records_a_question_it_cannot_ask(rag_world):
    config, data = rag_world
    qa = qa_frame([("q-long", LONG_QUESTION, "c-bike", "test")])
    resources = eval_resources(config, data)
    # finetuned_models is defined, but no partition of it was ever materialized: rag must not need one.
    assets = [*materialize_inputs(resources, chunks_frame(), qa), fake_finetuned_models({}), model_answers]
    instance = ephemeral_instance()
    result = dg.materialize(
        assets, selection=[model_answers], partition_key=RAG_MODEL, resources=resources, instance=instance
    )
    assert result.success
    frame = result.output_for_node("model_answers")
    assert list(frame.columns) == MODEL_ANSWER_COLUMNS
    assert sorted(frame["qa_id"]) == ["q-brenda", "q-long", "q-scope", "q-sensor"]  # test split only
    assert (frame["model"] == RAG_MODEL).all()
    answered = frame[frame["error"].isna()]
    assert len(answered) == 3 and answered["answer"].str.strip().str.len().gt(0).all()
    assert (answered["prompt_tokens"] > 0).all() and (answered["latency_s"] >= 0).all()
    brenda = answered.set_index("qa_id").loc["q-brenda"]
    sources = json.loads(brenda["sources"])
    assert sources[0]["chunk_id"] == "c-sourdough" and set(sources[0]) == {"url", "chunk_id", "score"}
    assert brenda["reference"].startswith("My sourdough starter is called Brenda")
    assert brenda["source_url"] == f"{URL}sourdough/"
    failed = frame.set_index("qa_id").loc["q-long"]
    assert failed["error"].startswith("QuestionError") and "rag.max_question_chars" in failed["error"]
    assert pd.isna(failed["answer"])
    (materialization,) = result.asset_materializations_for_node("model_answers")
    assert materialization.partition == RAG_MODEL
    metadata = materialization.metadata
    assert metadata["answered"].value == 3 and metadata["errors"].value == 1 and metadata["questions"].value == 4
    assert metadata["backend"].value == "rag"
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert [m.split(": ", 1)[1].split(" (")[0] for m in logs if " answered (" in m] == [
        f"{n}/4 answered" for n in range(1, 5)
    ]  # progress in the run's log
    assert (data / "model_answers" / "rag.parquet").is_file()


def test_sweep_partition_answers_through_its_adapter_and_a_missing_model_says_to_train_it(rag_world, tiny_adapter):
    config, data = rag_world
    first, second = sweep_partitions_of_default_settings().get_partition_keys()[:2]
    finetuned = fake_finetuned_models({first: finetuned_row(first, tiny_adapter), second: {}})
    resources = eval_resources(config, data)
    assets = [*materialize_inputs(resources, chunks_frame(), qa_frame()), finetuned, model_answers]
    assert dg.materialize(assets, selection=[finetuned], partition_key=first, resources=resources).success

    result = dg.materialize(assets, selection=[model_answers], partition_key=first, resources=resources)
    assert result.success
    frame = result.output_for_node("model_answers")
    assert list(frame.columns) == MODEL_ANSWER_COLUMNS and len(frame) == 3
    assert (frame["model"] == first).all() and frame["error"].isna().all()
    assert frame["answer"].str.strip().str.len().gt(0).all()
    assert (frame["sources"] == "[]").all()  # a fine-tuned model cites nothing
    metadata = result.asset_materializations_for_node("model_answers")[0].metadata
    assert "lora=adapter.gguf" in metadata["chat_model"].value  # llama.cpp ran it with the adapter
    assert metadata["adapter"].value == str(tiny_adapter)

    # The other sweep point was never trained: a clear error, not a crash deep inside.
    with pytest.raises(FileNotFoundError, match=rf"finetuned_models\[{second}\] is not materialized yet"):
        dg.materialize(assets, selection=[model_answers], partition_key=second, resources=resources)


def test_an_empty_eval_split_fails_the_materialization_naming_eval_splits(make_config, tmp_path):
    config = make_config({"eval": {"splits": ["validation"]}})
    resources = eval_resources(config, tmp_path / "data")
    assets = [*materialize_inputs(resources, chunks_frame(), qa_frame()), fake_finetuned_models({}), model_answers]
    with pytest.raises(EmptyEvalSplitError, match="eval.splits"):
        dg.materialize(assets, selection=[model_answers], partition_key=RAG_MODEL, resources=resources)
