"""The model registry the server and `mebot ask` answer with: which fine-tuned models it serves (local adapters and
OpenAI fine-tunes from `finetuned_models`) and which one `finetune` names (the best by serve.finetune_metric)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mebot.pipeline.server.models import (
    BEST_FINETUNE,
    ModelChoice,
    ModelRegistry,
    UnknownModelError,
    best_model,
    finetuned_models_rows,
)
from mebot.resources.layout import DataLayout
from mebot.resources.settings import Settings
from mebot.resources.vector_index import VectorIndexResource
from tests.fakes import FakeChatModelResource

SERVED = ["ft-e1-b2-lr0.5", "ft-e1-b2-lr2", "ft-e2-b2-lr1"]


def board(**metric_by_key: float | None) -> pd.DataFrame:
    rows = [{"model": "rag", "golden_fact_accuracy": 0.9, "rougeL_f1": 0.9}]  # rag never counts: not fine-tuned
    rows += [
        {"model": key.replace("_", "-"), "golden_fact_accuracy": value, "rougeL_f1": 0.1}
        for key, value in metric_by_key.items()
    ]
    return pd.DataFrame(rows)


def best_finetune(leaderboard: pd.DataFrame | None, served: list[str], metric: str) -> ModelChoice | None:
    return best_model(served, metric, leaderboard, what="fine-tuned model")


@pytest.mark.parametrize(
    ("leaderboard", "served", "expected", "reason_has"),
    [
        (board(**{"e1_b2_lr0.5": 0.2, "e1_b2_lr2": 0.6, "e2_b2_lr1": 0.4}), SERVED, "ft-e1-b2-lr2", "0.600; 3 of 3"),
        # a tie goes to the first served (by name; equal ROUGE-L too); an unmeasured model is passed over
        (
            board(**{"e1_b2_lr0.5": 0.5, "e1_b2_lr2": 0.5, "e2_b2_lr1": None}),
            SERVED,
            "ft-e1-b2-lr0.5",
            "measured; 2 tied",
        ),
        # the best on the board is not served (its adapter was removed): the best of the served ones
        (board(**{"e1_b2_lr2": 0.6, "e9_b1_lr1": 0.9}), ["ft-e1-b2-lr2"], "ft-e1-b2-lr2", "1 of 1"),
        (None, SERVED, "ft-e1-b2-lr0.5", "no leaderboard yet: ft-e1-b2-lr0.5, the first served"),
        (board(**{"e1_b2_lr2": None}), SERVED, "ft-e1-b2-lr0.5", "no fine-tuned model has a golden_fact_accuracy"),
    ],
)
def test_best_finetune_is_the_served_model_with_the_highest_metric(leaderboard, served, expected, reason_has):
    best = best_finetune(leaderboard, served, "golden_fact_accuracy")
    assert best is not None and best.model == expected
    assert reason_has in best.reason


def test_a_tie_on_the_metric_goes_to_the_higher_rouge_l():
    leaderboard = board(**{"e1_b2_lr0.5": 0.0, "e1_b2_lr2": 0.0})
    leaderboard.loc[leaderboard["model"] == "e1-b2-lr2", "rougeL_f1"] = 0.3
    best = best_finetune(leaderboard, SERVED, "golden_fact_accuracy")
    assert best.model == "ft-e1-b2-lr2" and "2 tied, the higher rougeL_f1 first" in best.reason


def test_best_finetune_by_another_metric_and_none_without_models():
    leaderboard = board(**{"e1_b2_lr0.5": 0.9, "e1_b2_lr2": 0.1})
    leaderboard.loc[leaderboard["model"] == "e1-b2-lr2", "rougeL_f1"] = 0.7
    assert best_finetune(leaderboard, SERVED, "rougeL_f1").model == "ft-e1-b2-lr2"
    assert best_finetune(leaderboard, [], "rougeL_f1") is None


def write_finetuned(data: Path, key: str, **row) -> None:
    path = DataLayout(data).asset("finetuned_models", key)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"partition_key": key, **row}]).to_parquet(path)


def local_adapter(data: Path, key: str) -> Path:
    adapter = DataLayout(data).models_dir / key / "adapter.gguf"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"GGUF")
    return adapter


def test_served_finetunes_are_local_adapters_and_openai_model_ids(tmp_path: Path):
    adapter = local_adapter(tmp_path, "e1-b2-lr0.5")
    write_finetuned(tmp_path, "e1-b2-lr0.5", backend="local_lora", adapter_path="/moved/away/adapter.gguf")
    write_finetuned(tmp_path, "e4-b1-lr0.1", backend="openai", adapter_path="", model_id="ft:gpt-4o-mini:me::abc")
    write_finetuned(tmp_path, "e2-b1-lr0.1", backend="openai", adapter_path="", model_id="")  # job not finished
    (DataLayout(tmp_path).asset("finetuned_models", "broken")).write_bytes(b"not parquet")
    rows = finetuned_models_rows(tmp_path)
    assert list(rows) == ["ft-e1-b2-lr0.5", "ft-e4-b1-lr0.1"]
    assert rows["ft-e1-b2-lr0.5"]["adapter_path"] == str(adapter)  # the adapter where the data folder is now
    assert rows["ft-e4-b1-lr0.1"]["model_id"] == "ft:gpt-4o-mini:me::abc"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    local_adapter(tmp_path, "e1-b2-lr0.5")
    write_finetuned(tmp_path, "e4-b1-lr0.1", backend="openai", adapter_path="", model_id="ft:gpt-4o-mini:me::abc")
    board(**{"e1_b2_lr0.5": 0.3, "e4_b1_lr0.1": 0.7}).to_parquet(DataLayout(tmp_path).asset("leaderboard"))
    resources = {
        "chat_model": FakeChatModelResource(cache_dir=str(tmp_path / "cache")),
        "index_store": VectorIndexResource(index_dir=str(tmp_path / "index")),
    }
    served = ModelRegistry(Settings(), resources, tmp_path)
    served.refresh()
    return served


def test_finetune_names_the_best_and_every_finetuned_model_can_be_asked(registry: ModelRegistry):
    assert registry.names() == ["rag", "extractive", BEST_FINETUNE, "ft-e1-b2-lr0.5", "ft-e4-b1-lr0.1"]
    assert registry.check(BEST_FINETUNE) == "ft-e4-b1-lr0.1"
    assert "golden_fact_accuracy" in registry.best.reason and "0.700" in registry.best.reason

    reply = registry.answer(BEST_FINETUNE, "Where do you live?")
    assert reply.model == "ft-e4-b1-lr0.1"  # the reply names the model that answered
    # an OpenAI fine-tune is its model id on models.chat's endpoint, asked in its training format
    assert reply.text.startswith("I am ft:gpt-4o-mini:me::abc, answering without an adapter")
    local = registry.answer("ft-e1-b2-lr0.5", "Where do you live?")
    assert "answering with my adapter" in local.text and local.model == "ft-e1-b2-lr0.5"


def test_the_best_follows_a_new_leaderboard_and_an_unknown_model_names_the_valid_ones(registry: ModelRegistry):
    board(**{"e1_b2_lr0.5": 0.8, "e4_b1_lr0.1": 0.7}).to_parquet(DataLayout(registry.data_dir).asset("leaderboard"))
    registry.refresh()
    assert registry.check(BEST_FINETUNE) == "ft-e1-b2-lr0.5"
    with pytest.raises(UnknownModelError, match="the valid models are: rag, extractive, finetune, ft-e1-b2-lr0.5"):
        registry.check("ft-nope")


def test_refresh_reads_no_parquet_until_a_model_or_the_leaderboard_changes(registry: ModelRegistry, monkeypatch):
    reads: list[str] = []
    read_parquet = pd.read_parquet

    def counted(path, *args, **kwargs):
        reads.append(Path(path).name)
        return read_parquet(path, *args, **kwargs)

    monkeypatch.setattr("mebot.pipeline.server.models.pd.read_parquet", counted)
    registry.refresh()
    assert reads == []  # nothing changed since the fixture's refresh: stat calls only
    board(**{"e1_b2_lr0.5": 0.9, "e4_b1_lr0.1": 0.7}).to_parquet(DataLayout(registry.data_dir).asset("leaderboard"))
    registry.refresh()
    assert "leaderboard.parquet" in reads and registry.check(BEST_FINETUNE) == "ft-e1-b2-lr0.5"
