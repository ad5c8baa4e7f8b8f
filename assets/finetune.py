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

Fine-tuning never starts on its own: the asset has no automation condition; materialize it (or a partition).
"""

import base64
import hashlib
import json
import math
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.finetune_data import (
    MIN_TRAIN_EXAMPLES,
    jsonl_lines,
    sweep_partitions,
    sweep_point,
    training_price_per_1m,
)
from assets.finetune_format import chat_example
from pipeline.settings import (
    ChatModelSettings,
    Settings,
    SettingsResource,
    SweepPoint,
    load_settings,
    reads_settings,
)
from resources.chat import ChatClient, file_sha256
from resources.lora import ModelStore, TrainingResult, export_lora_gguf, load_base_model, train_lora
from resources.openai_finetune import (
    RECORD_FILE,
    FinetuneOutcome,
    JobSpec,
    OpenAIFinetuner,
    TrainingFile,
    estimate_training_cost,
    openai_client,
)
from resources.parquet_io import markdown_preview

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
    "model_id",  # openai: the fine_tuned_model id the chat client answers with ("" for local_lora)
    "job_id",  # openai: the fine-tuning job ("" for local_lora)
]
SAMPLE_MAX_TOKENS = 64


def split_messages(dataset: pd.DataFrame, split: str) -> list[list[dict]]:
    """The chat messages (system, user, assistant) of one split of `finetune_dataset`, in row order."""
    rows = dataset.loc[dataset["split"] == split, "messages_json"]
    return [json.loads(text) for text in rows]


def plot_losses(result: TrainingResult, title: str, path: Path) -> Path:
    """Training loss per step and validation loss per epoch, as a PNG."""
    steps = list(range(1, len(result.train_losses) + 1))
    return plot_curves(steps, result.train_losses, result.val_steps, result.val_losses, title, path)


def plot_curves(
    train_steps: list[int],
    train_losses: list[float],
    val_steps: list[int],
    val_losses: list[float],
    title: str,
    path: Path,
    val_label: str = "validation (per epoch)",
) -> Path:
    """Training loss per step and validation losses at their steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        ax.plot(train_steps, train_losses, label="train (per step)", linewidth=1.2)
        if val_losses:
            ax.plot(val_steps, val_losses, "o-", label=val_label)
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


def _finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def training_file(dataset: pd.DataFrame, split: str) -> TrainingFile | None:
    """One split of `finetune_dataset` as chat-format JSONL, byte for byte the file `finetune_dataset` wrote and
    checked (None when the split has no rows). Built from the input rather than read from disk, so the job
    trains on exactly the version of the data this materialization depends on."""
    rows = dataset[dataset["split"] == split]
    if rows.empty:
        return None
    content = "".join(line + "\n" for line in jsonl_lines(rows, "chat")).encode("utf-8")
    return TrainingFile(f"{split}.chat.jsonl", content, len(rows))


def loss_series(metrics: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, validation loss) from an OpenAI job's per-step metrics. The validation
    loss over the whole validation file (`full_valid_loss`, at epoch ends) when reported, else the per-batch
    `valid_loss`."""
    train = [(int(m["step"]), float(m["train_loss"])) for m in metrics if m.get("train_loss") is not None]
    full = [(int(m["step"]), float(m["full_valid_loss"])) for m in metrics if m.get("full_valid_loss") is not None]
    batch = [(int(m["step"]), float(m["valid_loss"])) for m in metrics if m.get("valid_loss") is not None]
    return train, full or batch


def _partitions() -> dg.StaticPartitionsDefinition:
    return sweep_partitions(load_settings())


@dg.asset(
    group_name="finetune",
    kinds={"pytorch", "openai", "parquet"},
    code_version="2",
    partitions_def=_partitions(),
    metadata=reads_settings(
        "finetune.backend",
        "finetune.local",
        "finetune.openai.base_model",
        "finetune.openai.suffix",
        "finetune.openai.seed",
        "persona",
    ),
)
def finetuned_models(
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
    backend = config.finetune.backend
    if backend == "openai":
        return openai_finetuned_model(context, config, key, point, model_store, finetune_dataset)

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
        "val_losses_json": json.dumps([_finite_or_none(round(v, 5)) for v in result.val_losses]),
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
    nan = float("nan")
    train, val = loss_series(outcome.metrics)
    steps = max([s for s, _ in train] + [c["step"] for c in outcome.checkpoints], default=0)
    created, finished = record.get("created_at"), record.get("finished_at")
    seconds = float(finished - created) if created and finished else nan
    files = record.get("files") or {}
    row = {
        "partition_key": key,
        "backend": "openai",
        "n_epochs": point.n_epochs,
        "batch_size": point.batch_size,
        "learning_rate_multiplier": point.learning_rate_multiplier,
        "learning_rate": nan,  # OpenAI applies the multiplier to a base rate it does not publish
        "lora_r": nan,
        "lora_alpha": nan,
        "max_seq_tokens": nan,
        "max_steps": nan,
        "dtype": "",
        "adapter_path": "",
        "adapter_sha256": "",
        "train_loss_first": train[0][1] if train else nan,
        "train_loss_final": train[-1][1] if train else nan,
        "val_loss_first": val[0][1] if val else nan,
        "val_loss_final": val[-1][1] if val else nan,
        "train_losses_json": json.dumps([round(v, 5) for _, v in train]),
        "val_losses_json": json.dumps([round(v, 5) for _, v in val]),
        "steps": steps,
        "epochs_completed": float(point.n_epochs),
        "n_train": int((files.get("train") or {}).get("examples", 0)),
        "n_validation": int((files.get("validation") or {}).get("examples", 0)),
        "seconds": seconds,
        "seconds_per_step": seconds / steps if steps else nan,
        "base_model": record["base_model"],
        "model_id": outcome.fine_tuned_model,
        "job_id": outcome.job_id,
    }
    frame = pd.DataFrame([row], columns=FINETUNED_MODEL_COLUMNS)
    context.log.info(
        f"{key}: job {outcome.job_id} succeeded: model {outcome.fine_tuned_model}, {steps} steps, "
        f"{record.get('trained_tokens')} trained tokens" + (f", final train loss {train[-1][1]:.4f}" if train else "")
    )
    metadata: dict[str, dg.MetadataValue] = {
        "backend": dg.MetadataValue.text("openai"),
        "base_model": dg.MetadataValue.text(record["base_model"]),
        "model_id": dg.MetadataValue.text(outcome.fine_tuned_model),
        "job_id": dg.MetadataValue.text(outcome.job_id),
        "status": dg.MetadataValue.text(record["status"]),
        "resumed": dg.MetadataValue.bool(outcome.resumed),
        "hyperparameters": dg.MetadataValue.json(
            {**record["point"], "seed": record["seed"], "suffix": record["suffix"]}
        ),
        "training_files": dg.MetadataValue.json({split: entry["id"] for split, entry in files.items()}),
        "training_tokens": dg.MetadataValue.int(training_tokens),
        "estimated_billed_tokens": dg.MetadataValue.int(int(record.get("estimated_training_tokens") or 0)),
        "steps": dg.MetadataValue.int(steps),
        "events_received": dg.MetadataValue.int(len(outcome.events)),
        "job_record": dg.MetadataValue.path(str(outcome.record_path)),
    }
    if record.get("trained_tokens") is not None:
        metadata["trained_tokens"] = dg.MetadataValue.int(int(record["trained_tokens"]))
    if record.get("estimated_cost_usd") is not None:
        metadata["estimated_cost_usd"] = dg.MetadataValue.float(round(float(record["estimated_cost_usd"]), 4))
    if outcome.checkpoints:
        metadata["checkpoints"] = dg.MetadataValue.md(
            markdown_preview(pd.DataFrame(outcome.checkpoints).drop(columns=["id"]), rows=len(outcome.checkpoints))
        )
    if train:
        metadata["train_loss_first"] = dg.MetadataValue.float(train[0][1])
        metadata["train_loss_final"] = dg.MetadataValue.float(train[-1][1])
        plot = plot_curves(
            [s for s, _ in train],
            [v for _, v in train],
            [s for s, _ in val],
            [v for _, v in val],
            f"{key}: {outcome.fine_tuned_model}",
            model_dir / PLOT_FILE,
            val_label="validation",
        )
        plot_b64 = base64.b64encode(plot.read_bytes()).decode("ascii")
        metadata["loss_plot"] = dg.MetadataValue.md(f"![loss curves](data:image/png;base64,{plot_b64})")
    if val:
        metadata["val_loss_final"] = dg.MetadataValue.float(val[-1][1])
    if not math.isnan(seconds):
        metadata["seconds"] = dg.MetadataValue.float(seconds)
    version = hashlib.sha256(f"{outcome.job_id}:{outcome.fine_tuned_model}".encode()).hexdigest()[:16]
    return dg.Output(frame, data_version=dg.DataVersion(version), metadata=metadata)
