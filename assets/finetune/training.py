"""Stage 7: fine-tuned models (`finetuned_models`), one partition per point of `finetune.sweep`.

Backend `local_lora` (default): a LoRA adapter (peft) on the bundled SmolLM2-135M-Instruct weights, trained on
the train split of `finetune_dataset` (the chat messages exactly as written there, rendered with the model's
chat template; loss on the assistant's answer), validated on its validation split after every epoch, and
exported as a GGUF LoRA that llama.cpp applies on top of the same GGUF (`resources/lora.py`). A model folder
per partition, `<model_store.base_dir>/<partition key>/`:
- `adapter.gguf`: what the chat resource loads (`ChatModelResource.client(settings, lora_path=...)`);
- `peft_adapter/`: the adapter in peft's format (for torch);
- `training_log.json`: hyperparameters, per-step training and per-epoch validation losses, timings;
- `loss.png`: the loss curves (also shown in the materialization's metadata).
The folder is built under a temporary name and swapped in at the end, so a failed or diverged run leaves the
previous model in place. Hyperparameters come from the partition key (`e1-b2-lr0.5` = 1 epoch, batch 2,
learning rate `finetune.local.base_lr` x 0.5); `finetune.local.max_steps` caps the optimizer steps.

Backend `openai`: one OpenAI fine-tuning job per partition (`resources/openai_finetune.py`) on the chat-format
train and validation files (the same bytes `finetune_dataset` wrote), with the partition's n_epochs, batch_size
and learning_rate_multiplier, and finetune.openai's base model, suffix and seed. Its record,
`<model_store.base_dir>/<partition key>/openai_job.json`, is written before polling, so re-materializing the
partition resumes the job (or returns the finished model) instead of paying for a second one. The budget guard
(training tokens x epochs x price per 1M against budget.max_usd) runs before the job is created; a terminated
run cancels the job; a failed job raises naming its id and OpenAI's error. The row's `model_id` is the
`fine_tuned_model` the chat client answers with (provider openai, model = that id).

The backends are `local_lora.py` and `openai_job.py`; the row and the loss plot they leave, `results.py`.
Fine-tuning never starts on its own: the asset has no automation condition; materialize it (or a partition).
"""

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
