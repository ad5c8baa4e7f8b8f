"""What the evaluation shows besides its tables: the files it writes (`EvalReports`), markdown tables (the reproduced
write-up's Table 1 and Table 2, the leaderboard summary, pairwise wins/ties) and the plots."""

import io
import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.evaluation.answers import RAG_MODEL
from mebot.assets.evaluation.judge import JUDGE_METHOD_COLUMN
from mebot.resources.files import write_atomically
from mebot.resources.layout import DataLayout
from mebot.resources.parquet_io import markdown_preview, write_parquet_atomically


class EvalReports(dg.ConfigurableResource):
    """Files the evaluation writes beside the Parquet assets (`base_dir` = the data directory): leaderboard.csv,
    external_leaderboard.parquet/.csv, plots under reports/; and where bring-your-own answers are read from."""

    base_dir: str

    @property
    def root(self) -> Path:
        return Path(self.base_dir).expanduser().resolve()

    def external_dir(self) -> Path:
        return DataLayout(self.root).external_dir

    def write_csv(self, frame: pd.DataFrame, name: str) -> Path:
        return write_atomically(self.root / name, frame.to_csv(index=False).encode("utf-8"))

    def write_parquet(self, frame: pd.DataFrame, name: str) -> Path:
        path = self.root / name
        write_parquet_atomically(frame, path)
        return path

    def write_png(self, png: bytes, name: str) -> Path:
        return write_atomically(DataLayout(self.root).reports_dir / name, png)


def leaderboard_markdown(frame: pd.DataFrame, columns: list[str], *, digits: int = 3) -> str:
    """The selected columns, every row, as a GitHub-markdown table with floats rounded to `digits`."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"leaderboard_markdown: no column(s) {', '.join(missing)}; have {', '.join(frame.columns)}")
    table = frame[columns].copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]):
            table[column] = table[column].round(digits)
    return markdown_preview(table, rows=len(table))


def pairwise_markdown(pairwise: dict[str, pd.DataFrame], title: str) -> str:
    """Each judge method's pairwise table under its title (`title` formatted with `column`), blank-line separated;
    "" when there is none."""
    return "\n\n".join(
        title.format(column=column) + "\n\n" + leaderboard_markdown(table, list(table.columns))
        for column, table in pairwise.items()
    )


def table1_markdown(board: pd.DataFrame) -> str:
    """The reproduced write-up's Table 1: ROUGE-1/2/L F1 by epochs, batch size and learning-rate multiplier."""
    table = board[
        ["model", "n_epochs", "batch_size", "learning_rate_multiplier", "rouge1_f1", "rouge2_f1", "rougeL_f1"]
    ]
    return leaderboard_markdown(_blank_hyperparameters(table), list(table.columns))


def table2_markdown(board: pd.DataFrame) -> str:
    """The reproduced write-up's Table 2: the judge's mean score, wins and ties per model (per method), with the
    judge's validity AUC beside them."""
    columns = ["model"]
    for column in JUDGE_METHOD_COLUMN.values():
        columns += [column, f"{column}_wins", f"{column}_ties"]
    columns += ["judge_logprob_validity_auc", "judge_direct_validity_auc"]
    return leaderboard_markdown(board, columns)


GOLDEN_TABLE = [  # leaderboard column prefix, heading
    ("golden_fact_accuracy", "fact accuracy"),
    ("golden_refusal_accuracy", "refusal accuracy"),
    ("golden_false_refusal_rate", "false refusals"),
    ("golden_hit_at_k", "source page hit@k"),
    ("golden_mrr", "source page MRR"),
    ("golden_latency_p50", "latency p50 (s)"),
]


def _with_interval(mean: float, low: float, high: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.2f}" if pd.isna(low) or low == high else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def golden_markdown(board: pd.DataFrame) -> str:
    """The golden questions' figures per model, each with its 95% interval, under a line saying what they count;
    "" when the board has none (no golden questions, or a leaderboard written before they existed)."""
    columns = [column for column, _ in GOLDEN_TABLE]
    if not set(columns) <= set(board.columns) or board[columns].isna().all().all():
        return ""
    table = pd.DataFrame({"model": board["model"].astype(str)})
    for column, heading in GOLDEN_TABLE:
        table[heading] = [
            _with_interval(m, lo, hi)
            for m, lo, hi in zip(board[column], board[f"{column}_ci_low"], board[f"{column}_ci_high"], strict=True)
        ]
    answerable = board["golden_n_answerable"].max()
    unanswerable = board["golden_n_unanswerable"].max()
    title = (
        f"Golden questions ({answerable:.0f} answerable, {unanswerable:.0f} unanswerable; mean [95% interval]): "
        "fact accuracy = answers stating an accepted fact, refusal accuracy = unanswerable ones declined, "
        "hit@k/MRR = the source page among the retrieved (— : the model retrieves nothing)"
    )
    return title + "\n\n" + table.to_markdown(index=False, disable_numparse=True)


def summary_markdown(board: pd.DataFrame) -> str:
    columns = ["model", "backend", "n_answered", "n_missing", "rouge1_f1", "rougeL_f1", "similarity"]
    columns += ["judge_expected", "judge_direct", "judge_expected_wins", "judge_expected_ties"]
    return leaderboard_markdown(board, columns)


def _blank_hyperparameters(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        table[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:g}").astype(str)
    return table


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_metrics_vs_learning_rate(board: pd.DataFrame) -> bytes:
    """ROUGE-L F1, similarity and the judge's expected score against the learning-rate multiplier: one line per
    (epochs, batch size), 95% intervals as error bars, RAG as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("rougeL_f1", "ROUGE-L F1"), ("similarity", "similarity"), ("judge_expected", "judge (expected)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.4), dpi=100)
    try:
        swept = board[board["learning_rate_multiplier"].notna()].sort_values("learning_rate_multiplier")
        rag = board[board["model"] == RAG_MODEL]
        for ax, (metric, label) in zip(axes, panels, strict=True):
            for (epochs, batch), group in swept.groupby(["n_epochs", "batch_size"], dropna=False):
                y = group[metric].to_numpy(dtype=float)
                err = np.vstack(
                    [
                        y - group[f"{metric}_ci_low"].to_numpy(dtype=float),
                        group[f"{metric}_ci_high"].to_numpy(dtype=float) - y,
                    ]
                )
                ax.errorbar(
                    group["learning_rate_multiplier"],
                    y,
                    yerr=np.nan_to_num(err),
                    marker="o",
                    capsize=3,
                    label=f"e{epochs:g} b{batch:g}",
                )
            if not rag.empty and pd.notna(rag[metric].iloc[0]):
                ax.axhline(float(rag[metric].iloc[0]), linestyle="--", color="grey", label="rag")
            ax.set_xscale("log")
            ax.set_xlabel("learning_rate_multiplier")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def plot_score_distributions(judge: pd.DataFrame, order: list[str]) -> bytes:
    """Per model, the judge's mean probability of each score 0-10 (logprob method), or a histogram of its direct
    scores where there are no distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    try:
        scores = np.arange(11)
        models = [m for m in order if m in set(judge["model"].astype(str))]
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            mine = judge[judge["model"].astype(str) == model]
            dists = [json.loads(t) for t in mine["judge_distribution_json"].dropna()]
            if dists:
                mass = np.array([[d.get(str(s), 0.0) for s in scores] for d in dists]).mean(axis=0)
            else:
                direct = mine["judge_direct"].dropna().round().clip(0, 10).astype(int)
                mass = np.bincount(direct, minlength=11)[:11] / max(1, len(direct))
            ax.bar(scores + (i - (len(models) - 1) / 2) * width, mass, width=width, label=model)
        ax.set_xticks(scores)
        ax.set_xlabel("judge score")
        ax.set_ylabel("mean probability")
        ax.set_title("judge score distributions per model", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)
