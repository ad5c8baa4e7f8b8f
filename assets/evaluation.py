"""Stage 9: scoring the answers and comparing the models.

Per model (partitions of `model_answers`):
- `rouge_scores`: ROUGE-1/2/L precision, recall and F1 of each answer against its reference passage
  (rouge-score, `eval.rouge_stemmer`, `eval.rouge_tokenizer`), and `similarity`: the cosine between the answer's
  and the reference's embeddings (models.embedding; a text longer than the model reads is embedded window by
  window and the windows averaged, never truncated).
- `judge_scores`: the LLM judge (`models.judge`, prompt `eval.judge_prompt`) rates each answer 0-10 two ways
  (`eval.judge_methods`): `logprob`, the expected score over the probabilities it gave the score tokens at its
  first generated position (with "10" = "1" then "0" resolved from the second position), and `direct`, the number
  it writes. A provider without logprobs falls back to the direct score (`logprob_method` says which).
  Check `judge_validity` (WARN): can the judge tell a reference judged against itself from one judged against
  another question's reference? A tiny local judge is expected to fail it; that is what the check is for.

Across models:
- `judge_validity`: those validity judgements and their AUC/accuracy per method (for the check and the
  leaderboard).
- `retrieval_metrics`: for every held-out question, where its known source (url + answer passage) ranks among the
  `rag.top_k` retrieved chunks: hit@1, hit@k and MRR for the chunk and the page.
- `leaderboard`: one row per model (RAG and each sweep point) with its hyperparameters, every metric's mean with a
  bootstrap 95% interval, judge means beside the judge's validity, pairwise wins/ties per judge method, answered
  and missing counts; the original write-up's tables and plots in the metadata; also `leaderboard.csv` and PNGs.
- `external_evaluation`: answers you bring (files in `data/external/`), scored with the same functions into a
  leaderboard of their own (`external_leaderboard.parquet/.csv`); `mebot eval FILE` does the same for one file.
"""

import base64
import hashlib
import io
import json
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from assets import metrics
from assets.answers import RAG_MODEL, eval_questions, model_keys, model_partitions
from assets.rag import QuestionError, RagBot
from pipeline.settings import EvalSettings, SettingsResource, load_settings, reads_settings
from resources.chat import BudgetExceeded, ChatClient, ChatModelResource
from resources.embeddings import Embedder, EmbedderResource, EmbeddingCache, embed_with_cache
from resources.parquet_io import content_version, markdown_preview, write_parquet_atomically
from resources.vector_index import VectorIndexResource

MIN_VALIDITY_PAIRS = 3
JUDGE_TOP_LOGPROBS = 20  # the most OpenAI returns; llama.cpp gives the same list
LOGPROB_MAX_TOKENS = 2  # "10" is two tokens in SmolLM2's vocabulary
DIRECT_MAX_TOKENS = 6
HYPERPARAMETERS = ["n_epochs", "batch_size", "learning_rate_multiplier", "lora_r", "lora_alpha"]
METRICS = [*metrics.ROUGE_COLUMNS, "similarity", "judge_expected", "judge_direct"]
JUDGE_METHOD_COLUMN = {"logprob": "judge_expected", "direct": "judge_direct"}
RETRIEVAL_COLUMNS = [
    "retrieval_k",
    "retrieval_chunk_hit_at_1",
    "retrieval_chunk_hit_at_k",
    "retrieval_chunk_mrr",
    "retrieval_page_hit_at_1",
    "retrieval_page_hit_at_k",
    "retrieval_page_mrr",
]
ROUGE_SCORE_COLUMNS = ["qa_id", "model", "answered", *metrics.ROUGE_COLUMNS, "similarity"]
JUDGE_SCORE_COLUMNS = [
    "qa_id",
    "model",
    "answered",
    "judge_expected",
    "judge_distribution_json",
    "judge_valid_mass",
    "judge_argmax",
    "judge_ten_resolved",
    "logprob_method",
    "judge_direct",
    "judge_direct_text",
    "judge_error",
]
VALIDITY_COLUMNS = [
    "kind",
    "qa_id",
    "other_qa_id",
    "judge_expected",
    "logprob_method",
    "judge_direct",
    "judge_direct_text",
    "judge_error",
]
RETRIEVAL_METRIC_COLUMNS = ["qa_id", "source_url", "k", "chunk_rank", "page_rank", "retrieved_json", "error"]
EXTERNAL_SCORE_COLUMNS = [
    "source_file",
    "qa_id",
    "model",
    "question",
    "reference",
    "answer",
    *[c for c in ROUGE_SCORE_COLUMNS if c not in ("qa_id", "model")],
    "judge_expected",
    "judge_valid_mass",
    "judge_argmax",
    "judge_distribution_json",
    "judge_direct",
]
LEADERBOARD_COLUMNS = [
    "model",
    "backend",
    *HYPERPARAMETERS,
    "n_questions",
    "n_answered",
    "n_missing",
    *[f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci_low", "_ci_high")],
    "judge_valid_mass",
    "judge_logprob_validity_auc",
    "judge_direct_validity_auc",
    "judge_validity_passed",
    *[f"{m}_{part}" for m in JUDGE_METHOD_COLUMN.values() for part in ("wins", "ties", "losses", "comparisons")],
    *RETRIEVAL_COLUMNS,
]
EXTERNAL_DIR = "external"
REPORTS_DIR = "reports"


# ------------------------------------------------------------------------------------------------- reports


class EvalReports(dg.ConfigurableResource):
    """Files the evaluation writes beside the Parquet assets (`base_dir` = the data directory): leaderboard.csv,
    external_leaderboard.parquet/.csv, plots under reports/; and where bring-your-own answers are read from."""

    base_dir: str

    @property
    def root(self) -> Path:
        return Path(self.base_dir).expanduser().resolve()

    def external_dir(self) -> Path:
        return self.root / EXTERNAL_DIR

    def write_csv(self, frame: pd.DataFrame, name: str) -> Path:
        path = self.root / name
        _write_atomically(path, frame.to_csv(index=False).encode("utf-8"))
        return path

    def write_parquet(self, frame: pd.DataFrame, name: str) -> Path:
        path = self.root / name
        write_parquet_atomically(frame, path)
        return path

    def write_png(self, png: bytes, name: str) -> Path:
        path = self.root / REPORTS_DIR / name
        _write_atomically(path, png)
        return path


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- ROUGE and similarity


def embed_texts(embedder: Embedder, cache: EmbeddingCache | None, texts: list[str]) -> np.ndarray:
    """One unit vector per text: the mean of its windows' vectors (a text longer than the model reads is never
    truncated); an empty text gets a zero vector."""
    windows = [embedder.windows(text) if text.strip() else [] for text in texts]
    flat = [w for ws in windows for w in ws]
    vectors, _, _ = embed_with_cache(embedder, cache, flat)
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    start = 0
    for row, ws in enumerate(windows):
        if ws:
            mean = vectors[start : start + len(ws)].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            out[row] = mean / norm if norm > 0 else mean
        start += len(ws)
    return out


def _answered(answers: pd.Series, errors: pd.Series | None = None) -> pd.Series:
    has_text = answers.fillna("").astype(str).str.strip() != ""
    return has_text if errors is None else has_text & errors.isna()


def score_texts(
    references: list[str],
    answers: list[str],
    answered: pd.Series,
    eval_settings: EvalSettings,
    embedder: Embedder | None,
    cache: EmbeddingCache | None = None,
) -> pd.DataFrame:
    """ROUGE_COLUMNS and similarity per pair; NaN where there is no answer (missing, not zero). Without an
    embedder, similarity is NaN."""
    scores = metrics.rouge_table(
        references, answers, use_stemmer=eval_settings.rouge_stemmer, tokenizer=eval_settings.rouge_tokenizer
    )
    scores["similarity"] = math.nan
    mask = answered.to_numpy()
    if embedder is not None and mask.any():
        kept_refs = [r for r, keep in zip(references, mask, strict=True) if keep]
        kept_answers = [a for a, keep in zip(answers, mask, strict=True) if keep]
        similarity = metrics.cosine_similarities(
            embed_texts(embedder, cache, kept_answers), embed_texts(embedder, cache, kept_refs)
        )
        scores.loc[mask, "similarity"] = similarity
    scores.loc[~mask, [*metrics.ROUGE_COLUMNS, "similarity"]] = math.nan
    return scores


def rouge_and_similarity(
    answers: pd.DataFrame, eval_settings: EvalSettings, embedder: Embedder | None, cache: EmbeddingCache | None
) -> pd.DataFrame:
    """ROUGE_SCORE_COLUMNS for the rows of a model_answers partition."""
    answered = _answered(answers["answer"], answers["error"]).reset_index(drop=True)
    scores = score_texts(
        answers["reference"].fillna("").astype(str).tolist(),
        answers["answer"].fillna("").astype(str).tolist(),
        answered,
        eval_settings,
        embedder,
        cache,
    )
    frame = pd.concat([answers[["qa_id", "model"]].reset_index(drop=True), answered.rename("answered"), scores], axis=1)
    return frame[ROUGE_SCORE_COLUMNS]


# --------------------------------------------------------------------------------------------------- judge


@dataclass
class Verdict:
    expected: float | None = None
    distribution_json: str | None = None
    valid_mass: float | None = None
    argmax: float | None = None
    ten_resolved: bool | None = None
    logprob_method: str | None = None  # "logprob", or "direct_fallback" when the provider gave no logprobs
    direct: float | None = None
    direct_text: str | None = None
    error: str | None = None


def judge_messages(template: str, question: str, reference: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": template.format(question=question, reference=reference, answer=answer)}]


def _distribution_of(result_logprobs: list) -> metrics.ScoreDistribution:
    positions, chosen = [], []
    for entry in result_logprobs:
        alternatives = dict(entry.top)
        alternatives.setdefault(entry.token, entry.logprob)  # the generated token is an alternative too
        positions.append(alternatives)
        chosen.append(entry.token)
    return metrics.score_distribution(positions, chosen)


def judge_one(client: ChatClient, messages: list[dict], methods: list[str]) -> Verdict:
    """The judge's verdict on one prompt by each method, from ONE greedy call: its token logprobs give the
    score distribution (the first positions) and its text is the direct reply (greedy text is what a plain call
    at temperature 0 writes), so both methods cost one prompt. A provider without logprobs falls back to the
    direct score. A failed call is the verdict's `error`, not a raise (except BudgetExceeded, which must stop
    the run)."""
    verdict = Verdict()
    try:
        want_logprobs = "logprob" in methods
        params: dict[str, Any] = {"temperature": 0.0, "max_tokens": max(LOGPROB_MAX_TOKENS, DIRECT_MAX_TOKENS)}
        if want_logprobs:
            params |= {"logprobs": True, "top_logprobs": JUDGE_TOP_LOGPROBS}
        result = client.complete(messages, **params)
        score = metrics.parse_direct_score(result.text)
        verdict.direct_text = result.text
        if "direct" in methods:
            verdict.direct = score
        if want_logprobs and result.logprobs:
            distribution = _distribution_of(result.logprobs)
            verdict.logprob_method = "logprob"
            verdict.expected = distribution.expected
            verdict.valid_mass = distribution.valid_mass
            verdict.argmax = None if distribution.argmax is None else float(distribution.argmax)
            verdict.ten_resolved = distribution.ten_resolved
            verdict.distribution_json = json.dumps(
                {str(k): round(v, 6) for k, v in sorted(distribution.probabilities.items())}
            )
        elif want_logprobs:
            verdict.expected = score
            verdict.logprob_method = "direct_fallback"
    except BudgetExceeded:
        raise
    except (RuntimeError, ValueError, OSError) as exc:  # ChatProviderError is a RuntimeError
        verdict.error = f"{type(exc).__name__}: {exc}"[:500]
    return verdict


def _verdict_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "judge_expected": verdict.expected,
        "judge_distribution_json": verdict.distribution_json,
        "judge_valid_mass": verdict.valid_mass,
        "judge_argmax": verdict.argmax,
        "judge_ten_resolved": verdict.ten_resolved,
        "logprob_method": verdict.logprob_method,
        "judge_direct": verdict.direct,
        "judge_direct_text": verdict.direct_text,
        "judge_error": verdict.error,
    }


def _judge_frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=columns)
    floats = [c for c in ("judge_expected", "judge_valid_mass", "judge_argmax", "judge_direct") if c in columns]
    return frame.astype({c: "float64" for c in floats})


def judge_answers(
    client: ChatClient,
    answers: pd.DataFrame,
    template: str,
    methods: list[str],
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """JUDGE_SCORE_COLUMNS for the rows of a model_answers partition; unanswered rows are not judged."""
    records = []
    answered = _answered(answers["answer"], answers["error"]).tolist()
    for done, (row, has_answer) in enumerate(zip(answers.itertuples(index=False), answered, strict=True), start=1):
        record = {"qa_id": row.qa_id, "model": row.model, "answered": has_answer}
        verdict = (
            judge_one(client, judge_messages(template, row.question, row.reference, row.answer), methods)
            if has_answer
            else Verdict()
        )
        records.append(record | _verdict_record(verdict))
        if progress is not None:
            progress(done, len(answers))
    return _judge_frame(records, JUDGE_SCORE_COLUMNS)


def judge_summary(frame: pd.DataFrame) -> dict[str, int]:
    """Counts a judge_scores partition (or the validity run) reports in its metadata."""
    judged = frame[frame["answered"]] if "answered" in frame.columns else frame
    texts = judged["judge_direct_text"].dropna()
    logprob = judged["logprob_method"] == "logprob"
    return {
        "judged": len(judged),
        "judge_errors": int(judged["judge_error"].notna().sum()),
        "direct_unparseable": int(texts.map(metrics.parse_direct_score).isna().sum()),
        "logprob_fallbacks": int((judged["logprob_method"] == "direct_fallback").sum()),
        "no_valid_score_tokens": int((logprob & judged["judge_expected"].isna()).sum()),
    }


# ------------------------------------------------------------------------------------------ judge validity


PAIR_COLUMNS = ["kind", "qa_id", "other_qa_id", "question", "reference", "candidate"]


def _seeded_order(ids: pd.Series, seed: int, salt: str) -> list[str]:
    return sorted(ids, key=lambda q: hashlib.sha256(f"{seed}\x00{salt}\x00{q}".encode()).hexdigest())


def validity_pairs(questions: pd.DataFrame, pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to `n` of `questions` (chosen by a seeded hash of qa_id), each as a `matched` pair (its reference judged
    against itself) and a `mismatched` pair (against the reference of another question: the next sampled one, or
    from `pool` (all of synthetic_qa) when the sample has only one; always a different text)."""
    distinct = questions.drop_duplicates("answer").set_index("qa_id", drop=False)
    sample = distinct.loc[_seeded_order(distinct["qa_id"], seed, "sample")[:n]]
    others = pool.drop_duplicates("answer").set_index("qa_id", drop=False)
    others = others.loc[_seeded_order(others["qa_id"], seed, "other")]
    rows = []
    for i, row in enumerate(sample.itertuples(index=False)):
        other = sample.iloc[(i + 1) % len(sample)]
        if other["answer"] == row.answer:
            candidates = others[others["answer"] != row.answer]
            if candidates.empty:
                continue
            other = candidates.iloc[0]
        rows.append(["matched", row.qa_id, row.qa_id, row.question, row.answer, row.answer])
        rows.append(["mismatched", row.qa_id, other["qa_id"], row.question, row.answer, other["answer"]])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def judge_validity_pairs(client: ChatClient, pairs: pd.DataFrame, template: str, methods: list[str]) -> pd.DataFrame:
    records = []
    for row in pairs.itertuples(index=False):
        verdict = judge_one(client, judge_messages(template, row.question, row.reference, row.candidate), methods)
        record = {"kind": row.kind, "qa_id": row.qa_id, "other_qa_id": row.other_qa_id} | _verdict_record(verdict)
        records.append({c: record[c] for c in VALIDITY_COLUMNS})
    return _judge_frame(records, VALIDITY_COLUMNS)


def validity_reports(validity: pd.DataFrame, methods: list[str]) -> dict[str, dict]:
    """metrics.validity_report per judge method. An AUC from fewer than MIN_VALIDITY_PAIRS scored pairs a side
    is a coin toss (one pair gives 0, 0.5 or 1), so such a judge does not pass, whatever its AUC."""
    reports = {}
    for method in methods:
        scores = validity[JUDGE_METHOD_COLUMN[method]]
        matched = scores[validity["kind"] == "matched"].tolist()
        mismatched = scores[validity["kind"] == "mismatched"].tolist()
        report = metrics.validity_report(matched, mismatched)
        report["too_few_pairs"] = min(report["n_matched"], report["n_mismatched"]) < MIN_VALIDITY_PAIRS
        report["passed"] = bool(report["passed"]) and not report["too_few_pairs"]
        reports[method] = report
    return reports


def primary_method(methods: list[str]) -> str:
    return "logprob" if "logprob" in methods else "direct"


# ----------------------------------------------------------------------------------------------- retrieval


def retrieval_table(bot: RagBot, questions: pd.DataFrame, k: int) -> pd.DataFrame:
    """RETRIEVAL_METRIC_COLUMNS: per question, the rank of its source chunk and page among the top k."""
    rows = []
    for row in questions.itertuples(index=False):
        try:
            sources = bot.retrieve(row.question, k)
        except QuestionError as exc:
            rows.append([row.qa_id, row.url, k, None, None, "[]", str(exc)])
            continue
        hit = metrics.retrieval_hit(row.url, row.answer, [(s.url, s.text) for s in sources])
        retrieved = json.dumps([{"url": s.url, "chunk_id": s.chunk_id, "score": s.score} for s in sources])
        rows.append([row.qa_id, row.url, k, hit.chunk_rank, hit.page_rank, retrieved, None])
    frame = pd.DataFrame(rows, columns=RETRIEVAL_METRIC_COLUMNS)
    return frame.astype({"k": "int64", "chunk_rank": "Int64", "page_rank": "Int64"})


def retrieval_summary_of(frame: pd.DataFrame, k: int) -> dict[str, float]:
    """metrics.retrieval_summary over the questions that could be asked."""
    asked = frame[frame["error"].isna()]
    hits = [
        metrics.RetrievalHit(chunk_rank=None if pd.isna(c) else int(c), page_rank=None if pd.isna(p) else int(p))
        for c, p in zip(asked["chunk_rank"], asked["page_rank"], strict=True)
    ]
    return metrics.retrieval_summary(hits, k)


def _retrieval_columns(summary: dict[str, float], k: int) -> dict[str, float]:
    return {
        "retrieval_k": float(k),
        "retrieval_chunk_hit_at_1": summary["chunk_hit@1"],
        "retrieval_chunk_hit_at_k": summary[f"chunk_hit@{k}"],
        "retrieval_chunk_mrr": summary["chunk_mrr"],
        "retrieval_page_hit_at_1": summary["page_hit@1"],
        "retrieval_page_hit_at_k": summary[f"page_hit@{k}"],
        "retrieval_page_mrr": summary["page_mrr"],
    }


# --------------------------------------------------------------------------------------------- leaderboard


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
    """metrics.pairwise_table for each judge column that has any score."""
    tables = {}
    for column in JUDGE_METHOD_COLUMN.values():
        if column not in scores.columns or scores[column].isna().all():
            continue
        judged = scores.loc[scores[column].notna(), ["qa_id", "model", column]].rename(columns={column: "score"})
        tables[column] = metrics.pairwise_table(judged, tie_epsilon=tie_epsilon)
    return tables


def leaderboard_table(
    scores: pd.DataFrame,
    eval_settings: EvalSettings,
    *,
    models: list[str] | None = None,
    model_info: pd.DataFrame | None = None,
    default_backend: str = "",
    validity: dict[str, dict] | None = None,
    retrieval: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(LEADERBOARD_COLUMNS, {judge column: pairwise table}) from per-row scores (qa_id, model, answered and
    any of METRICS; a missing metric is NaN). `models` fixes the row order (and adds models with no rows);
    `model_info` (finetuned_models rows) gives backend and hyperparameters; `retrieval` goes on the rag row."""
    order = list(models) if models is not None else sorted(scores["model"].astype(str).unique())
    order += sorted(set(scores["model"].astype(str)) - set(order))
    info = {}
    if model_info is not None and not model_info.empty:
        info = {str(r["partition_key"]): r for _, r in model_info.iterrows()}
    pairwise = pairwise_by_method(scores, eval_settings.tie_epsilon)
    wins = {column: metrics.wins_ties_by_model(table).set_index("model") for column, table in pairwise.items()}
    rows = []
    for model in order:
        mine = scores[scores["model"].astype(str) == model]
        answered = mine["answered"].astype(bool) if "answered" in mine.columns else pd.Series(True, mine.index)
        row: dict[str, Any] = {"model": model, "n_questions": len(mine), "n_answered": int(answered.sum())}
        row["n_missing"] = row["n_questions"] - row["n_answered"]
        if model == RAG_MODEL:
            row["backend"] = "rag"
        elif model in info:
            row["backend"] = str(info[model].get("backend", ""))
            row |= {h: info[model].get(h) for h in HYPERPARAMETERS}
        else:
            row["backend"] = default_backend
        for metric in METRICS:
            values = mine.loc[answered, metric].tolist() if metric in mine.columns else []
            mean, low, high = metrics.bootstrap_ci(
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
        for column, table in wins.items():
            if model in table.index:
                record = table.loc[model]
                row |= {f"{column}_{part}": int(record[part]) for part in ("wins", "ties", "losses", "comparisons")}
        if retrieval and model == RAG_MODEL:
            row |= retrieval
        rows.append(row)
    frame = pd.DataFrame(rows).reindex(columns=LEADERBOARD_COLUMNS)
    float_columns = [c for c in LEADERBOARD_COLUMNS if c not in ("model", "backend", "judge_validity_passed")]
    frame[float_columns] = frame[float_columns].astype("float64")
    frame["judge_validity_passed"] = frame["judge_validity_passed"].astype("boolean")
    frame[["model", "backend"]] = frame[["model", "backend"]].fillna("").astype(str)
    return frame, pairwise


def table1_markdown(board: pd.DataFrame) -> str:
    """The original write-up's Table 1: ROUGE-1/2/L F1 by epochs, batch size and learning-rate multiplier."""
    table = board[
        ["model", "n_epochs", "batch_size", "learning_rate_multiplier", "rouge1_f1", "rouge2_f1", "rougeL_f1"]
    ]
    return metrics.leaderboard_markdown(_blank_hyperparameters(table), list(table.columns))


def table2_markdown(board: pd.DataFrame) -> str:
    """The original write-up's Table 2: the judge's mean score, wins and ties per model (per method), with the
    judge's validity AUC beside them."""
    columns = ["model"]
    for column in JUDGE_METHOD_COLUMN.values():
        columns += [column, f"{column}_wins", f"{column}_ties"]
    columns += ["judge_logprob_validity_auc", "judge_direct_validity_auc"]
    return metrics.leaderboard_markdown(board, columns)


def summary_markdown(board: pd.DataFrame) -> str:
    columns = ["model", "backend", "n_answered", "n_missing", "rouge1_f1", "rougeL_f1", "similarity"]
    columns += ["judge_expected", "judge_direct", "judge_expected_wins", "judge_expected_ties"]
    return metrics.leaderboard_markdown(board, columns)


def _blank_hyperparameters(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        table[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:g}").astype(str)
    return table


# ----------------------------------------------------------------------------------------------------- plots


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


def _md_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# ------------------------------------------------------------------------------------------------ external


def evaluate_external(
    answers: pd.DataFrame, eval_settings: EvalSettings, embedder: Embedder | None, cache: EmbeddingCache | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(per-row scores EXTERNAL_SCORE_COLUMNS, leaderboard, pairwise tables) for bring-your-own answers (the
    frame of metrics.read_external_answers, with an optional source_file column). The judge's results come from
    the file (judge_distribution → expected score, judge_direct_score); no model runs."""
    answers = answers.reset_index(drop=True)
    answered = _answered(answers["answer"])
    scores = score_texts(
        answers["reference"].astype(str).tolist(),
        answers["answer"].fillna("").astype(str).tolist(),
        answered,
        eval_settings,
        embedder,
        cache,
    )
    distributions = [
        None if pd.isna(text) or text is None else metrics.distribution_from_mapping(json.loads(text))
        for text in answers["judge_distribution_json"]
    ]
    frame = pd.concat([answers, answered.rename("answered"), scores], axis=1)
    if "source_file" not in frame.columns:
        frame["source_file"] = ""
    frame["judge_expected"] = [math.nan if d is None or d.expected is None else d.expected for d in distributions]
    frame["judge_valid_mass"] = [math.nan if d is None else d.valid_mass for d in distributions]
    frame["judge_argmax"] = [math.nan if d is None or d.argmax is None else float(d.argmax) for d in distributions]
    frame["judge_direct"] = answers["judge_direct_score"].astype(float)
    frame.loc[~answered, ["judge_expected", "judge_valid_mass", "judge_argmax", "judge_direct"]] = math.nan
    frame = frame[EXTERNAL_SCORE_COLUMNS]
    models = list(dict.fromkeys(answers["model"].astype(str)))
    board, pairwise = leaderboard_table(frame, eval_settings, models=models, default_backend="external")
    return frame, board, pairwise


def external_report(board: pd.DataFrame, pairwise: dict[str, pd.DataFrame], tie_epsilon: float) -> dict[str, Any]:
    """`mebot eval`'s output: {"markdown": leaderboard and pairwise tables, "json": the same as records}."""
    parts = [summary_markdown(board)]
    for column, table in pairwise.items():
        parts.append(
            f"Pairwise by {column} (tie within {tie_epsilon}):\n\n"
            + metrics.leaderboard_markdown(table, list(table.columns))
        )
    records = {
        "leaderboard": json.loads(board.to_json(orient="records")),
        "pairwise": {column: json.loads(table.to_json(orient="records")) for column, table in pairwise.items()},
    }
    return {"markdown": "\n\n".join(parts), "json": records}


def write_external_outputs(directory: Path, scores: pd.DataFrame, board: pd.DataFrame) -> list[Path]:
    """external_scores.parquet, external_leaderboard.parquet and .csv in `directory`; returns their paths."""
    directory = Path(directory)
    paths = [directory / n for n in ("external_scores.parquet", "external_leaderboard.parquet")]
    write_parquet_atomically(scores, paths[0])
    write_parquet_atomically(board, paths[1])
    csv_path = directory / "external_leaderboard.csv"
    _write_atomically(csv_path, board.to_csv(index=False).encode("utf-8"))
    return [*paths, csv_path]


def read_external_dir(directory: Path) -> tuple[pd.DataFrame, list[Path]]:
    """Every answers file (*.jsonl, *.csv, *.parquet) in `directory`, read and concatenated with source_file."""
    files = (
        sorted(p for p in directory.glob("*") if p.is_file() and p.suffix.lower() in metrics.EXTERNAL_FORMATS)
        if directory.is_dir()
        else []
    )
    frames = [metrics.read_external_answers(path).assign(source_file=path.name) for path in files]
    columns = [*metrics.EXTERNAL_COLUMNS, "source_file"]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    duplicated = frame[frame.duplicated(["qa_id", "model"], keep=False)]
    if len(duplicated):
        clash = duplicated.groupby(["model", "qa_id"])["source_file"].apply(list).head(3).to_dict()
        raise metrics.ExternalAnswersError(
            f"the same model answers the same question in more than one file of {directory}: {clash}; rename the "
            "model in one of them or remove the duplicate"
        )
    return frame, files


# ---------------------------------------------------------------------------------------------------- assets


def _eval_partitions() -> dg.StaticPartitionsDefinition:
    return model_partitions(load_settings())


def mean_metadata(frame: pd.DataFrame, columns: list[str]) -> dict[str, dg.MetadataValue]:
    """`<column>_mean` per column that has a value (a mean of nothing is left out, not shown as 0), as numeric
    metadata the UI plots across materializations."""
    means = {f"{c}_mean": frame[c].mean() for c in columns}
    return {name: dg.MetadataValue.float(round(float(v), 4)) for name, v in means.items() if pd.notna(v)}


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "parquet"},
    code_version="1",
    partitions_def=_eval_partitions(),
    metadata=reads_settings("eval.rouge_stemmer", "eval.rouge_tokenizer", "models.embedding"),
)
def rouge_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    model_answers: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Per answer of one model: ROUGE-1/2/L precision, recall and F1 against the reference passage, and the
    cosine similarity of their embeddings (semantic similarity). Unanswered rows keep NaN (missing, not 0)."""
    config = settings.for_asset(context)
    embedding_model = embedder.embedder(config)
    frame = rouge_and_similarity(model_answers, config.eval, embedding_model, embedder.cache())
    answered = frame[frame["answered"]]
    means = mean_metadata(answered, [*metrics.ROUGE_COLUMNS, "similarity"])
    shown = {
        name: means[name].value for name in ("rouge1_f1_mean", "rougeL_f1_mean", "similarity_mean") if name in means
    }
    context.log.info(f"{context.partition_key}: {len(answered)}/{len(frame)} answered; {shown}")
    return dg.Output(
        frame,
        data_version=dg.DataVersion(content_version(frame, ROUGE_SCORE_COLUMNS)),
        metadata={
            **means,
            "answered": dg.MetadataValue.int(len(answered)),
            "missing": dg.MetadataValue.int(len(frame) - len(answered)),
            "rouge_stemmer": dg.MetadataValue.bool(config.eval.rouge_stemmer),
            "rouge_tokenizer": dg.MetadataValue.text(config.eval.rouge_tokenizer),
            "embedding_model": dg.MetadataValue.text(embedding_model.identity),
        },
    )


@dg.asset(
    group_name="evaluation",
    kinds={"llm", "parquet"},
    code_version="1",
    partitions_def=_eval_partitions(),
    metadata=reads_settings("models.judge", "eval.judge_prompt", "eval.judge_methods"),
)
def judge_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    model_answers: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Per answer of one model, the LLM judge's 0-10 rating against the reference, by each of `eval.judge_methods`:
    `judge_expected` (logprob: the expected score over the score tokens' probabilities, with the distribution,
    its valid mass and argmax) and `judge_direct` (the number it writes). A provider without logprobs falls back to
    the direct score (`logprob_method`); a failed or unparseable judgement is null and counted, never a crash."""
    config = settings.for_asset(context)
    client = chat_model.client(config, chat=config.models.judge)
    key = context.partition_key

    def progress(done: int, total: int) -> None:
        if done == total or done % 5 == 0:
            context.log.info(f"{key}: {done}/{total} judged")

    frame = judge_answers(client, model_answers, config.eval.judge_prompt, config.eval.judge_methods, progress)
    summary = judge_summary(frame)
    if summary["judge_errors"]:
        first = frame["judge_error"].dropna().iloc[0]
        context.log.warning(f"{key}: {summary['judge_errors']} judgements failed, e.g. {first}")
    judged = frame[frame["answered"]]
    return dg.Output(
        frame,
        data_version=dg.DataVersion(content_version(frame, ["qa_id", "judge_expected", "judge_direct"])),
        metadata={
            **mean_metadata(judged, ["judge_expected", "judge_direct", "judge_valid_mass"]),
            **{name: dg.MetadataValue.int(int(value)) for name, value in summary.items()},
            "missing_answers": dg.MetadataValue.int(int((~frame["answered"]).sum())),
            "judge_methods": dg.MetadataValue.json(list(config.eval.judge_methods)),
            "judge_model": dg.MetadataValue.text(client.identity),
            **client.usage.as_metadata(),
        },
    )


@dg.asset(
    group_name="evaluation",
    kinds={"llm", "parquet"},
    code_version="1",
    metadata=reads_settings(
        "models.judge",
        "eval.judge_prompt",
        "eval.judge_methods",
        "eval.validity_sample",
        "eval.splits",
        "eval.seed",
    ),
)
def judge_validity(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    synthetic_qa: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Can the judge be trusted? `eval.validity_sample` held-out references, each judged against itself
    (matched: should score high) and against another question's reference (mismatched: should score low), with
    the judge prompt and each judge method. Metadata: AUC (P(matched > mismatched)), best accuracy and its
    threshold, means, and passed (AUC >= 0.8) per method. The bundled 135M judge is expected to fail."""
    config = settings.for_asset(context)
    questions = eval_questions(synthetic_qa, config.eval.splits, 0)
    pairs = validity_pairs(questions, synthetic_qa, config.eval.validity_sample, config.eval.seed)
    if len(pairs) < 2 * config.eval.validity_sample:
        context.log.warning(
            f"only {len(pairs) // 2} of eval.validity_sample = {config.eval.validity_sample} references could be "
            f"paired ({len(questions)} questions in eval.splits): the validity figures rest on few judgements"
        )
    client = chat_model.client(config, chat=config.models.judge)
    frame = judge_validity_pairs(client, pairs, config.eval.judge_prompt, config.eval.judge_methods)
    reports = validity_reports(frame, config.eval.judge_methods)
    primary = reports[primary_method(config.eval.judge_methods)]
    context.log.info(
        f"judge {client.identity}: validity AUC {primary['auc']} (matched mean {primary['mean_matched']}, "
        f"mismatched mean {primary['mean_mismatched']}); passed={primary['passed']}"
    )
    metadata: dict[str, dg.MetadataValue] = {}
    for method, report in reports.items():
        for name in ("auc", "accuracy", "threshold", "mean_matched", "mean_mismatched"):
            if report[name] is not None:
                metadata[f"{method}_{name}"] = dg.MetadataValue.float(float(report[name]))
        metadata[f"{method}_passed"] = dg.MetadataValue.bool(bool(report["passed"]))
    return dg.Output(
        frame,
        data_version=dg.DataVersion(content_version(frame, ["kind", "qa_id", "judge_expected", "judge_direct"])),
        metadata={
            **metadata,
            "reports": dg.MetadataValue.json(reports),
            "pairs": dg.MetadataValue.int(len(frame)),
            "judge_errors": dg.MetadataValue.int(int(frame["judge_error"].notna().sum())),
            "judge_model": dg.MetadataValue.text(client.identity),
            **client.usage.as_metadata(),
        },
    )


@dg.asset_check(
    asset=judge_scores,
    name="judge_validity",
    additional_ins={"judge_validity": dg.AssetIn()},
    description="The judge tells a matching reference from another question's (AUC >= 0.8); warns otherwise.",
)
def judge_validity_check(settings: SettingsResource, judge_validity: pd.DataFrame) -> dg.AssetCheckResult:
    methods = settings.get().eval.judge_methods
    reports = validity_reports(judge_validity, methods)
    primary = primary_method(methods)
    metadata: dict[str, Any] = {"method": primary}
    for method, report in reports.items():
        for name in ("auc", "accuracy", "mean_matched", "mean_mismatched"):
            metadata[f"{method}_{name}"] = dg.MetadataValue.float(
                math.nan if report[name] is None else float(report[name])
            )
        metadata[f"{method}_n_null"] = report["n_null"]
        metadata[f"{method}_pairs"] = min(report["n_matched"], report["n_mismatched"])
    report = reports[primary]
    description = (
        f"judge validity AUC {report['auc']} ({primary}); below {report['min_auc']} its scores say little about "
        "the answers"
    )
    if report["too_few_pairs"]:
        description = (
            f"only {min(report['n_matched'], report['n_mismatched'])} scored pairs (at least {MIN_VALIDITY_PAIRS} "
            "needed): too few to trust the judge; raise eval.validity_sample or hold out more questions"
        )
    return dg.AssetCheckResult(
        passed=bool(report["passed"]), severity=dg.AssetCheckSeverity.WARN, metadata=metadata, description=description
    )


@dg.asset(
    group_name="evaluation",
    kinds={"faiss", "parquet"},
    code_version="1",
    deps=["vector_index"],
    metadata=reads_settings("eval.splits", "rag.top_k", "rag.max_question_chars", "models.embedding"),
)
def retrieval_metrics(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    index_store: VectorIndexResource,
    synthetic_qa: pd.DataFrame,
    rag_chunks: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """For every held-out question (all of `eval.splits`: retrieval is cheap), where its known source ranks among
    the `rag.top_k` retrieved chunks: the source chunk (same url, holding the answer passage) and the source
    page. Metadata: hit@1, hit@k and MRR for both."""
    config = settings.for_asset(context)
    k = config.rag.top_k
    questions = eval_questions(synthetic_qa, config.eval.splits, 0)
    embedding_model = embedder.embedder(config)
    index = index_store.load(expected_identity=embedding_model.identity)
    bot = RagBot(config, embedding_model, index, rag_chunks, chat=None)  # type: ignore[arg-type]  # retrieval only
    frame = retrieval_table(bot, questions, k)
    summary = retrieval_summary_of(frame, k)
    context.log.info(f"retrieval over {len(frame)} questions, k={k}: {summary}")
    return dg.Output(
        frame,
        data_version=dg.DataVersion(content_version(frame, ["qa_id", "chunk_rank", "page_rank"])),
        metadata={
            **{name.replace("@", "_at_"): dg.MetadataValue.float(float(v)) for name, v in summary.items()},
            "k": dg.MetadataValue.int(k),
            "questions": dg.MetadataValue.int(len(frame)),
            "unaskable": dg.MetadataValue.int(int(frame["error"].notna().sum())),
        },
    )


_ALL_PARTITIONS = {"allow_missing_partitions": True}


@dg.asset(
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    code_version="1",
    ins={
        "rouge_scores": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "judge_scores": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
        "finetuned_models": dg.AssetIn(metadata=_ALL_PARTITIONS, dagster_type=dg.Any),
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
    retrieval_metrics: pd.DataFrame,
    judge_validity: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """One row per model (rag, then each sweep point): backend and hyperparameters, questions answered and
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
    judge_columns = ["answered", "judge_expected", "judge_direct", "judge_valid_mass", "judge_distribution_json"]
    scores = rouge.merge(
        judge[["qa_id", "model", *judge_columns]], on=["qa_id", "model"], how="outer", suffixes=("", "_judge")
    )
    # A model whose rouge_scores partition is missing still counts its judged answers.
    scores["answered"] = scores["answered"].astype("boolean").fillna(scores["answered_judge"].astype("boolean"))
    scores["answered"] = scores["answered"].fillna(False).astype(bool)
    retrieval = None
    if not retrieval_metrics.empty:
        k = int(retrieval_metrics["k"].iloc[0])
        retrieval = _retrieval_columns(retrieval_summary_of(retrieval_metrics, k), k)
    reports = validity_reports(judge_validity, config.eval.judge_methods)
    models = model_keys(config)
    board, pairwise = leaderboard_table(
        scores, config.eval, models=models, model_info=finetuned, validity=reports, retrieval=retrieval
    )
    absent = [m for m in models if m not in set(scores["model"])]
    if absent:
        context.log.warning(f"no scores yet for {absent}: their rows are empty (materialize their partitions)")

    csv_path = eval_reports.write_csv(board, "leaderboard.csv")
    lr_png = plot_metrics_vs_learning_rate(board)
    dist_png = plot_score_distributions(judge, models)
    lr_path = eval_reports.write_png(lr_png, "leaderboard_metrics_vs_lr.png")
    dist_path = eval_reports.write_png(dist_png, "leaderboard_judge_distributions.png")
    pairwise_md = "\n\n".join(
        f"**{column}** (tie within {config.eval.tie_epsilon})\n\n"
        + metrics.leaderboard_markdown(table, list(table.columns))
        for column, table in pairwise.items()
    )
    return dg.Output(
        board,
        data_version=dg.DataVersion(content_version(board.fillna(-1), list(board.columns))),
        metadata={
            "summary": dg.MetadataValue.md(summary_markdown(board)),
            "table1_rouge": dg.MetadataValue.md(table1_markdown(board)),
            "table2_judge": dg.MetadataValue.md(table2_markdown(board)),
            "pairwise": dg.MetadataValue.md(pairwise_md or "no judge scores"),
            "plot_metrics_vs_lr": dg.MetadataValue.md(_md_image(lr_png, "metrics vs learning-rate multiplier")),
            "plot_judge_distributions": dg.MetadataValue.md(_md_image(dist_png, "judge score distributions")),
            "plot_files": dg.MetadataValue.json([str(lr_path), str(dist_path)]),
            "csv": dg.MetadataValue.path(str(csv_path)),
            "models": dg.MetadataValue.int(len(board)),
            "models_without_scores": dg.MetadataValue.json(absent),
            "answers_missing": dg.MetadataValue.int(int(board["n_missing"].sum())),
            "judge_validity": dg.MetadataValue.json(reports),
            "retrieval": dg.MetadataValue.json(retrieval or {}),
        },
    )


@dg.asset(
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    code_version="1",
    metadata=reads_settings(
        "eval.rouge_stemmer",
        "eval.rouge_tokenizer",
        "eval.tie_epsilon",
        "eval.bootstrap_resamples",
        "eval.seed",
        "models.embedding",
    ),
)
def external_evaluation(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    eval_reports: EvalReports,
) -> dg.Output[pd.DataFrame]:
    """Answers you bring: every *.jsonl, *.csv or *.parquet file in data/external/ (columns question, reference,
    model, answer; optional qa_id, judge_distribution, judge_direct_score, source_url, split — see README),
    scored like the pipeline's own (ROUGE, similarity, the judge results given in the file; no model runs), with
    a leaderboard of their own written to external_leaderboard.parquet and .csv. No files: an empty result."""
    config = settings.for_asset(context)
    directory = eval_reports.external_dir()
    answers, files = read_external_dir(directory)
    if not files:
        note = (
            f"no answers files in {directory}: put *.jsonl, *.csv or *.parquet files there (README, 'Evaluating "
            "your own answers'); external_leaderboard was not written"
        )
        context.log.info(note)
        return dg.Output(
            pd.DataFrame(columns=EXTERNAL_SCORE_COLUMNS),
            metadata={"note": dg.MetadataValue.text(note), "files": dg.MetadataValue.json([])},
        )
    embedding_model = embedder.embedder(config)
    scores, board, pairwise = evaluate_external(answers, config.eval, embedding_model, embedder.cache())
    parquet_path = eval_reports.write_parquet(board, "external_leaderboard.parquet")
    csv_path = eval_reports.write_csv(board, "external_leaderboard.csv")
    context.log.info(f"{len(scores)} answers of {board['model'].tolist()} from {[p.name for p in files]}")
    return dg.Output(
        scores,
        data_version=dg.DataVersion(content_version(scores.fillna(-1), list(scores.columns))),
        metadata={
            "files": dg.MetadataValue.json([p.name for p in files]),
            "answers": dg.MetadataValue.int(len(scores)),
            "models": dg.MetadataValue.json(board["model"].tolist()),
            "answers_missing": dg.MetadataValue.int(int(board["n_missing"].sum())),
            "leaderboard": dg.MetadataValue.md(summary_markdown(board)),
            "pairwise": dg.MetadataValue.md(
                "\n\n".join(
                    f"**{c}**\n\n" + metrics.leaderboard_markdown(t, list(t.columns)) for c, t in pairwise.items()
                )
                or "no judge scores in the files"
            ),
            "leaderboard_parquet": dg.MetadataValue.path(str(parquet_path)),
            "leaderboard_csv": dg.MetadataValue.path(str(csv_path)),
            "preview": dg.MetadataValue.md(markdown_preview(scores[["model", "question", "answer", "rougeL_f1"]])),
        },
    )
