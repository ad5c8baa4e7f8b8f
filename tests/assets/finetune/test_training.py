"""finetuned_models: one sweep partition materialized for real (LoRA training, GGUF export, llama.cpp answer)
from a tiny fake `finetune_dataset`; partitions follow the settings given. The OpenAI backend: test_openai_job.py."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.finetune.dataset import sweep_partitions
from mebot.assets.finetune.formats import chat_example
from mebot.assets.finetune.results import FINETUNED_MODEL_COLUMNS, PLOT_FILE
from mebot.assets.finetune.training import finetuned_models_asset
from mebot.resources.layout import ADAPTER_FILE, PEFT_ADAPTER_DIR, TRAINING_LOG_FILE
from mebot.resources.settings import Settings, load_settings
from tests.assets.finetune.helpers import fake_upstream, resources
from tests.helpers import FACTS

PAIRS = FACTS[:6]  # the same made-up facts the LoRA resource tests teach
SPLITS = ["train", "train", "train", "train", "validation", "test"]


def tiny_dataset(settings: Settings) -> pd.DataFrame:
    rows = []
    for i, ((question, answer), split) in enumerate(zip(PAIRS, SPLITS, strict=True)):
        messages = chat_example(settings, question, answer)
        rows.append(
            {
                "qa_id": f"q{i}",
                "split": split,
                "messages_json": json.dumps(messages),
                "prompt": f"QUESTION: {question}\n\n###\n\n",
                "completion": f" {answer} END",
                "n_tokens": 40,
            }
        )
    return pd.DataFrame(rows)


def test_partitions_are_the_sweep_points_of_the_settings():
    settings = load_settings()
    finetuned_models = finetuned_models_asset(settings)
    keys = finetuned_models.partitions_def.get_partition_keys()
    assert keys == [point.key for point in settings.finetune.sweep_points()]
    assert keys == sweep_partitions(settings).get_partition_keys()
    assert "e1-b2-lr0.5" in keys and "e1-b2-lr2" in keys  # the default grid
    spec = finetuned_models.specs_by_key[dg.AssetKey("finetuned_models")]
    assert spec.automation_condition is None  # fine-tuning never starts on its own
    assert spec.group_name == "finetune"
    assert "finetune.local" in spec.metadata["mebot/settings_sections"]


def test_partitions_come_from_the_settings_given_not_from_the_default_file(make_config):
    sweep = {
        "n_epochs": [1, 3],
        "batch_size": [4],
        "learning_rate_multiplier": [1.0],
        "lora_r": [8],
        "lora_alpha": [16],
    }
    settings = load_settings(make_config({"finetune": {"sweep": sweep}}))
    keys = finetuned_models_asset(settings).partitions_def.get_partition_keys()
    assert keys == ["e1-b4-lr1", "e3-b4-lr1"]
    assert keys != finetuned_models_asset(load_settings()).partitions_def.get_partition_keys()


@pytest.mark.full  # LoRA training, then llama.cpp
def test_one_partition_trains_exports_and_answers_through_llama_cpp(make_config, tmp_path):
    config = make_config({"finetune": {"local": {"max_steps": 3, "max_seq_tokens": 96, "base_lr": 0.002}}})
    settings = load_settings(config)
    finetuned_models = finetuned_models_asset(settings)
    key = finetuned_models.partitions_def.get_partition_keys()[0]
    data = tmp_path / "data"
    upstream = fake_upstream(tiny_dataset(settings))
    assert dg.materialize([upstream], resources=resources(config, data)).success

    result = dg.materialize(
        [finetuned_models, upstream],
        selection=[finetuned_models],
        partition_key=key,
        resources=resources(config, data),
    )
    assert result.success
    frame = result.output_for_node("finetuned_models")
    assert list(frame.columns) == FINETUNED_MODEL_COLUMNS and len(frame) == 1
    row = frame.iloc[0]
    assert row["partition_key"] == key and row["backend"] == "local_lora"
    # 4 train examples at batch 4: one step per epoch; the default points train 2 epochs (max_steps 3 not reached)
    assert row["steps"] == 2 and row["n_train"] == 4 and row["n_validation"] == 1
    assert json.loads(row["val_losses_json"]) and len(json.loads(row["train_losses_json"])) == 2
    model_dir = data / "models" / key
    assert Path(row["adapter_path"]) == model_dir / ADAPTER_FILE
    assert (model_dir / ADAPTER_FILE).stat().st_size > 100_000
    assert (model_dir / PEFT_ADAPTER_DIR / "adapter_config.json").is_file()
    assert (model_dir / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = json.loads((model_dir / TRAINING_LOG_FILE).read_text())
    assert log["point_key"] == key and log["n_train"] == 4 and log["n_validation"] == 1
    assert not list((data / "models").glob(".*partial"))
    assert (data / "finetuned_models" / f"{key}.parquet").is_file()

    (materialization,) = result.asset_materializations_for_node("finetuned_models")
    metadata = materialization.metadata
    assert metadata["steps"].value == row["steps"]
    assert metadata["train_loss_final"].value == pytest.approx(row["train_loss_final"])
    assert metadata["seconds_per_step"].value > 0
    assert metadata["loss_plot"].value.startswith("![loss curves](data:image/png;base64,")
    assert metadata["sample_answer"].value  # the adapter loaded in llama.cpp and answered
    assert metadata["hyperparameters"].value["learning_rate"] == pytest.approx(0.002 * row["learning_rate_multiplier"])
