"""Retrieval-augmented answers: retrieve the top chunks for a question, fill the prompt, ask the chat model.

Pure functions plus `RagBot`, which `mebot ask`, the server and the evaluation all use (one way to answer).

Retrieval (`rag.retrieval`): `hybrid` ranks chunks by reciprocal rank fusion of the vector index and BM25 over the
chunks (assets/index/lexical.py); `dense` is the vector index alone. Context (`rag.context`): `chunks` puts the
whole retrieved chunks in the prompt (the original, LangChain's "stuff"); `sentences` puts the best sentences of
the retrieved chunks with their neighbours, labelled by page (assets/index/context.py). The sources an answer
reports are the chunks whose text reached the prompt, in the order the prompt shows them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mebot.assets.index.context import (
    Selection,
    SentenceStore,
    SentenceVectors,
    format_selection,
    score_candidates,
    select_sentences,
)
from mebot.assets.index.lexical import Bm25Index, rrf
from mebot.resources.chat import ChatClient, template_head
from mebot.resources.embeddings import Embedder, EmbeddingCache, embed_with_cache
from mebot.resources.layout import DataLayout
from mebot.resources.settings import Settings
from mebot.resources.vector_index import IndexNotFoundError, LoadedIndex

SNIPPET_CHARS = 300
DENSE_CANDIDATES_MIN = 50
"""Hybrid retrieval fuses the vector index's best max(10 x k, 50) chunks with BM25's ranking of all chunks."""


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
    context: str = field(default="", repr=False)  # what the prompt's {context} held

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


def prompt_head(template: str, persona_name: str) -> str:
    """What every prompt of `template` starts with: its text before the first field that changes per question
    ({context} or {question}), {persona_name} filled in. The chat model may keep its state after it."""
    return template_head(template, persona_name=persona_name)


FIRST_PERSON_INSTRUCTION = "Answer in the first person as {persona_name}."  # the original author's deployed bot


def rag_messages(settings: Settings, prompt: str) -> list[dict[str, str]]:
    """The RAG call's messages: the filled prompt, after a system message with persona.description and, with
    rag.first_person, the first-person instruction (none when neither is set: the original's single message)."""
    persona = settings.persona
    lines = [persona.description.strip()] if persona.description.strip() else []
    if settings.rag.first_person:
        lines.append(FIRST_PERSON_INSTRUCTION.format(persona_name=persona.name))
    system = [{"role": "system", "content": " ".join(lines)}] if lines else []
    return [*system, {"role": "user", "content": prompt}]


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
        self,
        settings: Settings,
        embedder: Embedder,
        index: LoadedIndex,
        chunks: pd.DataFrame,
        chat: ChatClient,
        embedding_cache: EmbeddingCache | None = None,
    ):
        self.settings = settings
        self.embedder = embedder
        self.index = index
        self.chunks = chunks.set_index("chunk_id", drop=False)
        self.chat = chat
        self.embedding_cache = embedding_cache
        self._sentences: SentenceStore | None = None
        self._chunk_bm25: Bm25Index | None = None
        self.sentence_vectors = SentenceVectors(self._embed_sentences)

    # ----------------------------------------------------------------------------------------- the site

    @property
    def sentences(self) -> SentenceStore:
        """Every sentence of the chunks, in page order (built on first use)."""
        if self._sentences is None:
            self._sentences = SentenceStore(self.chunks.reset_index(drop=True), cut_unit=self.embedder.pieces)
        return self._sentences

    @property
    def chunk_bm25(self) -> Bm25Index:
        if self._chunk_bm25 is None:
            pairs = zip(self.chunks["title"], self.chunks["text"], strict=True)
            self._chunk_bm25 = Bm25Index([f"{title} {text}" for title, text in pairs])
        return self._chunk_bm25

    def _embed_sentences(self, texts: list[str]) -> np.ndarray:
        """Sentence vectors; with the project's embedding cache, each sentence is embedded once, ever. A unit longer
        than the embedder reads (a display-math block, a long code block) is embedded by its beginning, cut to the
        embedder's window by its own tokenizer (`Embedder.fit_to_window`)."""
        fitted = self.embedder.fit_to_window(texts)
        if self.embedding_cache is None:
            return self.embedder.embed(fitted)
        vectors, _, _ = embed_with_cache(self.embedder, self.embedding_cache, fitted)
        return vectors

    # ------------------------------------------------------------------------------------------ retrieval

    def _source(self, chunk_id: str, score: float) -> Source:
        row = self.chunks.loc[chunk_id]
        return Source(
            url=row["url"],
            title=row["title"],
            chunk_id=chunk_id,
            score=round(float(score), 4),
            snippet=" ".join(row["text"].split())[:SNIPPET_CHARS],
            text=row["text"],
        )

    def retrieve_with_vector(self, question: str, k: int | None = None) -> tuple[list[Source], np.ndarray]:
        """The top k chunks (`rag.retrieval`) and the question's vector. Scores: cosine (dense) or the fused
        reciprocal-rank score (hybrid)."""
        question = validate_question(question, self.settings.rag.max_question_chars)
        k = k or self.settings.rag.top_k
        vector = self.embedder.embed_fitted([question])
        if self.settings.rag.retrieval == "dense":
            hits = self.index.search(vector, k)[0]
            known = [(chunk_id, score) for chunk_id, score in hits if chunk_id in self.chunks.index]
            # a chunk id missing from the chunks: the index is newer than the chunks file; the next
            # materialization aligns them
            return [self._source(chunk_id, score) for chunk_id, score in known], vector[0]
        ids = self.chunks.index
        dense = np.full(len(ids), -np.inf)
        position = {chunk_id: i for i, chunk_id in enumerate(ids)}
        for chunk_id, score in self.index.search(vector, max(10 * k, DENSE_CANDIDATES_MIN))[0]:
            if chunk_id in position:
                dense[position[chunk_id]] = score
        fused = rrf([dense, self.chunk_bm25.fusable_scores(question)])
        best = [j for j in np.argsort(-fused, kind="stable")[:k] if fused[j] > 0]
        return [self._source(ids[j], fused[j]) for j in best], vector[0]

    def retrieve(self, question: str, k: int | None = None) -> list[Source]:
        return self.retrieve_with_vector(question, k)[0]

    # ------------------------------------------------------------------------------------------- context

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

    def select(
        self,
        question: str,
        sources: list[Source],
        vector: np.ndarray,
        *,
        sentences: int,
        neighbours: int,
        max_tokens: int,
        count_tokens=None,
    ) -> Selection:
        """The best sentences of the retrieved chunks for `question` (see assets/index/context.py)."""
        store = self.sentences
        candidates = store.of_chunks(s.chunk_id for s in sources)
        scored = score_candidates(store, candidates, question, vector, self.sentence_vectors)
        return select_sentences(
            store,
            scored,
            sentences=sentences,
            neighbours=neighbours,
            max_tokens=max_tokens,
            count_tokens=count_tokens or self.chat.count_tokens,
        )

    def used_sources(self, selection: Selection, sources: list[Source]) -> list[Source]:
        """The retrieved chunks that gave the selection a sentence, in the order the context shows their pages."""
        kept = {i for _, _, indices in selection.groups for i in indices}
        used = [s for s in sources if kept & set(self.sentences.by_chunk.get(s.chunk_id, []))]
        page_order = {url: n for n, url in enumerate(selection.urls)}
        return sorted(used, key=lambda s: page_order.get(s.url, len(page_order)))

    def sentence_prompt_for(
        self, question: str, sources: list[Source], vector: np.ndarray
    ) -> tuple[str, str, list[Source]]:
        """(prompt, context, sources used) with `rag.context` sentences."""
        rag = self.settings.rag
        budget = min(rag.context_tokens, max(1, self.chat.context_window - rag.max_tokens - 200))
        selection = self.select(
            question,
            sources,
            vector,
            sentences=rag.context_sentences,
            neighbours=rag.context_neighbours,
            max_tokens=budget,
        )
        context = format_selection(self.sentences, selection)
        prompt = build_prompt(rag.prompt, self.settings.persona.name, question, context)
        return prompt, context, self.used_sources(selection, sources)

    # ------------------------------------------------------------------------------------------- answer

    def ask(self, question: str, k: int | None = None, on_token: Callable[[str], None] | None = None) -> RagAnswer:
        """Retrieve, fill the prompt, ask the chat model; `on_token` gets the answer's pieces as they are generated."""
        started = time.monotonic()
        question = validate_question(question, self.settings.rag.max_question_chars)
        retrieved, vector = self.retrieve_with_vector(question, k)
        if self.settings.rag.context == "sentences":
            prompt, context, sources = self.sentence_prompt_for(question, retrieved, vector)
            dropped = len(retrieved) - len(sources)
        else:
            prompt, dropped = self.prompt_for(question, retrieved)
            sources = retrieved[: len(retrieved) - dropped] if dropped else retrieved
            context = format_context([s.text for s in sources])
        result = self.chat.complete(
            rag_messages(self.settings, prompt),
            prompt_prefix=prompt_head(self.settings.rag.prompt, self.settings.persona.name),
            temperature=self.settings.rag.temperature,
            max_tokens=self.settings.rag.max_tokens,
            on_token=on_token,
        )
        return RagAnswer(
            question=question,
            answer=clean_answer(result.text, result.model),
            sources=sources,
            model="rag",
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=round(time.monotonic() - started, 3),
            cached=result.cached,
            dropped_sources=dropped,
            context=context,
        )


def load_rag_bot(settings: Settings, resources: dict, data_dir: Path) -> RagBot:
    """A RagBot over the latest materialized chunks and index, with the project's own resources."""
    chunks_path = DataLayout(Path(data_dir)).asset("rag_chunks")
    if not chunks_path.is_file():
        raise IndexNotFoundError(f"no chunks yet ({chunks_path} is missing): run `make run` first")
    embedder = resources["embedder"].embedder(settings)
    index = resources["index_store"].load(expected_identity=embedder.identity)
    chat = resources["chat_model"].client(settings)
    cache = resources["embedder"].cache() if settings.models.use_cache else None
    return RagBot(settings, embedder, index, pd.read_parquet(chunks_path), chat, embedding_cache=cache)


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
