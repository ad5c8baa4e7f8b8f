"""Every model answers the held-out questions (`model_answers`), one partition per model.

Partitions: `rag`, `extractive` and one per point of `finetune.sweep`; `rag` and `extractive` map to no
`finetuned_models` partition, so they never wait for fine-tuning. Every asset that asks the models goes through
`answer_with_model`, one answerer per model key. The questions and the sample: docs/evaluation.md."""

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from mebot.assets.evaluation.loops import loop_rate
from mebot.assets.finetune.dataset import sweep_partitions
from mebot.assets.finetune.formats import adapter_chat_settings, ask_finetuned
from mebot.assets.index.extractive import EXTRACTIVE_MODEL, ExtractiveBot
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


# The settings every model key's answerer reads (model_answerer): the assets that ask models all read them.
ANSWERER_SETTINGS = (
    "rag.top_k",
    "rag.retrieval",
    "rag.context",
    "rag.context_sentences",
    "rag.context_neighbours",
    "rag.context_tokens",
    "rag.extractive_sentences",
    "rag.extractive_neighbours",
    "rag.extractive_min_score",
    "rag.prompt",
    "rag.first_person",
    "rag.temperature",
    "rag.max_tokens",
    "rag.max_question_chars",
    "models.chat",
    "models.embedding",
    "persona",
    "finetune.system_prompt",
    "finetune.completion_stop",
    "finetune.answer_temperature",
    "finetune.answer_max_tokens",
    "finetune.answer_repeat_penalty",
    "finetune.answer_repeat_last_n",
    "finetune.answer_frequency_penalty",
)


class EmptyEvalSplitError(ValueError):
    """No question to evaluate on: the splits in eval.splits hold no synthetic_qa row."""


# ------------------------------------------------------------------------------------------------ partitions


def model_keys(settings: Settings) -> list[str]:
    """`rag`, `extractive` (quotes, no LLM: the floor), then the sweep points' keys (the `finetuned_models`
    partitions)."""
    return [RAG_MODEL, EXTRACTIVE_MODEL, *sweep_partitions(settings).get_partition_keys()]


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


def rag_answerer(bot: RagBot | ExtractiveBot) -> Answerer:
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


REPLY_COLUMNS = ["answer", "sources", "prompt_tokens", "completion_tokens", "latency_s", "cached", "error"]


def ask_each(
    questions: Sequence[str], ask: Answerer, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """REPLY_COLUMNS, one row per question in order; a QuestionError or ModelOutputError is that row's `error`
    (no answer, no sources)."""
    rows = []
    for done, question in enumerate(questions, start=1):
        try:
            reply = ask(question)
        except (QuestionError, ModelOutputError) as exc:
            rows.append([None, "[]", 0, 0, 0.0, False, f"{type(exc).__name__}: {exc}"])
        else:
            sources = json.dumps(reply.sources)
            rows.append([reply.answer, sources, reply.prompt_tokens, reply.completion_tokens, reply.latency_s])
            rows[-1] += [reply.cached, None]
        if progress is not None:
            progress(done, len(questions))
    frame = pd.DataFrame(rows, columns=REPLY_COLUMNS)
    return frame.astype(
        {"prompt_tokens": "int64", "completion_tokens": "int64", "latency_s": "float64", "cached": "bool"}
    )


def _answers_frame(questions: pd.DataFrame, model: str, replies: pd.DataFrame) -> pd.DataFrame:
    """MODEL_ANSWER_COLUMNS: the eval questions (qa_id, question, answer passage, url) beside their replies."""
    asked = pd.DataFrame(
        {
            "qa_id": questions["qa_id"].to_numpy(),
            "model": model,
            "question": questions["question"].to_numpy(),
            "reference": questions["answer"].to_numpy(),
            "source_url": questions["url"].to_numpy(),
        }
    )
    return pd.concat([asked, replies.reset_index(drop=True)], axis=1)[MODEL_ANSWER_COLUMNS]


def answer_questions(
    questions: pd.DataFrame, model: str, ask: Answerer, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """MODEL_ANSWER_COLUMNS for every question; a QuestionError or ModelOutputError is that row's `error`."""
    return _answers_frame(questions, model, ask_each(questions["question"].tolist(), ask, progress))


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


@dataclass
class ModelInputs:
    """What asking any model key needs: the resources and the inputs (model_answers and golden_answers share it)."""

    chat_model: ChatModelResource
    embedder: EmbedderResource
    index_store: VectorIndexResource
    rag_chunks: pd.DataFrame
    finetuned_models: pd.DataFrame | None


@dataclass
class ModelAnswerer:
    """One model key, ready to be asked: its answerer, backend, chat client (identity, usage) and metadata."""

    key: str
    ask: Answerer
    backend: str
    client: ChatClient
    metadata: dict[str, dg.MetadataValue] = field(default_factory=dict)


def model_answerer(key: str, config: Settings, inputs: ModelInputs) -> ModelAnswerer:
    """The answerer of one model key: `rag`, retrieval over the vector index + the chat model, with the sources;
    a sweep key, that point's fine-tuned model, asked in its training format."""
    if key in (RAG_MODEL, EXTRACTIVE_MODEL):
        embedding_model = inputs.embedder.embedder(config)
        index = inputs.index_store.load(expected_identity=embedding_model.identity)
        client = inputs.chat_model.client(config)
        cache = inputs.embedder.cache() if config.models.use_cache else None
        bot = RagBot(config, embedding_model, index, inputs.rag_chunks, client, embedding_cache=cache)
        metadata = {"index": dg.MetadataValue.text(str(index.path))}
        if key == EXTRACTIVE_MODEL:  # `extractive`: the best sentences quoted, no LLM (assets/index/extractive.py)
            metadata["chat_model"] = dg.MetadataValue.text("none (extractive quotes)")
            return ModelAnswerer(key, rag_answerer(ExtractiveBot(bot)), EXTRACTIVE_MODEL, client, metadata)
        return ModelAnswerer(key, rag_answerer(bot), "rag", client, metadata)
    row = _finetuned_row(key, inputs.finetuned_models)
    chat, lora_path = finetuned_chat_settings(config, row)
    client = inputs.chat_model.client(config, lora_path=lora_path, chat=chat)
    metadata = {"adapter": dg.MetadataValue.path(lora_path)} if lora_path else {}
    backend = str(row.get("backend", "local_lora"))
    return ModelAnswerer(key, finetuned_answerer(client, config), backend, client, metadata)


def answer_with_model(
    key: str, questions: Sequence[str], config: Settings, inputs: ModelInputs, log: Callable[[str], None], what: str
) -> tuple[pd.DataFrame, ModelAnswerer]:
    """(REPLY_COLUMNS for `questions`, the answerer): every asset that asks the models asks them here, so a model
    key answers the same way whatever the questions. `log` gets the start (`what`: which questions) and progress."""
    answerer = model_answerer(key, config, inputs)
    log(f"{key}: answering {len(questions)} {what} with {answerer.client.identity}")
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        log(f"{key}: {done}/{total} answered ({time.monotonic() - started:.0f} s)")

    return ask_each(questions, answerer.ask, progress), answerer


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
    inputs = ModelInputs(chat_model, embedder, index_store, rag_chunks, finetuned_models)
    what = f"questions (splits {config.eval.splits}, eval.max_questions {config.eval.max_questions or 'all'})"
    started = time.monotonic()
    replies, answerer = answer_with_model(key, questions["question"].tolist(), config, inputs, context.log.info, what)
    frame = _answers_frame(questions, key, replies)
    seconds = time.monotonic() - started
    client = answerer.client
    errors = frame["error"].notna()
    answered = frame[~errors]
    if errors.any():
        context.log.warning(f"{key}: {int(errors.sum())} of {len(frame)} questions got no usable answer")
    return content_output(
        frame,
        {
            "model": dg.MetadataValue.text(key),
            "backend": dg.MetadataValue.text(answerer.backend),
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
            # the share of answers with a loop (an 8-word run repeated 3 times; loops.py); 0 with no answers
            "loop_rate": dg.MetadataValue.float(round(loop_rate(answered["answer"]) or 0.0, 4)),
            **answerer.metadata,
            **client.usage.as_metadata(),
            "answers_preview": dg.MetadataValue.md(
                markdown_preview(frame[["question", "answer", "reference", "error"]], rows=8)
            ),
        },
        version_of=["qa_id", "answer", "error"],
    )


def per_model_answers_asset(
    name: str, compute: Callable[..., dg.Output], graph_settings: Settings, *settings_read: str
) -> dg.AssetsDefinition:
    """An asset of answers with one partition per model of `graph_settings` (`rag`, `extractive`, every sweep
    point), reading its partition's fine-tuned model (none for rag and extractive) and the vector index, and the
    answerers' settings after `settings_read`."""
    return dg.asset(
        name=name,
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
        metadata=reads_settings(*settings_read, *ANSWERER_SETTINGS),
    )(compute)


def model_answers_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`model_answers`, one partition per model of `graph_settings`: `rag` and every sweep point."""
    return per_model_answers_asset("model_answers", _model_answers, graph_settings, "eval.splits", "eval.max_questions")
