"""Retrieval-augmented answers: retrieve the top chunks for a question, fill the prompt, ask the chat model.

Pure functions plus `RagBot`, which `mebot ask`, the server and the evaluation all use (one way to answer).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from mebot.resources.chat import ChatClient
from mebot.resources.embeddings import Embedder
from mebot.resources.layout import DataLayout
from mebot.resources.settings import Settings
from mebot.resources.vector_index import IndexNotFoundError, LoadedIndex

SNIPPET_CHARS = 300


class QuestionError(ValueError):
    """A question that cannot be asked (empty, too long)."""


class ModelOutputError(RuntimeError):
    """The chat model answered with nothing usable."""


@dataclass(frozen=True)
class Source:
    url: str
    title: str
    chunk_id: str
    score: float
    snippet: str
    text: str = field(repr=False, default="")


@dataclass
class RagAnswer:
    question: str
    answer: str
    sources: list[Source]
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    dropped_sources: int = 0

    def to_json(self, with_text: bool = False) -> dict:
        sources = [
            {k: v for k, v in asdict(s).items() if with_text or k not in ("text", "snippet")} for s in self.sources
        ]
        return {"answer": self.answer, "sources": sources}


def validate_question(question: str, max_chars: int) -> str:
    cleaned = " ".join((question or "").split())
    if not cleaned:
        raise QuestionError('the question is empty; ask something, e.g. "What telescope do you own?"')
    if len(cleaned) > max_chars:
        raise QuestionError(
            f"the question is {len(cleaned)} characters long; the limit is rag.max_question_chars = {max_chars}"
        )
    return cleaned


def format_context(texts: list[str]) -> str:
    """Chunk texts joined by blank lines, as LangChain's "stuff" chain (the original bot's) does."""
    return "\n\n".join(t.strip() for t in texts)


def build_prompt(template: str, persona_name: str, question: str, context: str) -> str:
    return template.format(persona_name=persona_name, context=context, question=question)


def clean_answer(text: str, model: str) -> str:
    answer = (text or "").strip()
    if not answer:
        raise ModelOutputError(f"the chat model ({model}) returned an empty answer; ask again or check models.chat")
    if not re.search(r"\w", answer):
        raise ModelOutputError(f"the chat model ({model}) returned no words ({answer[:40]!r}); check models.chat")
    return answer


class RagBot:
    """Answers questions from the indexed chunks of the site."""

    def __init__(
        self, settings: Settings, embedder: Embedder, index: LoadedIndex, chunks: pd.DataFrame, chat: ChatClient
    ):
        self.settings = settings
        self.embedder = embedder
        self.index = index
        self.chunks = chunks.set_index("chunk_id", drop=False)
        self.chat = chat

    def retrieve(self, question: str, k: int | None = None) -> list[Source]:
        question = validate_question(question, self.settings.rag.max_question_chars)
        vector = self.embedder.embed([question])
        hits = self.index.search(vector, k or self.settings.rag.top_k)[0]
        sources = []
        for chunk_id, score in hits:
            if chunk_id not in self.chunks.index:
                continue  # index newer than the chunks file; the next materialization aligns them
            row = self.chunks.loc[chunk_id]
            sources.append(
                Source(
                    url=row["url"],
                    title=row["title"],
                    chunk_id=chunk_id,
                    score=round(float(score), 4),
                    snippet=" ".join(row["text"].split())[:SNIPPET_CHARS],
                    text=row["text"],
                )
            )
        return sources

    def prompt_for(self, question: str, sources: list[Source]) -> tuple[str, int]:
        """The filled prompt, dropping the lowest-ranked chunks if it would not fit the model's context."""
        rag = self.settings.rag
        budget = self.chat.context_window - rag.max_tokens
        kept = list(sources)
        while True:
            prompt = build_prompt(
                rag.prompt, self.settings.persona.name, question, format_context([s.text for s in kept])
            )
            if len(kept) <= 1 or self.chat.count_tokens(prompt) <= budget:
                return prompt, len(sources) - len(kept)
            kept.pop()

    def ask(self, question: str, k: int | None = None) -> RagAnswer:
        started = time.monotonic()
        question = validate_question(question, self.settings.rag.max_question_chars)
        sources = self.retrieve(question, k)
        prompt, dropped = self.prompt_for(question, sources)
        result = self.chat.complete(
            [{"role": "user", "content": prompt}],
            temperature=self.settings.rag.temperature,
            max_tokens=self.settings.rag.max_tokens,
        )
        return RagAnswer(
            question=question,
            answer=clean_answer(result.text, result.model),
            sources=sources[: len(sources) - dropped] if dropped else sources,
            model="rag",
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=round(time.monotonic() - started, 3),
            cached=result.cached,
            dropped_sources=dropped,
        )


def load_rag_bot(settings: Settings, resources: dict, data_dir: Path) -> RagBot:
    """A RagBot over the latest materialized chunks and index, with the project's own resources."""
    chunks_path = DataLayout(Path(data_dir)).asset("rag_chunks")
    if not chunks_path.is_file():
        raise IndexNotFoundError(f"no chunks yet ({chunks_path} is missing): run `make run` first")
    embedder = resources["embedder"].embedder(settings)
    index = resources["index_store"].load(expected_identity=embedder.identity)
    chat = resources["chat_model"].client(settings)
    return RagBot(settings, embedder, index, pd.read_parquet(chunks_path), chat)


__all__ = [
    "IndexNotFoundError",
    "ModelOutputError",
    "QuestionError",
    "RagAnswer",
    "RagBot",
    "Source",
    "build_prompt",
    "load_rag_bot",
    "clean_answer",
    "format_context",
    "validate_question",
]
