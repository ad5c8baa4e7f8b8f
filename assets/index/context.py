"""Focused RAG context: the best sentences of the site for a question, with their neighbours, labelled by page.

Why: the bundled 135M chat model, given four whole chunks (~3,600 prompt tokens), stated the fact of 0 of 10
golden questions at a p50 of 75 s on 2 cores; given a few sentences it states far more, in a second or two (the
figures are in README "Choosing the RAG context" and bench/bench_rag_answers.py). Large models do well with whole
chunks; `rag.context` chooses.

Sentences: every chunk's text is cut into sentences (`split_sentences`: paragraphs and list items first, then a
sentence regex that knows abbreviations, initials and decimals); a page's sentences are its chunks' sentences in
chunk order, with the overlap that neighbouring chunks share counted once (`SentenceStore`), so "the sentence
before" is the page's sentence before, even across a chunk boundary.

Selection (`select_sentences`): candidates are scored by BM25 and by the embedding model's cosine, fused by
reciprocal rank; the best `rag.context_sentences` are taken with `rag.context_neighbours` sentences either side, as
long as the context stays within `rag.context_tokens` chat-model tokens; then grouped by page (the page holding the
best sentence first), each group in page order and labelled with its page title (`format_selection`).

Pure functions and small classes; the embedder and the token counter are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mebot.assets.index.lexical import Bm25Index, rrf

# ------------------------------------------------------------------------------------------------ splitting

ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt ft vs e.g i.e cf al approx dept fig vol eds
    jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)
"""Words that end in a full stop without ending the sentence (lowercase, without the final stop). Units (km, kg)
and words that often end a sentence (etc, no, inc) are not among them: "We rode 221 km. 3,650 metres ..." is two."""

_BOUNDARY = re.compile(r"([.!?…]+)([\"'”’)\]]*)(\s+)(?=[\"'“‘(\[£$€]?[A-Z0-9])")
_LIST_MARKER = re.compile(r"\s*(?:[-*•+]|\d{1,3}[.)])\s+")
_WORD_BEFORE = re.compile(r"(\S+)$")
MAX_SENTENCE_CHARS = 600
"""Longer "sentences" (tables, code, run-on lists) are cut at a comma, semicolon or space below this."""


def _is_boundary(text: str, end: int, punct: str) -> bool:
    """Does the punctuation `punct` ending at `end` close a sentence? Not after an abbreviation or an initial."""
    if punct != ".":
        return True
    before = _WORD_BEFORE.search(text[: end - 1])
    word = before.group(1).lower().lstrip("(\"'“‘") if before else ""
    if word in ABBREVIATIONS or word.rstrip(".") in ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien", "C. Smith"
        return False
    return not re.fullmatch(r"(?:[a-z]\.)+[a-z]", word)  # "e.g", "u.s"


def _cut_long(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    spans = []
    while end - start > limit:
        window = text[start : start + limit]
        cut = max(window.rfind("; "), window.rfind(", "))
        if cut < limit // 3:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit - 1
        spans.append((start, start + cut + 1))
        start += cut + 1
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        spans.append((start, end))
    return spans


_UNIT = re.compile(
    # a code block: from an opening fence (it carries an info string: a bare fence only closes) to the closing
    # fence, or to the end of a chunk cut inside the block
    r"^```[^\s`][^\n]*\n.*?(?:^```[ \t]*$|\Z)"
    r"|^\$\$[^\n]*",  # display math: a line of its own starting with $$
    re.S | re.M,
)
_INLINE_MATH = re.compile(r"\\\(.*?\\\)|\$(?=[^\s$])[^$\n]*?[^\s$]\$(?!\d)")
"""TeX's inline math: \\(...\\), or $...$ as MathJax reads it (no space inside the marks, no digit after: "$5 and
$10" is two prices)."""
UNIT_MARKS = ("```", "$$")
"""How a unit (assets/ingest/html_text.py marks code blocks and display math so) starts."""


def is_unit(text: str) -> bool:
    """Is this sentence a unit (a code block, display math) rather than prose?"""
    return text.lstrip().startswith(UNIT_MARKS)


def shown(text: str) -> str:
    """A sentence as a context or a quote shows it: prose on one line, a unit with its own lines."""
    return text.strip() if is_unit(text) else " ".join(text.split())


def sentence_spans(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text`: a code block or display math (marked as html_text marks them)
    is one span, whatever its length; every other line (paragraph, list item, heading, table row) is one or more
    sentences, never cut inside inline math; a list marker ("- ", "1. ") is left out of its item's span; no prose
    span is empty or longer than `max_chars`."""
    spans: list[tuple[int, int]] = []
    at = 0
    for unit in _UNIT.finditer(text):
        spans.extend(_prose_spans(text, at, unit.start(), max_chars))
        end = unit.end()
        while end > unit.start() and text[end - 1].isspace():
            end -= 1
        spans.append((unit.start(), end))
        at = unit.end()
    spans.extend(_prose_spans(text, at, len(text), max_chars))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _prose_spans(text: str, begin: int, finish: int, max_chars: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for line in re.compile(r"[^\n]+").finditer(text, begin, finish):
        start, end = line.start(), line.end()
        marker = _LIST_MARKER.match(text, start, end)
        if marker:
            start = marker.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start >= end:
            continue
        cursor = start
        maths = [m.span() for m in _INLINE_MATH.finditer(text, start, end)]
        for match in _BOUNDARY.finditer(text, start, end):
            stop = match.end(2)
            if any(a < match.start() < b for a, b in maths):
                continue
            if _is_boundary(text, match.end(1), match.group(1)[-1]) and stop > cursor:
                spans.extend(_cut_long(text, cursor, stop, max_chars))
                cursor = match.end(3)
        if cursor < end:
            spans.extend(_cut_long(text, cursor, end, max_chars))
    return spans


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """The sentences of `text` (see `sentence_spans`), as they are written there."""
    return [text[a:b] for a, b in sentence_spans(text, max_chars)]


# ------------------------------------------------------------------------------------------- the site's sentences


@dataclass(frozen=True)
class Sentence:
    url: str
    title: str
    chunk_id: str  # the chunk it was first read from
    page_position: int  # its place among its page's sentences (0, 1, ...)
    text: str


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _tail_of(fragment: str, sentence: str) -> bool:
    """Is `fragment` the end of `sentence` (a chunk's overlap starting mid-sentence)?"""
    frag, full = " ".join(fragment.split()), " ".join(sentence.split())
    return len(frag) >= 8 and full.endswith(frag)


class SentenceStore:
    """Every sentence of the indexed chunks, once, in page order; BM25 over them (title prepended).

    `cut_unit`, when given, cuts a unit (a code block, display math) longer than the embedder reads into pieces
    that fit it, by the embedder's own tokenizer (`Embedder.pieces`): each piece is then a sentence."""

    def __init__(self, chunks: pd.DataFrame, cut_unit: Callable[[str], list[str]] | None = None):
        order = chunks.assign(_page=pd.factorize(chunks["url"])[0])
        sort = ["_page", "chunk_index"] if "chunk_index" in order.columns else ["_page"]
        order = order.sort_values(sort, kind="stable")
        sentences: list[Sentence] = []
        by_chunk: dict[str, list[int]] = {}
        page_start: dict[str, int] = {}
        for row in order.itertuples(index=False):
            url, title, chunk_id = str(row.url), str(row.title or ""), str(row.chunk_id)
            if url not in page_start:
                page_start[url] = len(sentences)
            page = sentences[page_start[url] :]
            mine = by_chunk.setdefault(chunk_id, [])
            overlap = True  # the chunk's first sentences may repeat the end of the chunk before (the overlap)
            tail = page[-40:]
            for text in self._units(split_sentences(str(row.text)), cut_unit):
                if overlap:
                    match = next((s for s in reversed(tail) if _same(s.text, text) or _tail_of(text, s.text)), None)
                    if match is not None:
                        mine.append(sentences.index(match, page_start[url]))
                        continue
                    overlap = False
                mine.append(len(sentences))
                sentences.append(Sentence(url, title, chunk_id, len(sentences) - page_start[url], text))
        self.sentences = sentences
        self.by_chunk = by_chunk
        self.page_of = np.array([page_start[s.url] for s in sentences], dtype=np.int64)
        self._bm25: Bm25Index | None = None

    @staticmethod
    def _units(texts: list[str], cut_unit: Callable[[str], list[str]] | None) -> Iterable[str]:
        for text in texts:
            yield from (cut_unit(text) or [text]) if cut_unit is not None and is_unit(text) else [text]

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def bm25(self) -> Bm25Index:
        if self._bm25 is None:
            self._bm25 = Bm25Index([f"{s.title} {s.text}" for s in self.sentences])
        return self._bm25

    def of_chunks(self, chunk_ids: Iterable[str]) -> list[int]:
        """Indices of the sentences of these chunks, each once, in the order the chunks are given."""
        seen: dict[int, None] = {}
        for chunk_id in chunk_ids:
            for i in self.by_chunk.get(str(chunk_id), []):
                seen.setdefault(i, None)
        return list(seen)

    def neighbours(self, i: int, n: int) -> list[int]:
        """Sentence i and up to n sentences either side of it on the same page, in page order."""
        size = len(self.sentences)
        return [j for j in range(i - n, i + n + 1) if 0 <= j < size and self.page_of[j] == self.page_of[i]]


class SentenceVectors:
    """Embedding vectors of sentences, computed once per process per text (a dict; the model is the embedder's)."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], max_entries: int = 200_000):
        self.embed = embed
        self.max_entries = max_entries
        self._vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        found = {text: self._vectors.get(text) for text in texts}  # a local view: safe while another thread clears
        missing = [text for text, vector in found.items() if vector is None]
        if missing:
            if len(self._vectors) + len(missing) > self.max_entries:
                self._vectors.clear()
            for text, vector in zip(missing, self.embed(missing), strict=True):
                found[text] = self._vectors[text] = vector
        return np.stack([found[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class ScoredSentence:
    index: int  # into SentenceStore.sentences
    rank: int  # 0: the best candidate
    fused: float
    dense: float  # cosine with the question (nan when not computed)
    lexical: float  # BM25 score (0: no question word in it)


def score_candidates(
    store: SentenceStore,
    candidates: Sequence[int],
    question: str,
    question_vector: np.ndarray | None,
    vectors: SentenceVectors | None,
    fusion: str = "rrf",
) -> list[ScoredSentence]:
    """The candidates, best first: fused rank of BM25 and cosine (`fusion` rrf), or one of them (bm25, dense)."""
    candidates = list(candidates)
    if not candidates:
        return []
    lexical = store.bm25.fusable_scores(question)[candidates]
    if fusion != "bm25" and vectors is not None and question_vector is not None:
        dense = vectors([store.sentences[i].text for i in candidates]) @ np.asarray(question_vector).ravel()
    else:
        dense = np.full(len(candidates), np.nan)
    if fusion == "bm25" or np.isnan(dense).all():
        fused = np.where(np.isfinite(lexical), lexical, 0.0)
    elif fusion == "dense":
        fused = dense.astype(np.float64)
    elif fusion == "rrf":
        fused = rrf([dense, lexical])
    else:
        raise ValueError(f"unknown fusion {fusion!r}; choose rrf, bm25 or dense")
    order = np.argsort(-fused, kind="stable")
    return [
        ScoredSentence(
            index=int(candidates[j]),
            rank=rank,
            fused=float(fused[j]),
            dense=float(dense[j]),
            lexical=float(lexical[j]) if np.isfinite(lexical[j]) else 0.0,
        )
        for rank, j in enumerate(order)
    ]


@dataclass
class Selection:
    """The chosen sentences: `picked` (the best ones, best first) and `kept` (with neighbours), grouped by page."""

    picked: list[ScoredSentence]
    groups: list[tuple[str, str, list[int]]]  # (url, title, sentence indices in page order), best page first
    tokens: int

    @property
    def urls(self) -> list[str]:
        return [url for url, _, _ in self.groups]


def select_sentences(
    store: SentenceStore,
    scored: Sequence[ScoredSentence],
    *,
    sentences: int,
    neighbours: int,
    max_tokens: int,
    count_tokens: Callable[[str], int],
) -> Selection:
    """The best `sentences` of `scored` (already best first), each with `neighbours` sentences either side on its
    page, while the context (`format_selection`) stays within `max_tokens`; the best sentence alone is always kept
    (cut to the budget by `format_selection`'s caller if need be). Grouped by page, the best page first, each
    group in page order."""
    kept: set[int] = set()
    picked: list[ScoredSentence] = []
    page_rank: dict[str, int] = {}
    tokens = 0
    for candidate in scored:
        if len(picked) >= sentences:
            break
        if candidate.index in kept and any(p.index == candidate.index for p in picked):
            continue
        adding = [j for j in store.neighbours(candidate.index, neighbours) if j not in kept]
        trial = kept | set(adding)
        trial_tokens = count_tokens(format_groups(store, _group(store, trial, {**page_rank})))
        if picked and trial_tokens > max_tokens:
            # too long with its neighbours: try the sentence alone before giving up on it
            if candidate.index in kept:
                continue
            trial = kept | {candidate.index}
            trial_tokens = count_tokens(format_groups(store, _group(store, trial, {**page_rank})))
            if trial_tokens > max_tokens:
                continue
        kept = trial
        tokens = trial_tokens
        picked.append(candidate)
        page_rank.setdefault(store.sentences[candidate.index].url, len(page_rank))
    return Selection(picked=picked, groups=_group(store, kept, page_rank), tokens=tokens)


def _group(store: SentenceStore, kept: set[int], page_rank: dict[str, int]) -> list[tuple[str, str, list[int]]]:
    pages: dict[str, list[int]] = {}
    for i in sorted(kept):
        pages.setdefault(store.sentences[i].url, []).append(i)
    order = sorted(pages, key=lambda url: page_rank.get(url, len(page_rank)))
    return [(url, store.sentences[pages[url][0]].title, pages[url]) for url in order]


def format_groups(store: SentenceStore, groups: Sequence[tuple[str, str, list[int]]]) -> str:
    """One block per page: `From "<title>":` then its sentences in page order; " … " marks skipped sentences."""
    blocks = []
    for _, title, indices in groups:
        parts: list[str] = []
        previous = None
        for i in indices:
            if previous is not None:
                parts.append(" " if i == previous + 1 else " … ")
            parts.append(shown(store.sentences[i].text))
            previous = i
        blocks.append(f'From "{title}":\n' + "".join(parts))
    return "\n\n".join(blocks)


def format_selection(store: SentenceStore, selection: Selection) -> str:
    return format_groups(store, selection.groups)


__all__ = [
    "ABBREVIATIONS",
    "MAX_SENTENCE_CHARS",
    "ScoredSentence",
    "Selection",
    "Sentence",
    "SentenceStore",
    "SentenceVectors",
    "format_groups",
    "format_selection",
    "is_unit",
    "score_candidates",
    "select_sentences",
    "sentence_spans",
    "shown",
    "split_sentences",
]
