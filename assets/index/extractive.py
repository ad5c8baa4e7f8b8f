"""The `extractive` answer mode: no language model, the site's own best sentences quoted with their page.

The floor every LLM mode must beat, and a mode `mebot serve` can offer on weak hardware: retrieval as the RAG bot
does it (`rag.retrieval`, `rag.top_k`), the retrieved chunks' sentences scored as for the RAG context
(assets/index/context.py: BM25 and cosine fused by rank), and the best `rag.extractive_sentences` quoted with
`rag.extractive_neighbours` sentences either side, each page's quote followed by its title and link.

It declines ("I am not programmed to answer that.", the original prompt's words) when the question is not close
to anything retrieved: when none of the three best sentences has a cosine similarity with the question of at
least `rag.extractive_min_score`. Rank fusion gives no absolute score, so the decision uses the embedding model's
cosine, which measured well apart on the sample site's golden questions: answerable questions' best of three
0.38-0.85, five of the six unanswerable ones 0.20-0.33 (the sixth, "How much do you earn at Tallowmere?", 0.52:
the employer is on the site, the salary is not).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mebot.assets.index.context import (
    ScoredSentence,
    Selection,
    SentenceStore,
    score_candidates,
    select_sentences,
    shown,
)
from mebot.assets.index.rag import RagAnswer, RagBot, validate_question

EXTRACTIVE_MODEL = "extractive"
DECLINE = "I am not programmed to answer that."
MAX_QUOTE_WORDS = 160
"""A quote stops growing at about this many words (whole sentences; the best sentence is always quoted)."""
CONFIDENCE_OF_TOP = 3
"""The decision to decline looks at the best cosine among this many best-ranked sentences."""


def confidence(scored: list[ScoredSentence]) -> float:
    """The best cosine similarity with the question among the top CONFIDENCE_OF_TOP sentences (-1 when none)."""
    values = [s.dense for s in scored[:CONFIDENCE_OF_TOP] if s.dense == s.dense]  # NaN: no vector
    return max(values, default=-1.0)


def _words(text: str) -> int:
    return len(text.split())


def format_quotes(store: SentenceStore, selection: Selection) -> str:
    """One quote per page, best page first: “sentences in page order” — title (url)."""
    blocks = []
    for url, title, indices in selection.groups:
        parts: list[str] = []
        for n, i in enumerate(indices):
            if n:
                parts.append(" " if i == indices[n - 1] + 1 else " … ")
            parts.append(shown(store.sentences[i].text))
        blocks.append(f"“{''.join(parts)}”\n— {title} ({url})")
    return "\n\n".join(blocks)


def extractive_answer(bot: RagBot, question: str, k: int | None = None) -> RagAnswer:
    """The extractive answer to `question` over `bot`'s index: quotes with their sources, or DECLINE with none."""
    started = time.monotonic()
    rag = bot.settings.rag
    question = validate_question(question, rag.max_question_chars)
    retrieved, vector = bot.retrieve_with_vector(question, k)
    store = bot.sentences
    scored = score_candidates(
        store, store.of_chunks(s.chunk_id for s in retrieved), question, vector, bot.sentence_vectors
    )
    if not scored or confidence(scored) < rag.extractive_min_score:
        answer, sources, context = DECLINE, [], ""
    else:
        selection = select_sentences(
            store,
            scored,
            sentences=rag.extractive_sentences,
            neighbours=rag.extractive_neighbours,
            max_tokens=MAX_QUOTE_WORDS,
            count_tokens=_words,
        )
        answer = context = format_quotes(store, selection)
        sources = bot.used_sources(selection, retrieved)
    return RagAnswer(
        question=question,
        answer=answer,
        sources=sources,
        model=EXTRACTIVE_MODEL,
        latency_s=round(time.monotonic() - started, 3),
        dropped_sources=len(retrieved) - len(sources),
        context=context,
    )


class ExtractiveBot:
    """`ask` like RagBot's, answering by `extractive_answer` over a RagBot's index (no chat model needed)."""

    def __init__(self, bot: RagBot):
        self.bot = bot

    def ask(self, question: str, k: int | None = None, on_token: Callable[[str], None] | None = None) -> RagAnswer:
        """The extractive answer; `on_token` (streaming) gets it whole, there being nothing generated."""
        answer = extractive_answer(self.bot, question, k)
        if on_token is not None:
            on_token(answer.answer)
        return answer


__all__ = [
    "DECLINE",
    "EXTRACTIVE_MODEL",
    "MAX_QUOTE_WORDS",
    "ExtractiveBot",
    "confidence",
    "extractive_answer",
    "format_quotes",
]
