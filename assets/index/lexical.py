"""Lexical retrieval (BM25 via `bm25s`) and its fusion with dense (vector) retrieval.

Why: a sentence-embedding model maps "How much did Kepler's dental surgery set you back?" near any sentence about
money or pets; the words that make the question answerable ("Kepler", "dental") are where BM25 is exact. Names and
numbers ("C/2023 A3", "£62") are where dense retrieval misses. Measured on the sample site's golden questions
(bench/bench_rag_answers.py), BM25 over sentences found the right page first for 33 of 38 questions, dense for 25.

Terms: lowercase words and numbers with accents folded, the English function words dropped, a plural "s" taken
off ("pedals" = "pedal"); numbers keep their separators' meaning ("6,412" = "6412"). Fusion: reciprocal rank
fusion (Cormack et al. 2009), `sum 1 / (k + rank)` over the rankings, which needs no score calibration between
cosine similarities and BM25 scores.

Pure functions and a small index class; nothing here loads a model.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

RRF_K = 60
"""Reciprocal rank fusion's constant (the paper's value): top ranks of either list count about equally."""

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves ever much many""".split()
)

_TOKEN = re.compile(r"[£$€]?\d+(?:[.,]\d+)*|[a-z][a-z0-9]*(?:['’][a-z]+)?")


def fold(text: str) -> str:
    """Lowercase, accents removed (Tsuchinshan–ATLAS and tsuchinshan-atlas are the same words)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _term(token: str) -> str:
    if token[0].isdigit() or token[0] in "£$€":
        return token.lstrip("£$€").replace(",", "")  # £640 = 640; 6,412 = 6412; 1.4 stays 1.4
    token = re.sub(r"['’]s$", "", token).replace("’", "'")
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        token = token[:-1]  # a crude plural: pedals = pedal, but glass stays glass
    return token


def terms(text: str) -> list[str]:
    """The BM25 terms of `text`: folded words and numbers, without stopwords."""
    found = (_term(t) for t in _TOKEN.findall(fold(text)))
    return [t for t in found if t and t not in STOPWORDS]


class Bm25Index:
    """BM25 (Lucene's variant, k1 1.5, b 0.75) over a fixed list of documents."""

    def __init__(self, documents: Sequence[str]):
        import bm25s  # imported here: importing this module stays cheap

        self.size = len(documents)
        self._retriever = bm25s.BM25()
        corpus = [terms(d) or ["\x00"] for d in documents]  # bm25s needs a token in every document
        if corpus:
            self._retriever.index(corpus, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """A score per document (0 where no query term occurs)."""
        if not self.size:
            return np.zeros(0, dtype=np.float32)
        wanted = terms(query)
        if not wanted:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(wanted), dtype=np.float32)

    def fusable_scores(self, query: str) -> np.ndarray:
        """`scores`, with -inf where no query term occurs (for `rrf`: no match is no evidence, not a low rank)."""
        found = self.scores(query).astype(np.float64)
        return np.where(found > 0, found, -np.inf)


def ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of every item by descending score (ties broken by position, so the order is stable)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    result = np.empty(len(scores), dtype=np.int64)
    result[order] = np.arange(len(scores))
    return result


def rrf(score_lists: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion of several score arrays over the same items: sum of 1 / (k + rank + 1). An item
    scored -inf in a list (e.g. BM25 found none of the question's words in it) gets nothing from that list."""
    if not score_lists:
        raise ValueError("rrf needs at least one list of scores")
    fused = np.zeros(len(score_lists[0]), dtype=np.float64)
    for scores in score_lists:
        if len(scores) != len(fused):
            raise ValueError(f"score lists differ in length ({len(scores)} != {len(fused)})")
        scores = np.asarray(scores, dtype=np.float64)
        fused += np.where(np.isfinite(scores), 1.0 / (k + ranks(scores) + 1), 0.0)
    return fused


__all__ = ["RRF_K", "STOPWORDS", "Bm25Index", "fold", "ranks", "rrf", "terms"]
