"""The golden questions through Dagster, and `mebot eval --golden`.

- `golden_questions`: the file at `eval.golden_path`, validated (an error names the line and the field), as a
  table. Its data version is the file's sha256 and its code version carries the sha256 seen when the definitions
  were built, so editing the file makes it, and everything that reads it, stale. A root: `mebot run` reads the
  file every time, as it crawls the site every time.
- `golden_answers`: one partition per model, exactly the partitions of `model_answers`, asked by the same
  answerer (`answers.answer_with_model`): question_id, model, question, answer, sources_json, latency_s, error.
- `golden_scores`: per model, per question (`golden.score_golden_answers`): right, declined, source page rank.
- `golden_summary`: one row per model, the leaderboard's golden columns (rates with bootstrap 95% intervals).
An empty `eval.golden_path` makes every one of them an empty table with a note, never an error.
"""

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mebot.assets.evaluation.answers import (
    ModelInputs,
    answer_with_model,
    model_keys,
    model_partitions,
    per_model_answers_asset,
)
from mebot.assets.evaluation.external import EXTERNAL_FORMATS, ExternalAnswersError, _records
from mebot.assets.evaluation.golden import (
    QUESTION_COLUMNS,
    SCORE_COLUMNS,
    GoldenSet,
    golden_from_frame,
    golden_summary,
    golden_to_frame,
    load_golden,
    match_questions,
    score_golden_answers,
)
from mebot.assets.evaluation.golden_site import golden_site_mismatch, skipped_note, sources_not_crawled
from mebot.assets.evaluation.leaderboard import GOLDEN_COLUMNS, GOLDEN_METRICS, golden_columns, partition_frames
from mebot.assets.evaluation.reports import golden_markdown
from mebot.assets.outputs import content_output, versioned_output
from mebot.resources.chat import ChatModelResource
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.parquet_io import content_version, markdown_preview
from mebot.resources.settings import PROJECT_ROOT, EvalSettings, Settings, SettingsResource, reads_settings
from mebot.resources.vector_index import VectorIndexResource

GOLDEN_ANSWER_COLUMNS = ["question_id", "model", "question", "answer", "sources_json", "latency_s", "error"]
GOLDEN_SUMMARY_COLUMNS = ["model", *GOLDEN_COLUMNS]
NO_GOLDEN = "eval.golden_path is empty: no golden questions (write some: README, 'Golden questions')"
PREVIEW_ANSWERS = 5


def golden_file(settings: Settings) -> Path | None:
    """The golden file named by eval.golden_path (relative to the project root); None when it is empty."""
    return settings.resolve_path(settings.eval.golden_path) if settings.eval.golden_path.strip() else None


def file_sha256(path: Path | None) -> str:
    """The file's sha256 (hex); "none" without a path, "missing" for a file that cannot be read."""
    if path is None:
        return "none"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def _empty(columns: list[str], note: str, metadata: dict[str, Any] | None = None) -> dg.Output[pd.DataFrame]:
    frame = pd.DataFrame(columns=columns)
    return versioned_output(frame, "empty", {"note": dg.MetadataValue.text(note), **(metadata or {})})


def _golden_set(golden_questions: pd.DataFrame, settings: Settings) -> GoldenSet:
    return golden_from_frame(golden_questions, settings.eval.golden_path)


# ------------------------------------------------------------------------------------------- golden_questions


def _golden_questions(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.Output[pd.DataFrame]:
    """The golden questions of `eval.golden_path`, validated: question_id, question, answerable, source (the page
    that states the answer), facts_json (the accepted facts), line (in the file). Data version: the file's
    sha256. An invalid file fails here, naming the line and the field to fix."""
    config = settings.for_asset(context)
    path = golden_file(config)
    if path is None:
        context.log.info(NO_GOLDEN)
        return _empty(QUESTION_COLUMNS, NO_GOLDEN, {"golden_sha256": dg.MetadataValue.text("none")})
    sha256 = file_sha256(path)
    golden = load_golden(path)
    mismatch = golden_site_mismatch(golden.site, config.site.start_urls, config.site.local_dir, PROJECT_ROOT)
    if mismatch:
        note = skipped_note(str(path), mismatch)
        context.log.warning(note)
        return _empty(QUESTION_COLUMNS, note, {"golden_sha256": dg.MetadataValue.text(sha256)})
    frame = golden_to_frame(golden)
    answerable = frame[frame["answerable"]]
    return versioned_output(
        frame,
        sha256,
        {
            "golden_file": dg.MetadataValue.path(str(path)),
            "golden_sha256": dg.MetadataValue.text(sha256),
            "questions": dg.MetadataValue.int(len(frame)),
            "answerable": dg.MetadataValue.int(len(answerable)),
            "unanswerable": dg.MetadataValue.int(len(frame) - len(answerable)),
            "source_pages": dg.MetadataValue.int(int(answerable["source"].nunique())),
            "questions_preview": dg.MetadataValue.md(
                markdown_preview(frame[["question_id", "question", "source", "facts_json"]], rows=8)
            ),
        },
    )


def golden_questions_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`golden_questions`; its code version carries the golden file's sha256 as the definitions were built."""
    sha256 = file_sha256(golden_file(graph_settings))
    return dg.asset(
        name="golden_questions",
        group_name="evaluation",
        kinds={"yaml", "parquet"},
        code_version=f"1+g{sha256[:12]}",
        metadata=reads_settings("eval.golden_path", "site.start_urls", "site.local_dir"),
    )(_golden_questions)


# --------------------------------------------------------------------------------------------- golden_answers


def _golden_answers(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    embedder: EmbedderResource,
    index_store: VectorIndexResource,
    golden_questions: pd.DataFrame,
    rag_chunks: pd.DataFrame,
    finetuned_models: pd.DataFrame | None,
) -> dg.Output[pd.DataFrame]:
    """One model's answers to the golden questions, asked exactly as model_answers asks it (`rag`: retrieval +
    the chat model, with sources; a sweep point: its fine-tuned model). Columns: question_id, model, question,
    answer, sources_json (the retrieved pages, best first), latency_s, error (set when the model gave nothing
    usable)."""
    config = settings.for_asset(context)
    key = context.partition_key
    if golden_questions.empty:
        return _empty(GOLDEN_ANSWER_COLUMNS, NO_GOLDEN)
    not_crawled = sources_not_crawled(_golden_set(golden_questions, config), rag_chunks["url"].astype(str))
    if not_crawled:
        note = skipped_note(config.eval.golden_path, not_crawled)
        context.log.warning(note)
        return _empty(GOLDEN_ANSWER_COLUMNS, note)
    inputs = ModelInputs(chat_model, embedder, index_store, rag_chunks, finetuned_models)
    replies, answerer = answer_with_model(
        key, golden_questions["question"].tolist(), config, inputs, context.log.info, "golden questions"
    )
    frame = pd.DataFrame(
        {
            "question_id": golden_questions["question_id"].to_numpy(),
            "model": key,
            "question": golden_questions["question"].to_numpy(),
            "answer": replies["answer"].to_numpy(),
            "sources_json": replies["sources"].to_numpy(),
            "latency_s": replies["latency_s"].to_numpy(dtype=float),
            "error": replies["error"].to_numpy(),
        },
        columns=GOLDEN_ANSWER_COLUMNS,
    )
    errors = frame["error"].notna()
    if errors.any():
        context.log.warning(f"{key}: {int(errors.sum())} of {len(frame)} golden questions got no usable answer")
    answered = frame.loc[~errors, "latency_s"]
    return content_output(
        frame,
        {
            "model": dg.MetadataValue.text(key),
            "backend": dg.MetadataValue.text(answerer.backend),
            "chat_model": dg.MetadataValue.text(answerer.client.identity),
            "questions": dg.MetadataValue.int(len(frame)),
            "answered": dg.MetadataValue.int(int((~errors).sum())),
            "errors": dg.MetadataValue.int(int(errors.sum())),
            "latency_s_p50": dg.MetadataValue.float(round(float(answered.median()), 3) if len(answered) else 0.0),
            **answerer.metadata,
            **answerer.client.usage.as_metadata(),
            "answers_preview": dg.MetadataValue.md(markdown_preview(frame[["question", "answer", "error"]], rows=8)),
        },
        version_of=["question_id", "answer", "sources_json", "error"],
    )


def golden_answers_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`golden_answers`, partitioned like model_answers: `rag` and every sweep point of `graph_settings`."""
    return per_model_answers_asset("golden_answers", _golden_answers, graph_settings)


# ---------------------------------------------------------------------------------------------- golden_scores


def _mark(row: Any) -> str:
    if row.answerable:
        return "✓ right" if row.correct else ("✗ declined" if row.refused else "✗ wrong")
    return "✓ declined" if row.refused else "✗ answered"


def answers_preview(scores: pd.DataFrame, rows: int = PREVIEW_ANSWERS) -> str:
    """Up to `rows` scored answers with a right/wrong mark: right and wrong answers and an unanswerable question,
    as far as there are any, so the preview shows what the figures count."""
    if scores.empty:
        return "no answers"
    marked = scores.assign(mark=[_mark(r) for r in scores.itertuples(index=False)])
    groups = [
        marked[marked["answerable"] & marked["correct"]],
        marked[marked["answerable"] & ~marked["correct"]],
        marked[~marked["answerable"]],
    ]
    picked = pd.concat([g.head(2) for g in groups])
    picked = pd.concat([picked, marked.drop(picked.index)]).head(rows)
    return markdown_preview(picked[["model", "mark", "question", "answer", "source_rank"]], rows=rows)


def summary_metadata(summary: dict[str, float | int], suffix: str = "") -> dict[str, dg.MetadataValue]:
    """One model's golden_summary as numeric metadata (the Plots tab draws each key across materializations);
    NaN figures are left out, not shown as 0."""
    metadata: dict[str, dg.MetadataValue] = {}
    for name, value in summary.items():
        if isinstance(value, int):
            metadata[f"{name}{suffix}"] = dg.MetadataValue.int(value)
        elif not math.isnan(value):
            metadata[f"{name}{suffix}"] = dg.MetadataValue.float(round(float(value), 4))
    return metadata


def _golden_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    golden_answers: pd.DataFrame,
    golden_questions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """One model's golden answers scored without a judge: correct (an answerable question's answer states an
    accepted fact), refused (declines), false_refusal (declines an answerable one), source_rank (the source page
    among the first rag.top_k retrieved), latency. Metadata: fact accuracy, refusal accuracy, false refusal rate,
    hit@k, MRR, latency p50/p95, and five answers marked right or wrong."""
    config = settings.for_asset(context)
    if golden_questions.empty:
        return _empty(SCORE_COLUMNS, NO_GOLDEN)
    if golden_answers.empty:  # golden_answers skipped the file (its note says why)
        return _empty(SCORE_COLUMNS, "golden questions skipped: golden_answers holds none (see its note)")
    # every golden question gets a row: one the answers lack (written for an older file) scores as unanswered
    answers = golden_questions[["question_id"]].merge(golden_answers.drop(columns=["model"]), how="left")
    answers["model"] = context.partition_key
    scores = score_golden_answers(_golden_set(golden_questions, config), answers, k=config.rag.top_k)
    summary = golden_summary(scores).get(context.partition_key, {})
    context.log.info(f"{context.partition_key}: {summary}")
    return content_output(
        scores,
        {
            **summary_metadata(summary),
            "k": dg.MetadataValue.int(config.rag.top_k),
            "answers_preview": dg.MetadataValue.md(answers_preview(scores)),
        },
        version_of=["question_id", "correct", "refused", "source_rank"],
    )


def golden_scores_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`golden_scores`, one partition per model of `graph_settings`."""
    return dg.asset(
        name="golden_scores",
        group_name="evaluation",
        kinds={"pandas", "parquet"},
        code_version="1",
        partitions_def=model_partitions(graph_settings),
        metadata=reads_settings("rag.top_k"),
    )(_golden_scores)


# --------------------------------------------------------------------------------------------- golden_summary


def summary_table(scores: pd.DataFrame, eval_settings: EvalSettings, models: list[str]) -> pd.DataFrame:
    """GOLDEN_SUMMARY_COLUMNS, one row per model in `models` order (then any other model scored)."""
    columns = golden_columns(scores, eval_settings)
    order = [*models, *sorted(set(columns) - set(models))]
    rows = [{"model": model, **columns[model]} for model in order if model in columns]
    return pd.DataFrame(rows, columns=GOLDEN_SUMMARY_COLUMNS).astype({c: "float64" for c in GOLDEN_COLUMNS})


@dg.asset(
    name="golden_summary",
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    code_version="1",
    ins={"golden_scores": dg.AssetIn(metadata={"allow_missing_partitions": True}, dagster_type=dg.Any)},
    metadata=reads_settings("eval.bootstrap_resamples", "eval.seed"),
)
def golden_summary_asset(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    golden_scores: dict[str, pd.DataFrame] | pd.DataFrame | None,
) -> dg.Output[pd.DataFrame]:
    """The golden figures of every model side by side (no judge needed): fact accuracy, refusal accuracy, false
    refusal rate, source page hit@k and MRR, latency p50, each with a bootstrap 95% interval; latency p95; the
    questions counted. Metadata: each figure per model (`fact_accuracy[rag]`, ... for the Plots tab), the table
    in markdown, five answers marked right or wrong."""
    config = settings.for_asset(context)
    frames = [f for f in partition_frames(golden_scores) if not f.empty]
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    if scores.empty:
        note = f"no golden scores: {NO_GOLDEN}" if not config.eval.golden_path.strip() else "no golden_scores yet"
        return _empty(GOLDEN_SUMMARY_COLUMNS, note)
    table = summary_table(scores, config.eval, model_keys(config))
    metadata: dict[str, dg.MetadataValue] = {}
    for model, summary in golden_summary(scores).items():  # the figures; the counts are in the table
        metadata |= summary_metadata({k: v for k, v in summary.items() if not k.startswith("n_")}, f"[{model}]")
    return versioned_output(
        table,
        content_version(table.fillna(-1), list(table.columns)),
        {
            **metadata,
            "models": dg.MetadataValue.json(table["model"].tolist()),
            "summary": dg.MetadataValue.md(golden_markdown(table)),
            "answers_preview": dg.MetadataValue.md(answers_preview(scores)),
        },
    )


# ---------------------------------------------------------------------------------------- mebot eval --golden

GOLDEN_FILE_COLUMNS = ("question", "model", "answer")


def read_golden_answers(path: str | Path) -> pd.DataFrame:
    """A bring-your-own answers file (.jsonl, .csv or .parquet) to score against golden questions: columns
    question, model, answer; optional sources (a JSON list of URLs or of {url} objects, best first) and latency_s.
    Adds `where` (the line or row, for messages). ExternalAnswersError names the file and what to fix."""
    path = Path(path)
    if path.suffix.lower() not in EXTERNAL_FORMATS:
        raise ExternalAnswersError(f"{path}: answers files must be {', '.join(EXTERNAL_FORMATS)}")
    if not path.is_file():
        raise ExternalAnswersError(f"{path}: no such answers file")
    try:
        columns, records = _records(path, path.suffix.lower())
    except ExternalAnswersError:
        raise
    except Exception as error:  # a corrupt Parquet file, undecodable text
        raise ExternalAnswersError(f"{path}: could not be read ({error})") from error
    missing = [c for c in GOLDEN_FILE_COLUMNS if c not in columns]
    if missing:
        raise ExternalAnswersError(f"{path}: missing column(s) {', '.join(missing)}; needs question, model, answer")
    rows = []
    for where, record in records:
        if not str(record.get("question") or "").strip() or not str(record.get("model") or "").strip():
            raise ExternalAnswersError(f"{path}, {where}: question and model must not be empty")
        sources = record.get("sources")
        rows.append(
            {
                "where": where,
                "question": str(record["question"]).strip(),
                "model": str(record["model"]).strip(),
                "answer": None if record.get("answer") is None else str(record["answer"]),
                "sources_json": sources if isinstance(sources, str) else json.dumps(list(sources or [])),
                "latency_s": float(record["latency_s"]) if record.get("latency_s") not in (None, "") else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["where", "question", "model", "answer", "sources_json", "latency_s"])


def golden_file_report(answers: pd.DataFrame, golden: GoldenSet, eval_settings: EvalSettings, k: int) -> dict[str, Any]:
    """`mebot eval FILE --golden`'s result: {"markdown": ..., "json": ...} with the golden figures per model (with
    intervals) over the golden questions the file answers (a model that skips one another model answered has it
    wrong), and the rows whose question is not a golden question, counted and listed."""
    matched, unmatched = match_questions(golden, answers)
    asked = set(matched["question_id"])
    subset = GoldenSet(golden.path, tuple(q for q in golden.questions if q.id in asked))
    try:
        scores = score_golden_answers(subset, matched, k=k)
    except ValueError as error:
        raise ExternalAnswersError(str(error)) from error
    table = summary_table(scores, eval_settings, list(dict.fromkeys(answers["model"])))
    summary = golden_summary(scores)
    listed = unmatched[["where", "model", "question"]].to_dict("records")
    parts = [golden_markdown(table) or "no golden figures: no answer matches a golden question"]
    parts.append(
        f"{len(matched)} answers matched {len(subset.questions)} of the {len(golden.questions)} golden questions "
        f"of {golden.path}; {len(unmatched)} matched none"
        + (":\n" + "\n".join(f"  {r['where']} ({r['model']}): {r['question']}" for r in listed) if listed else "")
    )
    figures = table.set_index("model")
    models = {}
    for model in figures.index:
        intervals = {
            metric.removeprefix("golden_"): [
                figures.loc[model, f"{metric}_ci_low"],
                figures.loc[model, f"{metric}_ci_high"],
            ]
            for metric in GOLDEN_METRICS
        }
        models[model] = _json_safe({**summary[model], "intervals": intervals})
    report = {
        "golden": golden.path,
        "golden_questions": len(golden.questions),
        "questions_answered": len(subset.questions),
        "k": k,
        "matched": len(matched),
        "unmatched": listed,
        "models": models,
    }
    return {"markdown": "\n\n".join(parts), "json": report}


def _json_safe(value: Any) -> Any:
    """Numbers as JSON has them: NaN (nothing to count) as null, numpy numbers as plain ones."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # a numpy number
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value
