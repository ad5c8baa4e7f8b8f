"""The `local_lora` backend of `finetuned_models`: a LoRA adapter (peft) on the bundled SmolLM2-135M-Instruct
weights, trained and validated on `finetune_dataset`, exported as a GGUF LoRA that llama.cpp applies
(`resources/lora.py`). The model folder is built under a temporary name and swapped in at the end, so a failed or
diverged run leaves the previous model in place."""

import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd

from mebot.assets.finetune.formats import adapter_chat_settings, chat_example
from mebot.assets.finetune.results import (
    PLOT_FILE,
    FinetunedModel,
    finetuned_output,
    finite_or_none,
    loss_fields,
    loss_plot_metadata,
    plot_curves,
)
from mebot.resources.chat import chat_client
from mebot.resources.files import file_sha256
from mebot.resources.layout import ADAPTER_FILE, OPENAI_JOB_FILE
from mebot.resources.lora import (
    BaseModel,
    ModelStore,
    TrainingResult,
    export_lora_gguf,
    load_base_model,
    train_lora,
)
from mebot.resources.settings import LocalFinetuneSettings, Settings, SweepPoint

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


def _training_logger(context: dg.AssetExecutionContext, key: str) -> Callable[[dict], None]:
    """Logs every validation and the training steps to the run's log: about twenty lines a training, at most ten
    steps apart, the first and last too (`mebot run` shows them as training steps and the time left)."""

    def on_log(event: dict) -> None:
        if event["event"] == "validation":
            context.log.info(f"{key}: epoch {event['epoch']} (step {event['step']}) val_loss {event['val_loss']:.4f}")
            return
        every = max(1, min(10, event["total_steps"] // 20))
        if event["step"] % every == 0 or event["step"] in (1, event["total_steps"]):
            context.log.info(
                f"{key}: step {event['step']}/{event['total_steps']} epoch {event['epoch']} "
                f"loss {event['loss']:.4f} ({event['seconds']:.2f} s)"
            )

    return on_log


def _train_into(
    final_dir: Path,
    train: list[list[dict]],
    validation: list[list[dict]],
    point: SweepPoint,
    local: LocalFinetuneSettings,
    base: BaseModel,
    on_log: Callable[[dict], None],
) -> TrainingResult:
    """Train, export the adapter and plot the losses in a temporary folder that replaces `final_dir` only when
    all of it succeeded: a failed or diverged run leaves the previous model in place."""
    work_dir = final_dir.parent / f".{final_dir.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        result = train_lora(train, validation, point, local, work_dir, on_log, base=base)
        export_lora_gguf(result.peft_model, work_dir / ADAPTER_FILE)
        plot_losses(result, f"{final_dir.name}: {base.identity}", work_dir / PLOT_FILE)
        if final_dir.exists():
            if (final_dir / OPENAI_JOB_FILE).is_file():  # an OpenAI job of this point stays on record
                shutil.copy2(final_dir / OPENAI_JOB_FILE, work_dir / OPENAI_JOB_FILE)
            shutil.rmtree(final_dir)
        work_dir.rename(final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def local_finetuned_model(
    context: dg.AssetExecutionContext,
    config: Settings,
    key: str,
    point: SweepPoint,
    model_store: ModelStore,
    dataset: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Train the sweep point's adapter, swap its folder in, ask it one question; one `FinetunedModel` row."""
    local = config.finetune.local
    train = split_messages(dataset, "train")
    validation = split_messages(dataset, "validation")
    if not train:
        raise ValueError(
            f"finetune_dataset has no train examples (splits: {dataset['split'].value_counts().to_dict()})"
        )
    final_dir = model_store.model_dir(key)
    started = time.perf_counter()
    base = load_base_model()
    context.log.info(
        f"{key}: base model {base.identity} ready in {time.perf_counter() - started:.1f} s; training on "
        f"{len(train)} examples, validating on {len(validation)} (lr {local.base_lr:g} x "
        f"{point.learning_rate_multiplier:g}, {point.n_epochs} epochs, batch {point.batch_size}, "
        f"r {point.lora_r}, alpha {point.lora_alpha}, max_steps {local.max_steps or 'all'}, {local.dtype})"
    )
    result = _train_into(final_dir, train, validation, point, local, base, _training_logger(context, key))
    adapter = final_dir / ADAPTER_FILE
    adapter_sha = file_sha256(adapter)

    question = next(m["content"] for m in (validation or train)[0] if m["role"] == "user")
    answer = sample_answer(config, adapter, question)
    context.log.info(
        f"{key}: {result.steps} steps in {result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step), "
        f"final train loss {result.final_train_loss:.4f}, val loss {result.final_val_loss:.4f}; adapter {adapter}"
    )

    return _local_output(key, config, point, result, base, adapter, adapter_sha, question, answer)


def _local_output(
    key: str,
    config: Settings,
    point: SweepPoint,
    result: TrainingResult,
    base: BaseModel,
    adapter: Path,
    adapter_sha: str,
    question: str,
    answer: str,
) -> dg.Output[pd.DataFrame]:
    """The partition's row and metadata, versioned by the adapter's bytes."""
    local = config.finetune.local
    row = FinetunedModel(
        partition_key=key,
        backend=config.finetune.backend,
        n_epochs=point.n_epochs,
        batch_size=point.batch_size,
        learning_rate_multiplier=point.learning_rate_multiplier,
        learning_rate=result.learning_rate,
        lora_r=point.lora_r,
        lora_alpha=point.lora_alpha,
        max_seq_tokens=local.max_seq_tokens,
        max_steps=local.max_steps,
        dtype=local.dtype,
        adapter_path=str(adapter),
        adapter_sha256=adapter_sha,
        **loss_fields(result.train_losses, result.val_losses),
        steps=result.steps,
        epochs_completed=float(result.epochs_completed),
        n_train=result.n_train,
        n_validation=result.n_validation,
        seconds=round(result.seconds, 3),
        seconds_per_step=round(result.seconds_per_step, 4),
        base_model=base.identity,
    )
    plot_png = adapter.parent / PLOT_FILE
    hyperparameters = {
        **point.model_dump(),
        "learning_rate": result.learning_rate,
        "max_seq_tokens": local.max_seq_tokens,
        "max_steps": local.max_steps,
        "dtype": local.dtype,
        "seed": local.seed,
    }
    return finetuned_output(
        row,
        adapter_sha[:16],
        {
            "hyperparameters": hyperparameters,
            "val_losses": [finite_or_none(v) for v in result.val_losses],
            "epochs_completed": row.epochs_completed,
            "stopped_by_max_steps": result.stopped_by_max_steps,
            "train_examples": result.n_train,
            "validation_examples": result.n_validation,
            "truncated_examples": result.truncated_examples,
            "train_tokens": result.train_tokens,
            "seconds_per_step": round(result.seconds_per_step, 3),
            "base_model_load_seconds": round(base.load_seconds, 2),
            "adapter": adapter,
            "adapter_bytes": adapter.stat().st_size,
            "loss_plot": loss_plot_metadata(plot_png),
            "loss_plot_file": plot_png,
            "sample_question": question,
            "sample_answer": answer,
        },
    )
