"""Answers you bring, scored like the pipeline's own: the reader of bring-your-own answers files, `mebot eval FILE`'s
functions, and `external_evaluation` (every file in `data/external/`, with a leaderboard of its own written to
`external_leaderboard.parquet/.csv`). The judge's results come from the files; no model runs.
"""

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.evaluation.answers import answered_mask
from mebot.assets.evaluation.judge_reply import distribution_from_mapping, score_key
from mebot.assets.evaluation.leaderboard import leaderboard_table
from mebot.assets.evaluation.reports import EvalReports, pairwise_markdown, summary_markdown
from mebot.assets.evaluation.rouge import ROUGE_SCORE_COLUMNS, score_texts
from mebot.assets.outputs import content_output
from mebot.resources.embeddings import Embedder, EmbedderResource, EmbeddingCache
from mebot.resources.files import write_atomically
from mebot.resources.hashing import stable_hash
from mebot.resources.parquet_io import markdown_preview, write_parquet_atomically
from mebot.resources.settings import EvalSettings, SettingsResource, reads_settings

EXTERNAL_REQUIRED_COLUMNS = ("question", "reference", "model", "answer")
EXTERNAL_OPTIONAL_COLUMNS = ("qa_id", "judge_distribution", "judge_direct_score", "source_url", "split")
EXTERNAL_COLUMNS = [
    *EXTERNAL_REQUIRED_COLUMNS,
    "qa_id",
    "judge_distribution_json",
    "judge_direct_score",
    "source_url",
    "split",
]
EXTERNAL_FORMATS = (".jsonl", ".csv", ".parquet")


class ExternalAnswersError(ValueError):
    """A bring-your-own answers file that cannot be used; the message names the file, the line and the fix."""


def external_qa_id(question: str, reference: str) -> str:
    """A stable id for a question without one: the same question and reference always get the same id."""
    return stable_hash(question, reference)


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _records(path: Path, suffix: str) -> tuple[list[str], list[tuple[str, dict]]]:
    """(the columns, [(where, record), …]) where `where` names the record's line or row for error messages."""
    if suffix == ".jsonl":
        records, columns = [], {}
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ExternalAnswersError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
                if not isinstance(record, dict):
                    raise ExternalAnswersError(f"{path}, line {number}: expected a JSON object, one per line")
                columns |= dict.fromkeys(record)
                records.append((f"line {number}", record))
        return list(columns), records
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])  # reads the header line
            records, start = [], reader.line_num + 1
            for record in reader:
                # A quoted cell may span lines: name the line the record starts on.
                records.append((f"line {start}", record))
                start = reader.line_num + 1
            return columns, records
    frame = pd.read_parquet(path)
    records = [
        (f"row {i}", {k: (None if _is_na_scalar(v) else v) for k, v in record.items()})
        for i, record in enumerate(frame.to_dict("records"), start=1)
    ]
    return [str(c) for c in frame.columns], records


def _is_na_scalar(value: object) -> bool:
    return not isinstance(value, list | dict | np.ndarray) and bool(pd.isna(value))


def _judge_distribution_json(value: object) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"judge_distribution is not valid JSON ({error.msg})") from error
    elif isinstance(value, list | np.ndarray) and all(isinstance(p, tuple | list) and len(p) == 2 for p in value):
        value = dict(value)  # a Parquet map column reads as [(key, value), …]
    if isinstance(value, Mapping):  # a Parquet struct column fills the keys a row lacks with None
        value = {k: v for k, v in value.items() if v is not None}
    distribution_from_mapping(value)  # raises on a bad key or value
    canonical = {score_key(k): float(v) for k, v in value.items()}
    return json.dumps({str(k): canonical[k] for k in sorted(canonical)})


def _direct_score(value: object) -> float:
    if _missing(value):
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"judge_direct_score is {value!r}; use a number from 0 to 10, or leave it empty")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"judge_direct_score {value!r} is not a number; use 0 to 10, or leave it empty") from None
    if not 0 <= score <= 10:
        raise ValueError(f"judge_direct_score {value!r} is outside 0..10")
    return score


def read_external_answers(path: str | Path) -> pd.DataFrame:
    """Answers produced elsewhere, to evaluate alongside the pipeline's own: a .jsonl, .csv or .parquet file.

    Required columns: question, reference, model, answer (answer may be empty). Optional: qa_id (default: a
    stable hash of question + reference), judge_distribution (an object {"0": p0, …, "10": p10}, or its JSON
    text in CSV; need not be normalised), judge_direct_score (0..10 or empty), source_url, split. Returns
    EXTERNAL_COLUMNS: the required ones, qa_id, judge_distribution_json (canonical JSON or None),
    judge_direct_score (float, NaN when absent), source_url and split (None when absent). Any problem raises
    ExternalAnswersError naming the file and the line (row, for Parquet)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTERNAL_FORMATS:
        raise ExternalAnswersError(
            f"{path}: answers files must be {', '.join(EXTERNAL_FORMATS)}; {suffix or 'no extension'} is not read"
        )
    if not path.is_file():
        raise ExternalAnswersError(f"{path}: no such answers file")
    try:
        columns, records = _records(path, suffix)
    except ExternalAnswersError:
        raise
    except Exception as error:  # a corrupt Parquet file, undecodable text
        raise ExternalAnswersError(f"{path}: could not be read as {suffix[1:]} ({error})") from error
    missing = [c for c in EXTERNAL_REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ExternalAnswersError(
            f"{path}: missing required column(s) {', '.join(missing)}; every row needs "
            f"{', '.join(EXTERNAL_REQUIRED_COLUMNS)}"
        )
    if not records:
        raise ExternalAnswersError(f"{path}: has no answers (no rows)")
    rows, seen = [], {}
    for where, record in records:
        try:
            row = _external_row(record)
        except ValueError as error:
            raise ExternalAnswersError(f"{path}, {where}: {error}") from error
        key = (row["qa_id"], row["model"])
        if key in seen:
            raise ExternalAnswersError(
                f"{path}, {where}: model {row['model']!r} already answered this question ({seen[key]}); "
                "keep one answer per model and question"
            )
        seen[key] = where
        rows.append(row)
    # object columns: pandas would turn the None of an absent value into NaN in a str column
    return pd.DataFrame(rows, columns=EXTERNAL_COLUMNS, dtype=object).astype({"judge_direct_score": float})


def _external_row(record: dict) -> dict:
    for column in ("question", "reference", "model"):
        if _missing(record.get(column)):
            raise ValueError(f"{column} is empty")
    text = {c: str(record[c]).strip() for c in ("question", "reference", "model")}
    answer = record.get("answer")
    qa_id = record.get("qa_id")
    return {
        **text,
        "answer": "" if _missing(answer) else str(answer),
        "qa_id": external_qa_id(text["question"], text["reference"]) if _missing(qa_id) else str(qa_id).strip(),
        "judge_distribution_json": _judge_distribution_json(record.get("judge_distribution")),
        "judge_direct_score": _direct_score(record.get("judge_direct_score")),
        "source_url": None if _missing(record.get("source_url")) else str(record["source_url"]).strip(),
        "split": None if _missing(record.get("split")) else str(record["split"]).strip(),
    }


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


def evaluate_external(
    answers: pd.DataFrame, eval_settings: EvalSettings, embedder: Embedder | None, cache: EmbeddingCache | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(per-row scores EXTERNAL_SCORE_COLUMNS, leaderboard, pairwise tables) for bring-your-own answers (the
    frame of read_external_answers, with an optional source_file column). The judge's results come from
    the file (judge_distribution → expected score, judge_direct_score); no model runs."""
    answers = answers.reset_index(drop=True)
    answered = answered_mask(answers["answer"])
    scores = score_texts(
        answers["reference"].astype(str).tolist(),
        answers["answer"].fillna("").astype(str).tolist(),
        answered,
        eval_settings,
        embedder,
        cache,
    )
    distributions = [
        None if pd.isna(text) or text is None else distribution_from_mapping(json.loads(text))
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
    if pairwise:
        parts.append(pairwise_markdown(pairwise, f"Pairwise by {{column}} (tie within {tie_epsilon}):"))
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
    write_atomically(csv_path, board.to_csv(index=False).encode("utf-8"))
    return [*paths, csv_path]


def read_external_dir(directory: Path) -> tuple[pd.DataFrame, list[Path]]:
    """Every answers file (*.jsonl, *.csv, *.parquet) in `directory`, read and concatenated with source_file."""
    files = (
        sorted(p for p in directory.glob("*") if p.is_file() and p.suffix.lower() in EXTERNAL_FORMATS)
        if directory.is_dir()
        else []
    )
    frames = [read_external_answers(path).assign(source_file=path.name) for path in files]
    columns = [*EXTERNAL_COLUMNS, "source_file"]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    duplicated = frame[frame.duplicated(["qa_id", "model"], keep=False)]
    if len(duplicated):
        clash = duplicated.groupby(["model", "qa_id"])["source_file"].apply(list).head(3).to_dict()
        raise ExternalAnswersError(
            f"the same model answers the same question in more than one file of {directory}: {clash}; rename the "
            "model in one of them or remove the duplicate"
        )
    return frame, files


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
    return content_output(
        scores,
        {
            "files": dg.MetadataValue.json([p.name for p in files]),
            "answers": dg.MetadataValue.int(len(scores)),
            "models": dg.MetadataValue.json(board["model"].tolist()),
            "answers_missing": dg.MetadataValue.int(int(board["n_missing"].sum())),
            "leaderboard": dg.MetadataValue.md(summary_markdown(board)),
            "pairwise": dg.MetadataValue.md(
                pairwise_markdown(pairwise, "**{column}**") or "no judge scores in the files"
            ),
            "leaderboard_parquet": dg.MetadataValue.path(str(parquet_path)),
            "leaderboard_csv": dg.MetadataValue.path(str(csv_path)),
            "preview": dg.MetadataValue.md(markdown_preview(scores[["model", "question", "answer", "rougeL_f1"]])),
        },
    )
