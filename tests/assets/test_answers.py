"""model_answers: the rag partition (real retrieval over a real FAISS index, the real local chat model) and a
sweep partition (the bundled model with a real GGUF LoRA adapter through llama.cpp) materialized through
Dagster on tiny data; the rag partition never needs a fine-tuned model; rows the model cannot answer are
recorded; the sample of questions is the same for every model; an empty split names eval.splits."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from assets.answers import (
    MODEL_ANSWER_COLUMNS,
    RAG_MODEL,
    EmptyEvalSplitError,
    eval_questions,
    finetuned_chat_settings,
    model_answers,
)
from assets.evaluation import EvalReports
from pipeline.settings import DEFAULT_CONFIG_PATH, SettingsResource, load_settings, parse_settings
from resources.chat import ChatModelResource, bundled_gguf_path
from resources.embeddings import EmbedderResource
from resources.lora import ModelStore
from resources.parquet_io import ParquetIOManagerFactory
from resources.vector_index import VectorIndexResource
from tests.conftest import deep_merge

URL = "http://127.0.0.1:9/posts/"
CHUNKS = [
    (
        "c-sourdough",
        f"{URL}sourdough/",
        "Weekday sourdough",
        "My sourdough starter is called Brenda. I feed her rye "
        "flour every evening and bake a loaf on Wednesdays before work.",
    ),
    (
        "c-telescope",
        f"{URL}telescope/",
        "Sky-Watcher 200P review",
        "I own a Sky-Watcher 200P Dobsonian telescope. "
        "I keep it in the blue shed behind the allotment and observe comets from La Palma.",
    ),
    (
        "c-sensor",
        f"{URL}cloud-sensor/",
        "Raspberry Pi cloud sensor",
        "My Raspberry Pi cloud sensor cost forty-two "
        "pounds. It measures the sky temperature with an infrared thermometer.",
    ),
    (
        "c-bike",
        f"{URL}coast-to-coast/",
        "Coast to coast by bike",
        "I rode coast to coast by bike in four days, "
        "from St Bees to Robin Hood's Bay, on a steel touring bike called Juno.",
    ),
]
QUESTIONS = [
    ("q-brenda", "What is your sourdough starter called?", "c-sourdough", "test"),
    ("q-scope", "Which telescope do you own?", "c-telescope", "test"),
    ("q-sensor", "How much did your cloud sensor cost?", "c-sensor", "test"),
    ("q-bike", "How long did your coast to coast ride take?", "c-bike", "train"),
]
LONG_QUESTION = "Why " + "really " * 400 + "?"  # over rag.max_question_chars: the model cannot be asked


def chunks_frame() -> pd.DataFrame:
    rows = [
        {"chunk_id": cid, "url": url, "title": title, "chunk_index": 0, "text": text, "n_tokens": len(text.split())}
        for cid, url, title, text in CHUNKS
    ]
    return pd.DataFrame(rows)


def qa_frame(extra: list[tuple[str, str, str, str]] = ()) -> pd.DataFrame:
    by_id = {cid: (url, title, text) for cid, url, title, text in CHUNKS}
    rows = []
    for qa_id, question, cid, split in [*QUESTIONS, *extra]:
        url, title, text = by_id[cid]
        rows.append(
            {"qa_id": qa_id, "question": question, "answer": text, "chunk_id": cid, "url": url, "title": title}
            | {"split": split}
        )
    return pd.DataFrame(rows)


def upstream(name: str, frame: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name=name)
    def fake() -> pd.DataFrame:
        return frame

    return fake


def fake_finetuned_models(rows: dict[str, dict]) -> dg.AssetsDefinition:
    """`finetuned_models` with the real partitions, each row pointing at an adapter made by a fixture."""

    @dg.asset(name="finetuned_models", partitions_def=_sweep_partitions())
    def fake(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame([rows[context.partition_key]])

    return fake


def _sweep_partitions() -> dg.StaticPartitionsDefinition:
    from assets.finetune_data import sweep_partitions

    return sweep_partitions(load_settings())


def write_config(root: Path, overrides: dict) -> Path:
    """The project's mebot.yaml with `overrides` deep-merged in, as `root/mebot.yaml` (for module fixtures)."""
    path = root / "mebot.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()), overrides)))
    return path


def materialize_inputs(resources: dict, chunks: pd.DataFrame, qa: pd.DataFrame) -> list[dg.AssetsDefinition]:
    """Write the unpartitioned inputs (rag_chunks, synthetic_qa) once; returns them for later selections."""
    inputs = [upstream("rag_chunks", chunks), upstream("synthetic_qa", qa)]
    assert dg.materialize(inputs, resources=resources).success
    return inputs


def eval_resources(config: Path, data: Path, cache: Path | None = None) -> dict:
    cache_dir = str(cache or data / "cache")
    return {
        "settings": SettingsResource(config_path=str(config)),
        "io_manager": ParquetIOManagerFactory(base_dir=str(data)),
        "chat_model": ChatModelResource(cache_dir=cache_dir),
        "embedder": EmbedderResource(cache_dir=cache_dir),
        "index_store": VectorIndexResource(index_dir=str(data / "index")),
        "model_store": ModelStore(base_dir=str(data / "models")),
        "eval_reports": EvalReports(base_dir=str(data)),
    }


def build_index(config: Path, data: Path, chunks: pd.DataFrame) -> None:
    """A real FAISS index over the chunks' windows, as vector_index writes it."""
    from assets.index import embed_chunks, stack_vectors

    resources = eval_resources(config, data)
    embedder = resources["embedder"].embedder(load_settings(config))
    embeddings, _ = embed_chunks(chunks, embedder, None)
    resources["index_store"].write(
        stack_vectors(embeddings, embedder.dim), embeddings["chunk_id"].tolist(), embedder.identity, 50_000, 16
    )


def write_tiny_adapter(path: Path, rank: int = 4, scale: float = 0.02, seed: int = 0) -> Path:
    """A real GGUF LoRA adapter for the bundled model (small random A and B on every layer's attn_q), written the
    way resources/lora.py exports a trained one: llama.cpp loads and applies it. Training one costs a minute."""
    import gguf

    reader = gguf.GGUFReader(str(bundled_gguf_path()))
    field = reader.fields["llama.embedding_length"]
    n_embd = int(field.parts[field.data[0]][0])
    field = reader.fields["llama.block_count"]
    n_layers = int(field.parts[field.data[0]][0])
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    for layer in range(n_layers):
        writer.add_tensor(
            f"blk.{layer}.attn_q.weight.lora_a", (rng.standard_normal((rank, n_embd)) * scale).astype(np.float32)
        )
        writer.add_tensor(
            f"blk.{layer}.attn_q.weight.lora_b", (rng.standard_normal((n_embd, rank)) * scale).astype(np.float32)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def finetuned_row(key: str, adapter: Path) -> dict:
    point = {p.key: p for p in load_settings().finetune.sweep_points()}[key]
    return {"partition_key": key, "backend": "local_lora", **point.model_dump(), "adapter_path": str(adapter)}


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    return write_tiny_adapter(tmp_path_factory.mktemp("adapter") / "adapter.gguf")


FAST = {"rag": {"max_tokens": 24}, "models": {"chat": {"n_ctx": 2048}}, "eval": {"max_questions": 0}}


@pytest.fixture(scope="module")
def rag_world(tmp_path_factory):
    """(config, data): settings with short answers, and a real index over CHUNKS; shared by the module's runs
    (they write different partitions)."""
    root = tmp_path_factory.mktemp("answers")
    config, data = write_config(root, FAST), root / "data"
    build_index(config, data, chunks_frame())
    return config, data


# ------------------------------------------------------------------------------------------------- pure parts


def test_partitions_are_rag_and_every_sweep_point():
    keys = model_answers.partitions_def.get_partition_keys()
    assert keys == [RAG_MODEL, *[p.key for p in load_settings().finetune.sweep_points()]]
    spec = model_answers.specs_by_key[dg.AssetKey("model_answers")]
    assert spec.group_name == "evaluation"
    assert {"rag.top_k", "eval.max_questions", "models.chat"} <= set(
        spec.metadata["mebot/settings_sections"].split(", ")
    )
    mapping = model_answers.get_partition_mapping(dg.AssetKey("finetuned_models"))
    sweep = _sweep_partitions()

    def upstream_of(key: str) -> list[str]:
        subset = model_answers.partitions_def.subset_with_partition_keys([key])
        result = mapping.get_upstream_mapped_partitions_result_for_partitions(
            subset, model_answers.partitions_def, sweep
        )
        return sorted(result.partitions_subset.get_partition_keys())

    assert upstream_of(RAG_MODEL) == []  # rag waits for no fine-tuning
    assert all(upstream_of(key) == [key] for key in sweep.get_partition_keys())


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
    instance = dg.DagsterInstance.ephemeral()
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
    first, second = _sweep_partitions().get_partition_keys()[:2]
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
