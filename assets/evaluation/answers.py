"""Stage 8: every model answers the held-out questions (`model_answers`), one partition per model.

Partitions: `rag` (retrieval + the chat model, `assets/index/rag.py` RagBot, exactly what `mebot ask` and the
server do) and one per point of `finetune.sweep` (the fine-tuned model of the same `finetuned_models` partition,
asked in its training format by `assets/finetune/formats.py` ask_finetuned). The `rag` partition maps to no
`finetuned_models` partition (a StaticPartitionMapping that leaves it out), so it never waits for fine-tuning.
The partitions come from the settings the graph is built from (`model_answers_asset(settings)`).

The questions are the `synthetic_qa` rows whose split is in `eval.splits`, at most `eval.max_questions` of them:
a deterministic sample by a hash of qa_id, so every model answers the same questions and growing the sample only
adds questions (earlier answers stay in the LLM call cache). A question the model cannot answer (empty output,
an over-long question) is kept as a row with `error` set and no answer; the metrics count it as missing.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from mebot.assets.finetune.dataset import sweep_partitions
from mebot.assets.finetune.formats import adapter_chat_settings, ask_finetuned
from mebot.assets.index.rag import ModelOutputError, QuestionError, RagBot, clean_answer
from mebot.assets.outputs import content_output
from mebot.resources.chat import ChatClient, ChatModelResource
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.hashing import seeded_order
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import ChatModelSettings, Settings, SettingsResource, reads_settings
from mebot.resources.vector_index import VectorIndexResource

RAG_MODEL = "rag"
MODEL_ANSWER_COLUMNS = [
    "qa_id",
    "model",
    "question",
    "reference",
    "answer",
    "sources",
    "source_url",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "cached",
    "error",
]


class EmptyEvalSplitError(ValueError):
    """No question to evaluate on: the splits in eval.splits hold no synthetic_qa row."""


# ------------------------------------------------------------------------------------------------ partitions


def model_keys(settings: Settings) -> list[str]:
    """`rag`, then the sweep points' keys (the `finetuned_models` partitions)."""
    return [RAG_MODEL, *sweep_partitions(settings).get_partition_keys()]


def model_partitions(settings: Settings) -> dg.StaticPartitionsDefinition:
    """One partition per evaluated model: `rag` and every sweep point."""
    return dg.StaticPartitionsDefinition(model_keys(settings))


def finetuned_partition_mapping(settings: Settings) -> dg.StaticPartitionMapping:
    """Sweep key → the same model_answers key; `rag` has no upstream partition, so it never waits for training."""
    return dg.StaticPartitionMapping({key: key for key in sweep_partitions(settings).get_partition_keys()})


# ------------------------------------------------------------------------------------------------- questions


def eval_questions(qa: pd.DataFrame, splits: list[str], max_questions: int) -> pd.DataFrame:
    """The rows of synthetic_qa in `splits`; at most `max_questions` (0: all) chosen by a hash of qa_id, in their
    original order. Raises EmptyEvalSplitError naming eval.splits when no row is left."""
    chosen = qa[qa["split"].isin(splits)]
    if chosen.empty:
        available = qa["split"].value_counts().to_dict() if "split" in qa.columns else {}
        raise EmptyEvalSplitError(
            f"synthetic_qa has no question in eval.splits = {list(splits)} (questions by split: {available or 'none'});"
            " add a split that has questions to eval.splits, or write more questions (qa.split, qa.max_passages)"
        )
    if 0 < max_questions < len(chosen):
        keep = set(seeded_order(chosen["qa_id"], "eval-sample")[:max_questions])
        chosen = chosen[chosen["qa_id"].isin(keep)]
    return chosen.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------- answers


@dataclass
class Reply:
    """One model's answer to one question, whatever the model."""

    answer: str
    sources: list[dict] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False


Answerer = Callable[[str], Reply]


def rag_answerer(bot: RagBot) -> Answerer:
    def ask(question: str) -> Reply:
        result = bot.ask(question)
        return Reply(
            answer=result.answer,
            sources=[{"url": s.url, "chunk_id": s.chunk_id, "score": s.score} for s in result.sources],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=result.latency_s,
            cached=result.cached,
        )

    return ask


def finetuned_answerer(client: ChatClient, settings: Settings) -> Answerer:
    def ask(question: str) -> Reply:
        text, result = ask_finetuned(client, settings, question)
        return Reply(
            answer=clean_answer(text, result.model),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=round(result.latency_s, 3),
            cached=result.cached,
        )

    return ask


def answer_questions(
    questions: pd.DataFrame, model: str, ask: Answerer, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """MODEL_ANSWER_COLUMNS for every question; a QuestionError or ModelOutputError is that row's `error`."""
    rows = []
    total = len(questions)
    for done, row in enumerate(questions.itertuples(index=False), start=1):
        record = {
            "qa_id": row.qa_id,
            "model": model,
            "question": row.question,
            "reference": row.answer,
            "source_url": row.url,
        }
        try:
            reply = ask(row.question)
        except (QuestionError, ModelOutputError) as exc:
            record.update(answer=None, sources="[]", prompt_tokens=0, completion_tokens=0, latency_s=0.0)
            record.update(cached=False, error=f"{type(exc).__name__}: {exc}")
        else:
            record.update(
                answer=reply.answer,
                sources=json.dumps(reply.sources),
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                latency_s=reply.latency_s,
                cached=reply.cached,
                error=None,
            )
        rows.append(record)
        if progress is not None:
            progress(done, total)
    frame = pd.DataFrame(rows, columns=MODEL_ANSWER_COLUMNS)
    return frame.astype(
        {"prompt_tokens": "int64", "completion_tokens": "int64", "latency_s": "float64", "cached": "bool"}
    )


def finetuned_chat_settings(settings: Settings, row: pd.Series) -> tuple[ChatModelSettings, str | None]:
    """(chat settings, LoRA path) to ask the model of one `finetuned_models` row.

    A local adapter belongs to the bundled GGUF it was trained on, so it runs on that whatever models.chat says
    (as finetuned_models' own sample answer does); an OpenAI fine-tune is a model id on models.chat's endpoint."""
    backend = str(row.get("backend", "local_lora"))
    if backend == "openai":
        model_id = row.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(
                f"finetuned_models[{row.get('partition_key')}] has backend openai but no model_id; re-materialize it"
            )
        chat = settings.models.chat
        base = chat if chat.provider == "openai" else ChatModelSettings(provider="openai")
        return base.model_copy(update={"model": model_id}), None
    adapter = row.get("adapter_path")
    if not isinstance(adapter, str) or not adapter:
        raise ValueError(f"finetuned_models[{row.get('partition_key')}] has no adapter_path; re-materialize it")
    return adapter_chat_settings(settings), adapter


def _finetuned_row(key: str, finetuned: pd.DataFrame | None) -> pd.Series:
    if finetuned is None or finetuned.empty:
        raise FileNotFoundError(
            f"finetuned_models[{key}] is not materialized yet: train it first "
            f"(mebot run --select finetuned_models, or Materialize partition {key} in the UI)"
        )
    return finetuned.iloc[0]


def answered_mask(answers: pd.Series, errors: pd.Series | None = None) -> pd.Series:
    """True where the model gave an answer: some text, and no error (when `errors` is given)."""
    has_text = answers.fillna("").astype(str).str.strip() != ""
    return has_text if errors is None else has_text & errors.isna()


def _model_answers(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    embedder: EmbedderResource,
    index_store: VectorIndexResource,
    synthetic_qa: pd.DataFrame,
    rag_chunks: pd.DataFrame,
    finetuned_models: pd.DataFrame | None,
) -> dg.Output[pd.DataFrame]:
    """One model's answers to the held-out questions (`eval.splits`, sampled to `eval.max_questions` by qa_id
    hash, the same for every model). Partition `rag`: retrieval over the vector index + the chat model, with
    the sources; a sweep partition: that point's fine-tuned model, asked in its training format. Columns: qa_id,
    model, question, reference (the answer passage), answer, sources (JSON), source_url, tokens, latency, cached,
    error (set when the model gave nothing usable for that row)."""
    config = settings.for_asset(context)
    key = context.partition_key
    questions = eval_questions(synthetic_qa, config.eval.splits, config.eval.max_questions)
    metadata: dict[str, dg.MetadataValue] = {}
    if key == RAG_MODEL:
        embedding_model = embedder.embedder(config)
        index = index_store.load(expected_identity=embedding_model.identity)
        client = chat_model.client(config)
        ask = rag_answerer(RagBot(config, embedding_model, index, rag_chunks, client))
        backend = "rag"
        metadata["index"] = dg.MetadataValue.text(str(index.path))
    else:
        row = _finetuned_row(key, finetuned_models)
        chat, lora_path = finetuned_chat_settings(config, row)
        client = chat_model.client(config, lora_path=lora_path, chat=chat)
        ask = finetuned_answerer(client, config)
        backend = str(row.get("backend", "local_lora"))
        if lora_path:
            metadata["adapter"] = dg.MetadataValue.path(lora_path)
    context.log.info(
        f"{key}: answering {len(questions)} questions (splits {config.eval.splits}, eval.max_questions "
        f"{config.eval.max_questions or 'all'}) with {client.identity}"
    )
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        context.log.info(f"{key}: {done}/{total} answered ({time.monotonic() - started:.0f} s)")

    frame = answer_questions(questions, key, ask, progress)
    seconds = time.monotonic() - started
    errors = frame["error"].notna()
    answered = frame[~errors]
    if errors.any():
        context.log.warning(f"{key}: {int(errors.sum())} of {len(frame)} questions got no usable answer")
    return content_output(
        frame,
        {
            "model": dg.MetadataValue.text(key),
            "backend": dg.MetadataValue.text(backend),
            "chat_model": dg.MetadataValue.text(client.identity),
            "questions": dg.MetadataValue.int(len(frame)),
            "questions_available": dg.MetadataValue.int(int(synthetic_qa["split"].isin(config.eval.splits).sum())),
            "answered": dg.MetadataValue.int(len(answered)),
            "errors": dg.MetadataValue.int(int(errors.sum())),
            "seconds": dg.MetadataValue.float(round(seconds, 2)),
            "latency_s_mean": dg.MetadataValue.float(
                round(float(answered["latency_s"].mean()), 3) if len(answered) else 0.0
            ),
            "answer_chars_mean": dg.MetadataValue.float(
                round(float(answered["answer"].str.len().mean()), 1) if len(answered) else 0.0
            ),
            **metadata,
            **client.usage.as_metadata(),
            "answers_preview": dg.MetadataValue.md(
                markdown_preview(frame[["question", "answer", "reference", "error"]], rows=8)
            ),
        },
        version_of=["qa_id", "answer", "error"],
    )


def model_answers_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`model_answers`, one partition per model of `graph_settings`: `rag` and every sweep point."""
    return dg.asset(
        name="model_answers",
        group_name="evaluation",
        kinds={"llm", "parquet"},
        code_version="1",
        partitions_def=model_partitions(graph_settings),
        deps=["vector_index"],
        ins={
            "finetuned_models": dg.AssetIn(
                partition_mapping=finetuned_partition_mapping(graph_settings),
                metadata={"allow_missing_partitions": True},
            )
        },
        metadata=reads_settings(
            "eval.splits",
            "eval.max_questions",
            "rag.top_k",
            "rag.prompt",
            "rag.temperature",
            "rag.max_tokens",
            "rag.max_question_chars",
            "models.chat",
            "models.embedding",
            "persona",
            "finetune.system_prompt",
            "finetune.completion_stop",
        ),
    )(_model_answers)
