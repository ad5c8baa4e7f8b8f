"""What a fine-tuning run leaves, whatever the backend: the one `finetuned_models` row (FINETUNED_MODEL_COLUMNS)
and its loss curves as a PNG (`loss.png` in the model's folder, also inlined in the materialization's metadata)."""

from pathlib import Path

import dagster as dg

from mebot.assets.outputs import md_image

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
