"""What a fine-tuning run leaves, whatever the backend: the one `finetuned_models` row (`FinetunedModel`)
and its loss curves as a PNG (`loss.png` in the model's folder, also inlined in the materialization's metadata)."""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mebot.assets.outputs import md_image, versioned_output

PLOT_FILE = "loss.png"
NAN = float("nan")


@dataclass(frozen=True)
class FinetunedModel:
    """One `finetuned_models` row, whatever the backend: NaN or "" where a backend has no such value."""

    partition_key: str
    backend: str
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float = NAN  # openai: the multiplier applies to a base rate OpenAI does not publish
    lora_r: float = NAN
    lora_alpha: float = NAN
    max_seq_tokens: float = NAN
    max_steps: float = NAN
    dtype: str = ""
    adapter_path: str = ""
    adapter_sha256: str = ""
    train_loss_first: float = NAN
    train_loss_final: float = NAN
    val_loss_first: float = NAN
    val_loss_final: float = NAN
    train_losses_json: str = "[]"
    val_losses_json: str = "[]"
    steps: int = 0
    epochs_completed: float = NAN
    n_train: int = 0
    n_validation: int = 0
    seconds: float = NAN
    seconds_per_step: float = NAN
    base_model: str = ""
    model_id: str = ""  # openai: the fine_tuned_model id the chat client answers with
    job_id: str = ""  # openai: the fine-tuning job

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(self)], columns=FINETUNED_MODEL_COLUMNS)


FINETUNED_MODEL_COLUMNS = [f.name for f in fields(FinetunedModel)]
# the row's fields the UI shows (and plots across materializations) when they have a value
_ROW_METADATA = ("backend", "base_model", "steps", "train_loss_first", "train_loss_final", "val_loss_final", "seconds")


def loss_fields(train_losses: list[float], val_losses: list[float]) -> dict[str, Any]:
    """The loss columns of a row from the training losses per step and the validation losses."""
    return {
        "train_loss_first": train_losses[0] if train_losses else NAN,
        "train_loss_final": train_losses[-1] if train_losses else NAN,
        "val_loss_first": val_losses[0] if val_losses else NAN,
        "val_loss_final": val_losses[-1] if val_losses else NAN,
        "train_losses_json": json.dumps([round(v, 5) for v in train_losses]),
        "val_losses_json": json.dumps([finite_or_none(round(v, 5)) for v in val_losses]),
    }


def finetuned_output(row: FinetunedModel, version: str, metadata: Mapping[str, Any]) -> dg.Output[pd.DataFrame]:
    """The `finetuned_models` partition of `row`: its frame, and metadata from the row's fields that have a value
    plus the backend's own `metadata` (plain values; Dagster types them)."""
    shown = {name: getattr(row, name) for name in _ROW_METADATA}
    shown = {name: value for name, value in shown.items() if value == value and value != ""}
    return versioned_output(row.frame(), version, {**shown, **metadata})


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


def loss_plot_metadata(png: Path) -> dg.MetadataValue:
    """The loss curves PNG inlined as markdown, for the materialization's metadata."""
    return dg.MetadataValue.md(md_image(png.read_bytes(), "loss curves"))


def finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
