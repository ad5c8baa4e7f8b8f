"""The `openai` backend of `finetuned_models`: one OpenAI fine-tuning job per sweep point
(`resources/openai_finetune.py`) on the chat-format train and validation files (the same bytes `finetune_dataset`
wrote), resumed from its record on a rerun, cancelled with the run, guarded by the budget before it is created."""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mebot.assets.finetune.dataset import MIN_TRAIN_EXAMPLES, jsonl_lines, training_price_per_1m
from mebot.assets.finetune.results import (
    NAN,
    PLOT_FILE,
    FinetunedModel,
    finetuned_output,
    loss_fields,
    loss_plot_metadata,
    plot_curves,
)
from mebot.resources.hashing import stable_hash
from mebot.resources.lora import ModelStore
from mebot.resources.openai_finetune import (
    FinetuneOutcome,
    JobSpec,
    OpenAIFinetuner,
    TrainingFile,
    estimate_training_cost,
    openai_client,
)
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import Settings, SweepPoint


def training_file(dataset: pd.DataFrame, split: str) -> TrainingFile | None:
    """One split of `finetune_dataset` as chat-format JSONL, byte for byte the file `finetune_dataset` wrote and
    checked (None when the split has no rows). Built from the input rather than read from disk, so the job
    trains on exactly the version of the data this materialization depends on."""
    rows = dataset[dataset["split"] == split]
    if rows.empty:
        return None
    content = "".join(line + "\n" for line in jsonl_lines(rows)).encode("utf-8")
    return TrainingFile(f"{split}.chat.jsonl", content, len(rows))


def loss_series(metrics: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, validation loss) from an OpenAI job's per-step metrics. The validation
    loss over the whole validation file (`full_valid_loss`, at epoch ends) when reported, else the per-batch
    `valid_loss`."""
    train = [(int(m["step"]), float(m["train_loss"])) for m in metrics if m.get("train_loss") is not None]
    full = [(int(m["step"]), float(m["full_valid_loss"])) for m in metrics if m.get("full_valid_loss") is not None]
    batch = [(int(m["step"]), float(m["valid_loss"])) for m in metrics if m.get("valid_loss") is not None]
    return train, full or batch


def openai_finetuned_model(
    context: dg.AssetExecutionContext,
    config: Settings,
    key: str,
    point: SweepPoint,
    model_store: ModelStore,
    dataset: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """The `openai` backend of `finetuned_models`: one job for the sweep point, its events in the run's log."""
    settings = config.finetune.openai
    train = training_file(dataset, "train")
    validation = training_file(dataset, "validation")
    n_train = train.examples if train is not None else 0
    if train is None or n_train < MIN_TRAIN_EXAMPLES:
        raise ValueError(
            f"finetune_dataset has {n_train} train examples; OpenAI fine-tuning needs at least "
            f"{MIN_TRAIN_EXAMPLES} (splits: {dataset['split'].value_counts().to_dict()}): have synthetic_qa write "
            "more questions (qa.questions_per_chunk, more pages) or raise qa.train_fraction"
        )
    training_tokens = int(dataset.loc[dataset["split"] == "train", "n_tokens"].sum())
    price = settings.training_price_per_1m or training_price_per_1m(settings.base_model)
    estimate = estimate_training_cost(training_tokens, point.n_epochs, settings.base_model, price)
    spec = JobSpec(
        partition_key=key,
        base_model=settings.base_model,
        suffix=settings.suffix,
        seed=settings.seed,
        n_epochs=point.n_epochs,
        batch_size=point.batch_size,
        learning_rate_multiplier=point.learning_rate_multiplier,
    )
    model_dir = model_store.model_dir(key)
    finetuner = OpenAIFinetuner(
        openai_client(config.models.chat),
        model_dir,
        poll_interval_s=settings.poll_interval_s,
        log=lambda message: context.log.info(f"{key}: {message}"),
    )
    log_at = {"warn": context.log.warning, "error": context.log.error}

    def on_event(event: dict) -> None:
        log_at.get(event.get("level"), context.log.info)(f"{key}: [OpenAI] {event.get('message', '')}")

    context.log.info(
        f"{key}: OpenAI fine-tuning of {settings.base_model} on {n_train} examples "
        f"({validation.examples if validation else 0} validation), {point.n_epochs} epochs, batch "
        f"{point.batch_size}, lr multiplier {point.learning_rate_multiplier:g}, seed {settings.seed}; estimated "
        + (f"${estimate.usd:.4f}" if estimate.usd is not None else "at an unknown price")
        + f" for {estimate.billed_tokens} training tokens (budget.max_usd ${config.budget.max_usd:.2f})"
    )
    outcome = finetuner.run(
        spec, train, validation, estimate=estimate, budget_usd=config.budget.max_usd, on_event=on_event
    )
    return _openai_output(context, key, point, outcome, model_dir, training_tokens)


def _openai_output(
    context: dg.AssetExecutionContext,
    key: str,
    point: SweepPoint,
    outcome: FinetuneOutcome,
    model_dir: Path,
    training_tokens: int,
) -> dg.Output[pd.DataFrame]:
    record = outcome.record
    train, val = loss_series(outcome.metrics)
    steps = max([s for s, _ in train] + [c["step"] for c in outcome.checkpoints], default=0)
    created, finished = record.get("created_at"), record.get("finished_at")
    seconds = float(finished - created) if created and finished else NAN
    files = record.get("files") or {}
    row = FinetunedModel(
        partition_key=key,
        backend="openai",
        n_epochs=point.n_epochs,
        batch_size=point.batch_size,
        learning_rate_multiplier=point.learning_rate_multiplier,
        **loss_fields([v for _, v in train], [v for _, v in val]),
        steps=steps,
        epochs_completed=float(point.n_epochs),
        n_train=int((files.get("train") or {}).get("examples", 0)),
        n_validation=int((files.get("validation") or {}).get("examples", 0)),
        seconds=seconds,
        seconds_per_step=seconds / steps if steps else NAN,
        base_model=record["base_model"],
        model_id=outcome.fine_tuned_model,
        job_id=outcome.job_id,
    )
    context.log.info(
        f"{key}: job {outcome.job_id} succeeded: model {outcome.fine_tuned_model}, {steps} steps, "
        f"{record.get('trained_tokens')} trained tokens" + (f", final train loss {train[-1][1]:.4f}" if train else "")
    )
    metadata: dict[str, Any] = {
        "model_id": outcome.fine_tuned_model,
        "job_id": outcome.job_id,
        "status": record["status"],
        "resumed": outcome.resumed,
        "hyperparameters": {**record["point"], "seed": record["seed"], "suffix": record["suffix"]},
        "training_files": {split: entry["id"] for split, entry in files.items()},
        "training_tokens": training_tokens,
        "estimated_billed_tokens": int(record.get("estimated_training_tokens") or 0),
        "events_received": len(outcome.events),
        "job_record": outcome.record_path,
    }
    if record.get("trained_tokens") is not None:
        metadata["trained_tokens"] = int(record["trained_tokens"])
    if record.get("estimated_cost_usd") is not None:
        metadata["estimated_cost_usd"] = round(float(record["estimated_cost_usd"]), 4)
    if outcome.checkpoints:
        checkpoints = pd.DataFrame(outcome.checkpoints).drop(columns=["id"])
        metadata["checkpoints"] = dg.MetadataValue.md(markdown_preview(checkpoints, rows=len(outcome.checkpoints)))
    if train:
        steps_and_losses = ([s for s, _ in train], [v for _, v in train], [s for s, _ in val], [v for _, v in val])
        title = f"{key}: {outcome.fine_tuned_model}"
        plot = plot_curves(*steps_and_losses, title, model_dir / PLOT_FILE, val_label="validation")
        metadata["loss_plot"] = loss_plot_metadata(plot)
    return finetuned_output(row, stable_hash(outcome.job_id, outcome.fine_tuned_model, sep=":"), metadata)
