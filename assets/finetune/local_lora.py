"""The `local_lora` backend of `finetuned_models`: a LoRA adapter (peft) on the bundled SmolLM2-135M-Instruct
weights, trained and validated on `finetune_dataset`, exported as a GGUF LoRA that llama.cpp applies
(`resources/lora.py`). The model folder is built under a temporary name and swapped in at the end, so a failed or
diverged run leaves the previous model in place."""

import json
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd

from mebot.assets.finetune.formats import adapter_chat_settings, chat_example
from mebot.assets.finetune.results import (
    FINETUNED_MODEL_COLUMNS,
    PLOT_FILE,
    finite_or_none,
    loss_plot_metadata,
    plot_curves,
)
from mebot.assets.outputs import versioned_output
from mebot.resources.chat import chat_client
from mebot.resources.files import file_sha256
from mebot.resources.layout import ADAPTER_FILE
from mebot.resources.lora import ModelStore, TrainingResult, export_lora_gguf, load_base_model, train_lora
from mebot.resources.openai_finetune import RECORD_FILE
from mebot.resources.settings import Settings, SweepPoint

SAMPLE_MAX_TOKENS = 64


def split_messages(dataset: pd.DataFrame, split: str) -> list[list[dict]]:
    """The chat messages (system, user, assistant) of one split of `finetune_dataset`, in row order."""
    rows = dataset.loc[dataset["split"] == split, "messages_json"]
    return [json.loads(text) for text in rows]


def plot_losses(result: TrainingResult, title: str, path: Path) -> Path:
    """Training loss per step and validation loss per epoch, as a PNG."""
    steps = list(range(1, len(result.train_losses) + 1))
    return plot_curves(steps, result.train_losses, result.val_steps, result.val_losses, title, path)


def sample_answer(settings: Settings, adapter: Path, question: str) -> str:
    """Ask the fine-tuned model once through llama.cpp in its training format (greedy): proves the adapter
    loads and answers. The adapter belongs to the bundled GGUF, so the bundled model is used whatever
    models.chat says."""
    client = chat_client(adapter_chat_settings(settings), lora_path=str(adapter))
    result = client.complete(
        chat_example(settings, question),
        temperature=0.0,
        max_tokens=SAMPLE_MAX_TOKENS,
        stop=[settings.finetune.completion_stop],
    )
    return result.text.strip()


def local_finetuned_model(
    context: dg.AssetExecutionContext,
    config: Settings,
    key: str,
    point: SweepPoint,
    model_store: ModelStore,
    dataset: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Train the sweep point's adapter, swap its folder in, ask it one question; one FINETUNED_MODEL_COLUMNS row."""
    backend = config.finetune.backend
    local = config.finetune.local
    train = split_messages(dataset, "train")
    validation = split_messages(dataset, "validation")
    if not train:
        raise ValueError(
            f"finetune_dataset has no train examples (splits: {dataset['split'].value_counts().to_dict()})"
        )
    final_dir = model_store.model_dir(key)
    work_dir = final_dir.parent / f".{key}.{uuid.uuid4().hex[:8]}.partial"

    started = time.perf_counter()
    base = load_base_model()
    context.log.info(
        f"{key}: base model {base.identity} ready in {time.perf_counter() - started:.1f} s; training on "
        f"{len(train)} examples, validating on {len(validation)} (lr {local.base_lr:g} x "
        f"{point.learning_rate_multiplier:g}, {point.n_epochs} epochs, batch {point.batch_size}, "
        f"r {point.lora_r}, alpha {point.lora_alpha}, max_steps {local.max_steps or 'all'}, {local.dtype})"
    )

    def on_log(event: dict) -> None:
        if event["event"] == "validation":
            context.log.info(f"{key}: epoch {event['epoch']} (step {event['step']}) val_loss {event['val_loss']:.4f}")
        elif event["step"] == 1 or event["step"] % 10 == 0 or event["step"] == event["total_steps"]:
            context.log.info(
                f"{key}: step {event['step']}/{event['total_steps']} epoch {event['epoch']} "
                f"loss {event['loss']:.4f} ({event['seconds']:.2f} s)"
            )

    try:
        result = train_lora(train, validation, point, local, work_dir, on_log, base=base)
        export_lora_gguf(result.peft_model, work_dir / ADAPTER_FILE)
        plot_losses(result, f"{key}: {base.identity}", work_dir / PLOT_FILE)
        if final_dir.exists():
            if (final_dir / RECORD_FILE).is_file():  # an OpenAI job of this point stays on record
                shutil.copy2(final_dir / RECORD_FILE, work_dir / RECORD_FILE)
            shutil.rmtree(final_dir)
        work_dir.rename(final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    adapter = final_dir / ADAPTER_FILE
    adapter_sha = file_sha256(adapter)

    question = next(m["content"] for m in (validation or train)[0] if m["role"] == "user")
    answer = sample_answer(config, adapter, question)
    context.log.info(
        f"{key}: {result.steps} steps in {result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step), "
        f"final train loss {result.final_train_loss:.4f}, val loss {result.final_val_loss:.4f}; adapter {adapter}"
    )

    row = {
        "partition_key": key,
        "backend": backend,
        "n_epochs": point.n_epochs,
        "batch_size": point.batch_size,
        "learning_rate_multiplier": point.learning_rate_multiplier,
        "learning_rate": result.learning_rate,
        "lora_r": point.lora_r,
        "lora_alpha": point.lora_alpha,
        "max_seq_tokens": local.max_seq_tokens,
        "max_steps": local.max_steps,
        "dtype": local.dtype,
        "adapter_path": str(adapter),
        "adapter_sha256": adapter_sha,
        "train_loss_first": result.train_losses[0],
        "train_loss_final": result.final_train_loss,
        "val_loss_first": result.val_losses[0] if result.val_losses else float("nan"),
        "val_loss_final": result.final_val_loss,
        "train_losses_json": json.dumps([round(v, 5) for v in result.train_losses]),
        "val_losses_json": json.dumps([finite_or_none(round(v, 5)) for v in result.val_losses]),
        "steps": result.steps,
        "epochs_completed": float(result.epochs_completed),
        "n_train": result.n_train,
        "n_validation": result.n_validation,
        "seconds": round(result.seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "base_model": base.identity,
        "model_id": "",
        "job_id": "",
    }
    frame = pd.DataFrame([row], columns=FINETUNED_MODEL_COLUMNS)
    plot_png = final_dir / PLOT_FILE
    return versioned_output(
        frame,
        adapter_sha[:16],
        {
            "backend": dg.MetadataValue.text(backend),
            "base_model": dg.MetadataValue.text(base.identity),
            "hyperparameters": dg.MetadataValue.json(
                {
                    **point.model_dump(),
                    "learning_rate": result.learning_rate,
                    "max_seq_tokens": local.max_seq_tokens,
                    "max_steps": local.max_steps,
                    "dtype": local.dtype,
                    "seed": local.seed,
                }
            ),
            "train_loss_first": dg.MetadataValue.float(float(result.train_losses[0])),
            "train_loss_final": dg.MetadataValue.float(float(result.final_train_loss)),
            "val_loss_final": dg.MetadataValue.float(float(result.final_val_loss)),
            "val_losses": dg.MetadataValue.json([finite_or_none(v) for v in result.val_losses]),
            "steps": dg.MetadataValue.int(result.steps),
            "epochs_completed": dg.MetadataValue.float(float(result.epochs_completed)),
            "stopped_by_max_steps": dg.MetadataValue.bool(result.stopped_by_max_steps),
            "train_examples": dg.MetadataValue.int(result.n_train),
            "validation_examples": dg.MetadataValue.int(result.n_validation),
            "truncated_examples": dg.MetadataValue.int(result.truncated_examples),
            "train_tokens": dg.MetadataValue.int(result.train_tokens),
            "seconds": dg.MetadataValue.float(round(result.seconds, 2)),
            "seconds_per_step": dg.MetadataValue.float(round(result.seconds_per_step, 3)),
            "base_model_load_seconds": dg.MetadataValue.float(round(base.load_seconds, 2)),
            "adapter": dg.MetadataValue.path(str(adapter)),
            "adapter_bytes": dg.MetadataValue.int(adapter.stat().st_size),
            "loss_plot": loss_plot_metadata(plot_png),
            "loss_plot_file": dg.MetadataValue.path(str(plot_png)),
            "sample_question": dg.MetadataValue.text(question),
            "sample_answer": dg.MetadataValue.text(answer),
        },
    )
