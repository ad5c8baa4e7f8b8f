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
previous model in place. Hyperparameters come from the partition key (`e2-b4-lr0.5` = 2 epochs, batch 4,
learning rate `finetune.local.base_lr` x 0.5); `finetune.local.max_steps` caps the optimizer steps.

Backend `openai`: not built yet (raises).

Fine-tuning never starts on its own: the asset has no automation condition; materialize it (or a partition).
"""

import base64
import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.finetune_data import sweep_partitions, sweep_point
from assets.finetune_format import chat_example
from pipeline.settings import ChatModelSettings, Settings, SettingsResource, load_settings, reads_settings
from resources.chat import ChatClient
from resources.lora import ModelStore, TrainingResult, export_lora_gguf, load_base_model, train_lora

ADAPTER_FILE = "adapter.gguf"
PEFT_DIR = "peft_adapter"
LOG_FILE = "training_log.json"
PLOT_FILE = "loss.png"
FINETUNED_MODEL_COLUMNS = [
    "partition_key",
    "backend",
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "learning_rate",
    "lora_r",
    "lora_alpha",
    "max_seq_tokens",
    "max_steps",
    "dtype",
    "adapter_path",
    "adapter_sha256",
    "train_loss_first",
    "train_loss_final",
    "val_loss_first",
    "val_loss_final",
    "train_losses_json",
    "val_losses_json",
    "steps",
    "epochs_completed",
    "n_train",
    "n_validation",
    "seconds",
    "seconds_per_step",
    "base_model",
]
SAMPLE_MAX_TOKENS = 64


def split_messages(dataset: pd.DataFrame, split: str) -> list[list[dict]]:
    """The chat messages (system, user, assistant) of one split of `finetune_dataset`, in row order."""
    rows = dataset.loc[dataset["split"] == split, "messages_json"]
    return [json.loads(text) for text in rows]


def plot_losses(result: TrainingResult, title: str, path: Path) -> Path:
    """Training loss per step and validation loss per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        steps = list(range(1, len(result.train_losses) + 1))
        ax.plot(steps, result.train_losses, label="train (per step)", linewidth=1.2)
        if result.val_losses:
            ax.plot(result.val_steps, result.val_losses, "o-", label="validation (per epoch)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (answer tokens)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def sample_answer(settings: Settings, adapter: Path, question: str) -> str:
    """Ask the fine-tuned model once through llama.cpp in its training format (greedy): proves the adapter
    loads and answers. The adapter belongs to the bundled GGUF, so the bundled model is used whatever
    models.chat says."""
    chat = settings.models.chat
    local = chat if chat.provider == "llama_cpp" and not chat.gguf_path else ChatModelSettings()
    client = ChatClient(local, prices={}, cache=None, budget_usd=None, lora_path=str(adapter))
    result = client.complete(
        chat_example(settings, question),
        temperature=0.0,
        max_tokens=SAMPLE_MAX_TOKENS,
        stop=[settings.finetune.completion_stop],
    )
    return result.text.strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _partitions() -> dg.StaticPartitionsDefinition:
    return sweep_partitions(load_settings())


@dg.asset(
    group_name="finetune",
    kinds={"pytorch", "parquet"},
    code_version="1",
    partitions_def=_partitions(),
    metadata=reads_settings("finetune.backend", "finetune.local", "persona"),
)
def finetuned_models(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    model_store: ModelStore,
    finetune_dataset: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """One fine-tuned model per sweep point (partition key, e.g. `e2-b4-lr0.5`). Local backend: a LoRA adapter
    on SmolLM2-135M-Instruct trained on the train split of `finetune_dataset`, validated each epoch on its
    validation split, and exported as a GGUF LoRA that the chat resource (llama.cpp) applies. One row: the
    hyperparameters, the adapter's path, the losses, steps and timings. Never materialized automatically."""
    config = settings.for_asset(context)
    key = context.partition_key
    point = sweep_point(config, key)
    backend = config.finetune.backend
    if backend == "openai":
        raise NotImplementedError("the OpenAI fine-tuning backend is not built yet")

    local = config.finetune.local
    train = split_messages(finetune_dataset, "train")
    validation = split_messages(finetune_dataset, "validation")
    if not train:
        raise ValueError(
            f"finetune_dataset has no train examples (splits: {finetune_dataset['split'].value_counts().to_dict()})"
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
            shutil.rmtree(final_dir)
        work_dir.rename(final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    adapter = final_dir / ADAPTER_FILE
    adapter_sha = _sha256(adapter)

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
        "val_losses_json": json.dumps([_finite_or_none(round(v, 5)) for v in result.val_losses]),
        "steps": result.steps,
        "epochs_completed": float(result.epochs_completed),
        "n_train": result.n_train,
        "n_validation": result.n_validation,
        "seconds": round(result.seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "base_model": base.identity,
    }
    frame = pd.DataFrame([row], columns=FINETUNED_MODEL_COLUMNS)
    plot_png = final_dir / PLOT_FILE
    plot_b64 = base64.b64encode(plot_png.read_bytes()).decode("ascii")
    return dg.Output(
        frame,
        data_version=dg.DataVersion(adapter_sha[:16]),
        metadata={
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
            "val_losses": dg.MetadataValue.json([_finite_or_none(v) for v in result.val_losses]),
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
            "loss_plot": dg.MetadataValue.md(f"![loss curves](data:image/png;base64,{plot_b64})"),
            "loss_plot_file": dg.MetadataValue.path(str(plot_png)),
            "sample_question": dg.MetadataValue.text(question),
            "sample_answer": dg.MetadataValue.text(answer),
        },
    )
