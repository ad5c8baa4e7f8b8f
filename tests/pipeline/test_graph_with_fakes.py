"""The fast tier's twin of the whole-graph run (tests/test_end_to_end.py): every asset of `build_definitions()` on
the embedded sample site, materialized through Dagster into a tmp data dir, with the fake chat and embedding
models of tests/fakes.py and no LoRA training (`finetuned_models` is a stand-in pointing at adapter files). The
crawl is a real Scrapy crawl over HTTP, the index real FAISS, the checks real checks; only the models are fake,
so what each asset does with a model's output is what is tested, in seconds.

The model-facing parts (the prompt sent, the adapter used, the judge's logprobs) are asserted through what the
fakes record; the real models' behaviour stays with the full tier."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.finetune.results import FINETUNED_MODEL_COLUMNS
from mebot.pipeline.definitions import build_definitions
from mebot.pipeline.jobs import RAG_PARTITION
from mebot.resources.settings import load_settings
from tests.fakes import FakeChat, FakeChatModelResource, FakeEmbedder, FakeEmbedderResource, words
from tests.helpers import E2E_MAX_PASSAGES, ephemeral_instance, write_settings

# The sizes of the full tier's whole-graph run (tests/conftest.py default_run), on the embedded sample site.
OVERRIDES = {
    "site": {"download_delay": 0, "local_port": 0},
    "qa": {"max_passages": E2E_MAX_PASSAGES},
    "eval": {"max_questions": 2, "validity_sample": 2, "bootstrap_resamples": 50},
}


class RecordingChatResource(FakeChatModelResource):
    """FakeChatModelResource that keeps every client it made (in a class list: Dagster copies resources)."""

    def client(self, settings, *, lora_path=None, chat=None):
        made = super().client(settings, lora_path=lora_path, chat=chat)
        CLIENTS.append(made)
        return made


CLIENTS: list[FakeChat] = []


def stand_in_finetuned_models(assets_def: dg.AssetsDefinition, root: Path) -> dg.AssetsDefinition:
    """`finetuned_models` with its real key and partitions: one row per sweep point, pointing at an adapter file
    that the fake chat client only needs to exist (the real one trains a LoRA adapter: the full tier)."""

    @dg.asset(name="finetuned_models", group_name="finetune", partitions_def=assets_def.partitions_def)
    def finetuned_models(context: dg.AssetExecutionContext) -> pd.DataFrame:
        settings = load_settings(root / "mebot.yaml")
        point = {p.key: p for p in settings.finetune.sweep_points()}[context.partition_key]
        adapter = root / "adapters" / f"{point.key}.gguf"
        adapter.parent.mkdir(exist_ok=True)
        adapter.write_bytes(point.key.encode())
        row = {column: None for column in FINETUNED_MODEL_COLUMNS}
        row |= point.model_dump()
        row |= {"partition_key": point.key, "backend": "local_lora", "adapter_path": str(adapter), "model_id": ""}
        row |= {"train_loss_first": 2.0, "train_loss_final": 1.0, "val_loss_first": 2.1, "val_loss_final": 1.2}
        row |= {"train_losses_json": "[2.0, 1.0]", "val_losses_json": "[2.1, 1.2]", "steps": 2, "job_id": ""}
        return pd.DataFrame([row], columns=FINETUNED_MODEL_COLUMNS)

    return finetuned_models


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Every asset materialized once, in dependency order: (defs, data dir, results by step)."""
    CLIENTS.clear()
    root = tmp_path_factory.mktemp("graph")
    config = write_settings(root / "mebot.yaml", OVERRIDES)
    data = root / "data"
    defs = build_definitions(config, data_dir=data)
    resources = dict(defs.resources)
    resources["chat_model"] = RecordingChatResource(cache_dir=str(data / "cache"))
    resources["embedder"] = FakeEmbedderResource(cache_dir=str(data / "cache"))
    graph = defs.resolve_asset_graph()
    real = {assets_def.key.to_user_string(): assets_def for assets_def in defs.assets if assets_def.is_executable}
    everything = [a for name, a in real.items() if name != "finetuned_models"]
    everything += [stand_in_finetuned_models(real["finetuned_models"], root), *(defs.asset_checks or [])]
    instance = ephemeral_instance()

    def run(names: list[str], partition: str | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            everything,
            selection=names,
            partition_key=partition,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        failures = [e.message for e in result.all_events if e.is_failure]
        assert result.success, "\n".join(failures)
        return result

    def partitioned_with(keys_of: str) -> list[str]:
        partitions = graph.get(dg.AssetKey(keys_of)).partitions_def
        return sorted(
            key.to_user_string()
            for key in graph.get_all_asset_keys()
            if graph.get(key).partitions_def == partitions and key.to_user_string() in real
        )

    def ancestors(name: str) -> set[str]:
        found, todo = set(), [dg.AssetKey(name)]
        while todo:
            for parent in graph.get(todo.pop()).parent_keys:
                if parent.to_user_string() not in found:
                    found.add(parent.to_user_string())
                    todo.append(parent)
        return found

    def partitioned(name: str) -> bool:
        return graph.get(dg.AssetKey(name)).partitions_def is not None

    # 1. the unpartitioned assets upstream of no partitioned one; 2. each model partition (a sweep point's
    # stand-in first); 3. what sums up the partitions (leaderboard, summaries)
    first = [n for n in real if not partitioned(n) and not any(partitioned(a) for a in ancestors(n))]
    per_model = partitioned_with("model_answers")
    rest = [n for n in real if n not in first and not partitioned(n)]
    results = {"first": run(first)}
    model_keys = graph.get(dg.AssetKey("model_answers")).partitions_def.get_partition_keys()
    sweep = real["finetuned_models"].partitions_def.get_partition_keys()
    for key in model_keys:
        if key in sweep:
            results[f"finetuned_models[{key}]"] = run(["finetuned_models"], key)
        results[key] = run(per_model, key)
    results["visitor_questions"] = run(["visitor_questions"], "2026-12-01")  # one day of the (empty) visitor log
    results["rest"] = run(rest)
    return {"defs": defs, "data": data, "results": results, "model_keys": model_keys, "sweep": sweep}


def test_every_asset_of_the_graph_materializes_with_the_fake_models(graph):
    materialized = {
        event.asset_key.to_user_string()
        for result in graph["results"].values()
        for event in result.get_asset_materialization_events()
    }
    all_assets = {k.to_user_string() for k in graph["defs"].resolve_asset_graph().get_all_asset_keys()}
    external = {k for k in all_assets if not graph["defs"].resolve_asset_graph().get(dg.AssetKey(k)).is_executable}
    assert materialized == all_assets - external
    checks = {
        evaluation.check_name: evaluation.passed
        for result in graph["results"].values()
        for evaluation in result.get_asset_check_evaluations()
    }
    # the blocking checks passed (a failed one would have stopped the run); the others ran
    assert checks["rag_chunks_within_token_limit"] and checks["training_file_valid"]
    assert checks["non_empty"] and checks["no_robots_disallowed_url"]
    assert "judge_validity" in checks


def test_the_rag_answers_are_grounded_in_the_retrieved_chunks(graph):
    answers = pd.read_parquet(graph["data"] / "model_answers" / f"{RAG_PARTITION}.parquet")
    assert len(answers) == 2 and answers["error"].isna().all()
    chunks = pd.read_parquet(graph["data"] / "rag_chunks.parquet")
    sources = [json.loads(s) for s in answers["sources"]]
    for answer, found in zip(answers["answer"], sources, strict=True):
        assert found, "no source retrieved"
        # the fake model answers with a sentence of the context it was sent: every word of the answer is in the
        # chunks retrieved for the question (the prompt was filled with them, not sent bare)
        retrieved = chunks[chunks["url"].isin([s["url"] for s in found])]["text"]
        assert set(words(answer)) <= set(words(" ".join(retrieved))), answer
        assert "not programmed" not in answer
    rag_prompts = [messages[-1]["content"] for client in CLIENTS for messages, _ in client.calls]
    assert any("### Context ###" in prompt for prompt in rag_prompts)


def test_a_sweep_point_is_answered_through_its_own_adapter(graph):
    sweep = graph["sweep"]
    for key in sweep:
        answers = pd.read_parquet(graph["data"] / "model_answers" / f"{key}.parquet")
        assert len(answers) == 2 and answers["answer"].str.contains("with my adapter").all()
    adapters = {Path(c.lora_path).stem for c in CLIENTS if c.lora_path}
    assert adapters == set(sweep)


def test_synthetic_questions_come_from_the_fake_model_and_keep_their_passage(graph):
    qa = pd.read_parquet(graph["data"] / "synthetic_qa.parquet")
    assert len(qa) >= 10 and qa["question"].str.startswith("What can you tell me about").all()
    assert qa["question"].is_unique
    for row in qa.itertuples():
        words = row.question.removeprefix("What can you tell me about ").rstrip("?").split()
        assert all(word in row.answer.lower() for word in words), (row.question, row.answer[:80])


def test_the_leaderboard_ranks_every_model_with_judge_and_rouge_figures(graph):
    board = pd.read_parquet(graph["data"] / "leaderboard.parquet")
    assert set(board["model"]) == set(graph["model_keys"])
    rag = board.set_index("model").loc[RAG_PARTITION]
    # the fake judge scores by the reference's words the answer has; the grounded rag answers share some
    assert rag["n_answered"] == 2
    judge = pd.read_parquet(graph["data"] / "judge_scores" / f"{RAG_PARTITION}.parquet")
    assert judge["judge_error"].isna().all() and judge["judge_expected"].between(0, 10).all()
    assert (judge["logprob_method"] == "logprob").all()  # the fake gives logprobs, as llama.cpp does


def test_the_embedder_of_the_index_is_the_fake_one(graph):
    index_meta = graph["results"]["first"].asset_materializations_for_node("vector_index")[0].metadata
    identity = FakeEmbedder(load_settings(graph["data"].parent / "mebot.yaml").models.embedding).identity
    assert identity in json.dumps({k: str(v.value) for k, v in index_meta.items()})
