"""Fine-tuned models (`finetuned_models`), one partition per point of `finetune.sweep`.

The backends are `local_lora.py` (a LoRA adapter exported as GGUF for llama.cpp) and `openai_job.py` (one
resumable, budget-guarded OpenAI job); the row and the loss plot they leave, `results.py`. The model folder's
layout and each backend's steps: docs/fine-tuning.md. Never automated: a person materializes it."""

import dagster as dg
import pandas as pd

from mebot.assets.finetune.dataset import sweep_partitions, sweep_point
from mebot.assets.finetune.local_lora import local_finetuned_model
from mebot.assets.finetune.openai_job import openai_finetuned_model
from mebot.resources.lora import ModelStore
from mebot.resources.settings import Settings, SettingsResource, reads_settings


def _finetuned_models(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    model_store: ModelStore,
    finetune_dataset: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """One fine-tuned model per sweep point (partition key, e.g. `e1-b2-lr0.5`). Local backend: a LoRA adapter
    on SmolLM2-135M-Instruct trained on the train split of `finetune_dataset`, validated each epoch on its
    validation split, and exported as a GGUF LoRA that the chat resource (llama.cpp) applies. OpenAI backend: a
    fine-tuning job on the same examples, resumed from its record on a rerun, cancelled with the run; the row's
    model_id is the fine-tuned model. One row: the hyperparameters, the adapter's path or the model id, the
    losses, steps and timings. Never materialized automatically."""
    config = settings.for_asset(context)
    key = context.partition_key
    point = sweep_point(config, key)
    train = openai_finetuned_model if config.finetune.backend == "openai" else local_finetuned_model
    return train(context, config, key, point, model_store, finetune_dataset)


def finetuned_models_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`finetuned_models`, one partition per point of `graph_settings.finetune.sweep`."""
    return dg.asset(
        name="finetuned_models",
        group_name="finetune",
        kinds={"pytorch", "openai", "parquet"},
        code_version="2",
        partitions_def=sweep_partitions(graph_settings),
        metadata=reads_settings(
            "finetune.backend",
            "finetune.local",
            "finetune.openai.base_model",
            "finetune.openai.suffix",
            "finetune.openai.seed",
            "persona",
        ),
    )(_finetuned_models)
