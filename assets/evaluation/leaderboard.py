"""`leaderboard`: one row per model (RAG and each sweep point) with its hyperparameters, the golden questions'
figures (fact accuracy, refusals, retrieval, latency), every metric's mean with a bootstrap 95% interval, judge
means beside the judge's validity, pairwise wins/ties per judge method, answered and missing counts, retrieval
on the rag row; the original write-up's tables and plots in the metadata; also `leaderboard.csv` and PNGs
(`reports.py`).
"""

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.evaluation.answers import EXTRACTIVE_MODEL, RAG_MODEL, model_keys
from mebot.assets.evaluation.golden import GOLDEN_RATES, SCORE_COLUMNS, golden_samples
from mebot.assets.evaluation.judge import (
    JUDGE_METHOD_COLUMN,
    JUDGE_SCORE_COLUMNS,
    finite_values,
    primary_method,
    validity_reports_by_set,
)
from mebot.assets.evaluation.loops import loop_rate
from mebot.assets.evaluation.reports import (
    EvalReports,
    golden_markdown,
    pairwise_markdown,
    plot_metrics_vs_learning_rate,
    plot_score_distributions,
    summary_markdown,
    table1_markdown,
    table2_markdown,
)
from mebot.assets.evaluation.retrieval import RETRIEVAL_COLUMNS, retrieval_columns, retrieval_summary_of
from mebot.assets.evaluation.rouge import ROUGE_COLUMNS, ROUGE_SCORE_COLUMNS
from mebot.assets.outputs import content_output, md_image
from mebot.resources.settings import EvalSettings, SettingsResource, reads_settings

HYPERPARAMETERS = ["n_epochs", "batch_size", "learning_rate_multiplier", "lora_r", "lora_alpha"]
METRICS = [*ROUGE_COLUMNS, "similarity", "judge_expected", "judge_direct"]
# The golden questions' figures (golden.golden_samples), each with a bootstrap 95% interval; latency_p50 is the
# median answer time in seconds.
GOLDEN_METRICS = [f"golden_{rate}" for rate in GOLDEN_RATES] + ["golden_latency_p50"]
GOLDEN_COLUMNS = [
    *[f"{m}{suffix}" for m in GOLDEN_METRICS for suffix in ("", "_ci_low", "_ci_high")],
    "golden_latency_p95",
    "golden_n_answerable",
    "golden_n_unanswerable",
]
LEADERBOARD_COLUMNS = [
    "model",
    "backend",
    *HYPERPARAMETERS,
    *GOLDEN_COLUMNS,
    "n_questions",
    "n_answered",
    "n_missing",
    "loop_rate",
    *[f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci_low", "_ci_high")],
    "judge_valid_mass",
    "judge_logprob_validity_auc",
    "judge_direct_validity_auc",
    "judge_logprob_golden_validity_auc",
    "judge_direct_golden_validity_auc",
    "judge_validity_passed",
    *[f"{m}_{part}" for m in JUDGE_METHOD_COLUMN.values() for part in ("wins", "ties", "losses", "comparisons")],
    *RETRIEVAL_COLUMNS,
]


_BOOTSTRAP_BATCH_CELLS = 2_000_000  # resampled values held in memory at once


def bootstrap_ci(
    values: Iterable[float | None],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Callable[..., Any] = np.mean,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean (or `statistic`, e.g. np.median, called with an axis) and a percentile-bootstrap
    confidence interval of it. None/NaN are dropped; no values → (nan, nan, nan); one value → (v, v, v).
    Deterministic for a seed."""
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap n_resamples must be at least 1, got {n_resamples}")
    data, _ = finite_values(values)
    if len(data) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(statistic(data))
    if len(data) == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    per_batch = max(1, _BOOTSTRAP_BATCH_CELLS // len(data))
    means = np.concatenate(
        [
            statistic(data[rng.integers(0, len(data), size=(min(per_batch, n_resamples - start), len(data)))], axis=1)
            for start in range(0, n_resamples, per_batch)
        ]
    )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (mean, float(low), float(high))


PAIRWISE_COLUMNS = ["model_a", "model_b", "n", "wins_a", "wins_b", "ties", "win_rate_a", "win_rate_b"]
WINS_TIES_COLUMNS = ["model", "wins", "ties", "losses", "comparisons", "win_rate"]
# Scores like 7.2 - 7.1 differ from 0.1 by float rounding; a tie must not hinge on that.
_TIE_TOLERANCE = 1e-9


def pairwise_table(scores: pd.DataFrame, *, tie_epsilon: float) -> pd.DataFrame:
    """Head-to-head over the questions two models both have a score for (one judge method).

    scores: columns qa_id, model, score. One row per unordered model pair (model_a < model_b by name): n, wins of
    each, ties (|a - b| <= tie_epsilon), win rates (wins / n; ties count for neither; NaN when n is 0)."""
    missing = [c for c in ("qa_id", "model", "score") if c not in scores.columns]
    if missing:
        raise ValueError(f"pairwise_table needs columns qa_id, model, score; missing {', '.join(missing)}")
    if tie_epsilon < 0:
        raise ValueError(f"tie_epsilon must be >= 0, got {tie_epsilon}")
    duplicated = scores[scores.duplicated(["qa_id", "model"], keep=False)]
    if len(duplicated):
        pairs = sorted({(str(m), str(q)) for q, m in zip(duplicated["qa_id"], duplicated["model"], strict=True)})
        raise ValueError(f"pairwise_table got more than one score for (model, qa_id): {pairs[:5]}")
    models = sorted(scores["model"].astype(str).unique())
    wide = scores.assign(
        model=scores["model"].astype(str), score=pd.to_numeric(scores["score"], errors="coerce")
    ).pivot(index="qa_id", columns="model", values="score")
    rows = []
    for i, model_a in enumerate(models):
        for model_b in models[i + 1 :]:
            both = wide[[model_a, model_b]].dropna()
            diff = both[model_a] - both[model_b]
            n = len(both)
            ties = int((diff.abs() <= tie_epsilon + _TIE_TOLERANCE).sum())
            wins_a = int((diff > tie_epsilon + _TIE_TOLERANCE).sum())
            wins_b = n - ties - wins_a
            rows.append(
                [model_a, model_b, n, wins_a, wins_b, ties] + ([wins_a / n, wins_b / n] if n else [math.nan, math.nan])
            )
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS).astype(
        {"n": int, "wins_a": int, "wins_b": int, "ties": int, "win_rate_a": float, "win_rate_b": float}
    )


def wins_ties_by_model(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Per model, over all its pairs: wins, ties, losses, comparisons and wins / comparisons — the original's
    "Wins / Ties" columns. Sorted by wins, then ties (most first), then name."""
    totals: dict[str, Counter] = {}
    for row in pairwise.itertuples(index=False):
        for model, won, lost in ((row.model_a, row.wins_a, row.wins_b), (row.model_b, row.wins_b, row.wins_a)):
            total = totals.setdefault(model, Counter())
            total["wins"] += int(won)
            total["losses"] += int(lost)
            total["ties"] += int(row.ties)
            total["comparisons"] += int(row.n)
    rows = [
        [
            model,
            t["wins"],
            t["ties"],
            t["losses"],
            t["comparisons"],
            t["wins"] / t["comparisons"] if t["comparisons"] else math.nan,
        ]
        for model, t in totals.items()
    ]
    frame = pd.DataFrame(rows, columns=WINS_TIES_COLUMNS).astype(
        {"wins": int, "ties": int, "losses": int, "comparisons": int, "win_rate": float}
    )
    return frame.sort_values(["wins", "ties", "model"], ascending=[False, False, True], ignore_index=True)


def partition_frames(value: dict[str, pd.DataFrame] | pd.DataFrame | None) -> list[pd.DataFrame]:
    """The materialized partitions of an input: Dagster passes a dict for several, the frame for one, None for
    none (missing partitions are skipped)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [frame for frame in value.values() if frame is not None]
    return [value]


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def pairwise_by_method(scores: pd.DataFrame, tie_epsilon: float) -> dict[str, pd.DataFrame]:
    """pairwise_table for each judge column that has any score."""
    tables = {}
    for column in JUDGE_METHOD_COLUMN.values():
        if column not in scores.columns or scores[column].isna().all():
            continue
        judged = scores.loc[scores[column].notna(), ["qa_id", "model", column]].rename(columns={column: "score"})
        tables[column] = pairwise_table(judged, tie_epsilon=tie_epsilon)
    return tables


def golden_columns(scores: pd.DataFrame, eval_settings: EvalSettings) -> dict[str, dict[str, float]]:
    """Per model of golden_scores rows (golden.SCORE_COLUMNS), its GOLDEN_COLUMNS: each rate's mean over the
    questions it counts (golden.golden_samples) and the median latency, with bootstrap 95% intervals
    (`eval.bootstrap_resamples`, `eval.seed`); latency p95; the questions counted."""
    columns: dict[str, dict[str, float]] = {}
    for model, rows in scores.groupby(scores["model"].astype(str), sort=True):
        samples = golden_samples(rows)
        row: dict[str, float] = {}
        for metric, values, statistic in [
            *[(f"golden_{rate}", samples[rate], np.mean) for rate in GOLDEN_RATES],
            ("golden_latency_p50", samples["latency_s"], np.median),
        ]:
            mean, low, high = bootstrap_ci(
                values,
                n_resamples=eval_settings.bootstrap_resamples,
                seed=eval_settings.seed,
                statistic=statistic,
            )
            row |= {metric: mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high}
        latencies = samples["latency_s"]
        row["golden_latency_p95"] = float(np.percentile(latencies, 95)) if len(latencies) else math.nan
        row["golden_n_answerable"] = float(rows["answerable"].sum())
        row["golden_n_unanswerable"] = float((~rows["answerable"].astype(bool)).sum())
        columns[str(model)] = row
    return columns


def loop_rates_by_model(answers: list[pd.DataFrame]) -> dict[str, float | None]:
    """model → the share of its answers (rows without an error) that loop (loops.has_loop)."""
    rates: dict[str, float | None] = {}
    for frame in answers:
        if frame.empty:
            continue
        answered = frame[frame["error"].isna()] if "error" in frame.columns else frame
        for model, rows in answered.groupby(answered["model"].astype(str)):
            rates[str(model)] = loop_rate(rows["answer"])
    return rates


def leaderboard_table(
    scores: pd.DataFrame,
    eval_settings: EvalSettings,
    *,
    models: list[str] | None = None,
    model_info: pd.DataFrame | None = None,
    default_backend: str = "",
    validity: dict[str, dict] | None = None,
    retrieval: dict[str, float] | None = None,
    golden: dict[str, dict[str, float]] | None = None,
    golden_validity: dict[str, dict] | None = None,
    loop_rates: dict[str, float | None] | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(LEADERBOARD_COLUMNS, {judge column: pairwise table}) from per-row scores (qa_id, model, answered and
    any of METRICS; a missing metric is NaN). `models` fixes the row order (and adds models with no rows);
    `model_info` (finetuned_models rows) gives backend and hyperparameters; `retrieval` goes on the rag row;
    `golden` (golden_columns) on each model's row; `golden_validity` (the judge's golden pairs) beside `validity`
    (the judge passes only when both pass). Without golden figures (no golden file, or one of another site,
    skipped) the table has no golden columns at all, rather than empty ones that read as a measured zero."""
    order = list(models) if models is not None else sorted(scores["model"].astype(str).unique())
    order += sorted(set(scores["model"].astype(str)) - set(order))
    order += sorted(set(golden or {}) - set(order))
    info = {}
    if model_info is not None and not model_info.empty:
        info = {str(r["partition_key"]): r for _, r in model_info.iterrows()}
    pairwise = pairwise_by_method(scores, eval_settings.tie_epsilon)
    wins = {column: wins_ties_by_model(table).set_index("model") for column, table in pairwise.items()}
    rows = []
    for model in order:
        mine = scores[scores["model"].astype(str) == model]
        answered = mine["answered"].astype(bool) if "answered" in mine.columns else pd.Series(True, mine.index)
        row: dict[str, Any] = {"model": model, "n_questions": len(mine), "n_answered": int(answered.sum())}
        row["n_missing"] = row["n_questions"] - row["n_answered"]
        if model in (RAG_MODEL, EXTRACTIVE_MODEL):
            row["backend"] = model  # extractive: quotes the best sentences, no LLM (the floor to beat)
        elif model in info:
            row["backend"] = str(info[model].get("backend", ""))
            row |= {h: info[model].get(h) for h in HYPERPARAMETERS}
        else:
            row["backend"] = default_backend
        for metric in METRICS:
            values = mine.loc[answered, metric].tolist() if metric in mine.columns else []
            mean, low, high = bootstrap_ci(
                values, n_resamples=eval_settings.bootstrap_resamples, seed=eval_settings.seed
            )
            row |= {metric: mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high}
        if "judge_valid_mass" in mine.columns:
            row["judge_valid_mass"] = (
                float(mine["judge_valid_mass"].mean()) if mine["judge_valid_mass"].notna().any() else math.nan
            )
        if validity:
            for method, report in validity.items():
                row[f"judge_{method}_validity_auc"] = math.nan if report.get("auc") is None else report["auc"]
            row["judge_validity_passed"] = bool(validity[primary_method(list(validity))]["passed"])
        if golden_validity:
            for method, report in golden_validity.items():
                row[f"judge_{method}_golden_validity_auc"] = math.nan if report.get("auc") is None else report["auc"]
            passed = bool(golden_validity[primary_method(list(golden_validity))]["passed"])
            row["judge_validity_passed"] = bool(row.get("judge_validity_passed", True)) and passed
        for column, table in wins.items():
            if model in table.index:
                record = table.loc[model]
                row |= {f"{column}_{part}": int(record[part]) for part in ("wins", "ties", "losses", "comparisons")}
        if retrieval and model == RAG_MODEL:
            row |= retrieval
        row |= (golden or {}).get(model, {})
        rate = (loop_rates or {}).get(model)
        row["loop_rate"] = math.nan if rate is None else rate  # the share of its answers that loop (loops.py)
        rows.append(row)
    columns = LEADERBOARD_COLUMNS if golden else [c for c in LEADERBOARD_COLUMNS if "golden" not in c]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    float_columns = [c for c in columns if c not in ("model", "backend", "judge_validity_passed")]
    frame[float_columns] = frame[float_columns].astype("float64")
    frame["judge_validity_passed"] = frame["judge_validity_passed"].astype("boolean")
    frame[["model", "backend"]] = frame[["model", "backend"]].fillna("").astype(str)
    return frame, pairwise


def merged_scores(rouge: pd.DataFrame, judge: pd.DataFrame) -> pd.DataFrame:
    """One row per (qa_id, model) with its ROUGE and judge scores; answered when either says so."""
    judge_columns = ["answered", "judge_expected", "judge_direct", "judge_valid_mass", "judge_distribution_json"]
    scores = rouge.merge(
        judge[["qa_id", "model", *judge_columns]], on=["qa_id", "model"], how="outer", suffixes=("", "_judge")
    )
    # A model whose rouge_scores partition is missing still counts its judged answers.
    scores["answered"] = scores["answered"].astype("boolean").fillna(scores["answered_judge"].astype("boolean"))
    scores["answered"] = scores["answered"].fillna(False).astype(bool)
    return scores


_ALL_PARTITIONS = {"allow_missing_partitions": True}


@dg.asset(
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    code_version="1",
    ins={
        "rouge_scores": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "judge_scores": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "finetuned_models": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "golden_scores": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "model_answers": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "retrieval_metrics": dg.AssetIn(),
        "judge_validity": dg.AssetIn(),
    },
    metadata=reads_settings("eval.tie_epsilon", "eval.bootstrap_resamples", "eval.seed", "eval.judge_methods"),
)
def leaderboard(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    eval_reports: EvalReports,
    rouge_scores: dict[str, pd.DataFrame] | pd.DataFrame | None,
    judge_scores: dict[str, pd.DataFrame] | pd.DataFrame | None,
    finetuned_models: dict[str, pd.DataFrame] | pd.DataFrame | None,
    golden_scores: dict[str, pd.DataFrame] | pd.DataFrame | None,
    model_answers: dict[str, pd.DataFrame] | pd.DataFrame | None,
    retrieval_metrics: pd.DataFrame,
    judge_validity: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """One row per model (rag, then each sweep point): backend and hyperparameters, the golden questions' fact
    accuracy, refusal accuracy, false refusals, hit@k, MRR and latency (with intervals), questions answered and
    missing, the mean and bootstrap 95% interval (`_ci_low`, `_ci_high`) of every ROUGE score, the similarity and
    both judge scores, the judge's validity AUC beside them, pairwise wins/ties/losses per judge method
    (`eval.tie_epsilon`), and retrieval hit@1/hit@k/MRR on the rag row. Also written as leaderboard.csv; the
    original write-up's tables and the plots are in the metadata (plots also under reports/)."""
    config = settings.for_asset(context)
    rouge = _concat(partition_frames(rouge_scores), ROUGE_SCORE_COLUMNS)
    judge = _concat(partition_frames(judge_scores), JUDGE_SCORE_COLUMNS)
    finetuned = _concat(partition_frames(finetuned_models), ["partition_key"])
    if rouge.empty and judge.empty:
        raise ValueError(
            "no rouge_scores or judge_scores partition is materialized: materialize model_answers, rouge_scores "
            "and judge_scores (e.g. mebot run --select 'group:evaluation') before the leaderboard"
        )
    scores = merged_scores(rouge, judge)
    retrieval = None
    if not retrieval_metrics.empty:
        k = int(retrieval_metrics["k"].iloc[0])
        retrieval = retrieval_columns(retrieval_summary_of(retrieval_metrics, k), k)
    by_set = validity_reports_by_set(judge_validity, config.eval.judge_methods)
    reports = by_set["synthetic"]
    golden = golden_columns(_concat(partition_frames(golden_scores), SCORE_COLUMNS), config.eval)
    models = model_keys(config)
    board, pairwise = leaderboard_table(
        scores,
        config.eval,
        models=models,
        model_info=finetuned,
        validity=reports,
        retrieval=retrieval,
        golden=golden,
        golden_validity=by_set.get("golden"),
        loop_rates=loop_rates_by_model(partition_frames(model_answers)),
    )
    absent = [m for m in models if m not in set(scores["model"])]
    if absent:
        context.log.warning(f"no scores yet for {absent}: their rows are empty (materialize their partitions)")

    csv_path = eval_reports.write_csv(board, "leaderboard.csv")
    lr_png = plot_metrics_vs_learning_rate(board)
    dist_png = plot_score_distributions(judge, models)
    lr_path = eval_reports.write_png(lr_png, "leaderboard_metrics_vs_lr.png")
    dist_path = eval_reports.write_png(dist_png, "leaderboard_judge_distributions.png")
    pairwise_md = pairwise_markdown(pairwise, f"**{{column}}** (tie within {config.eval.tie_epsilon})")
    return content_output(
        board,
        {
            "summary": dg.MetadataValue.md(golden_markdown(board) + "\n\n" + summary_markdown(board)),
            "golden": dg.MetadataValue.md(golden_markdown(board)),
            "table1_rouge": dg.MetadataValue.md(table1_markdown(board)),
            "table2_judge": dg.MetadataValue.md(table2_markdown(board)),
            "pairwise": dg.MetadataValue.md(pairwise_md or "no judge scores"),
            "plot_metrics_vs_lr": dg.MetadataValue.md(md_image(lr_png, "metrics vs learning-rate multiplier")),
            "plot_judge_distributions": dg.MetadataValue.md(md_image(dist_png, "judge score distributions")),
            "plot_files": dg.MetadataValue.json([str(lr_path), str(dist_path)]),
            "csv": dg.MetadataValue.path(str(csv_path)),
            "models": dg.MetadataValue.int(len(board)),
            "models_without_scores": dg.MetadataValue.json(absent),
            "answers_missing": dg.MetadataValue.int(int(board["n_missing"].sum())),
            "judge_validity": dg.MetadataValue.json(reports),
            "judge_golden_validity": dg.MetadataValue.json(by_set.get("golden", {})),
            "retrieval": dg.MetadataValue.json(retrieval or {}),
        },
    )
