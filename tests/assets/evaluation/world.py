"""The evaluation tests' tiny world: four chunks of a made-up site, questions about them, hand-written answers of
every model (so what each metric must say is known), the resources, a real FAISS index and a real GGUF LoRA adapter,
and fakes of the upstream assets."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import yaml

from mebot.assets.evaluation.answers import MODEL_ANSWER_COLUMNS, model_partitions
from mebot.assets.evaluation.reports import EvalReports
from mebot.assets.finetune.dataset import sweep_partitions
from mebot.assets.index.embeddings import embed_chunks, stack_vectors
from mebot.resources.chat import ChatModelResource, bundled_gguf_path
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.lora import ModelStore
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import DEFAULT_CONFIG_PATH, Settings, SettingsResource, load_settings
from mebot.resources.vector_index import VectorIndexResource
from tests.helpers import deep_merge

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

    @dg.asset(name="finetuned_models", partitions_def=sweep_partitions_of_default_settings())
    def fake(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame([rows[context.partition_key]])

    return fake


def sweep_partitions_of_default_settings() -> dg.StaticPartitionsDefinition:
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


# rag, then the sweep points; `extractive` (no LLM, no scripted answers here) is left unmaterialized, which the
# leaderboard allows
KEYS = [key for key in model_partitions(load_settings()).get_partition_keys() if key != "extractive"]
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
FAST = {"rag": {"max_tokens": 24}, "models": {"chat": {"n_ctx": 2048}}, "eval": {"max_questions": 0}}
OVERRIDES = {
    "eval": {"max_questions": 0, "validity_sample": 2, "bootstrap_resamples": 200, "golden_path": ""},
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


def fake_model_answers(settings: Settings) -> dg.AssetsDefinition:
    """`model_answers` with the partitions of `settings`, answering with ANSWERS."""

    @dg.asset(name="model_answers", partitions_def=model_partitions(settings))
    def fake(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return answers_frame(context.partition_key)

    return fake


def output_of(scored, key: str, asset: str) -> pd.DataFrame:
    return scored["results"][key].output_for_node(asset)


def metadata_of(scored, key: str, asset: str) -> dict:
    (materialization,) = scored["results"][key].asset_materializations_for_node(asset)
    return {name: value.value for name, value in materialization.metadata.items()}
