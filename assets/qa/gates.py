"""Quality gates on a written question, free of Dagster: is it worth training on?

Each gate's name is the rejection reason `synthetic_qa` counts: `no_passage_term` (it names nothing of its
passage), `generic_template` (too close to a template such as "What is the text above?") and `no_roundtrip`
(retrieval among the passages does not find its own page); docs/fine-tuning.md."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

GATES = ("names_passage", "not_template", "roundtrip")
GATE_REASON = {"names_passage": "no_passage_term", "not_template": "generic_template", "roundtrip": "no_roundtrip"}

# Function words, pronouns, auxiliaries and question words: naming one of these names nothing.
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
    else ever every few for from further get gets getting got had hadn't has hasn't have haven't having he her here
    hers herself him himself his how however i i'd i'll i'm i've if in into is isn't it it's its itself just let
    let's like many may me might more most much must mustn't my myself no nor not now of off often on once one
    only or other ought our ours ourselves out over own per quite rather really same shall shan't she should
    shouldn't so some such than that that's the their theirs them themselves then there there's these they
    they're this those though through to too under until up upon us very was wasn't we we're we've well were
    weren't what what's when where which while who who's whom whose why will with within without won't would
    wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves
    """.split()
)
# Words that point at the material or the conversation rather than at anything in it.
META_WORDS = frozenset(
    """
    above answer answered answering answers article articles assist assistance assistant author below blog
    content context describe described describes discuss discussed document excerpt give given help information
    main mean meaning mention mentioned mentions paragraph paragraphs passage passages post posts provide
    provided question questions read ready say said says section sentence sentences something specific statement
    story summarize summary talk talked talking tell text texts thing things think topic topics word words write writer
    writes writing written wrote
    """.split()
)
# Generic questions small models write when they do not ask about the passage (and paraphrases of them are
# caught by the embedding similarity).
GENERIC_TEMPLATES = (
    "What is the text above?",
    "What is the text about?",
    "What is this passage about?",
    "What is the main idea of the text?",
    "What is the main topic of the passage?",
    "What is the question?",
    "What is the answer?",
    "What question does the text answer?",
    "What can I do to assist you?",
    "How can I help you today?",
    "What would you like to know?",
    "Can you tell me more about yourself?",
    "Can you tell me more about this?",
    "What do you think about it?",
    "What did you write about?",
    "What is your question?",
    "Who are you?",
    "What do you mean?",
    "Can you summarize the text?",
    "What is the author trying to say?",
)

# Words so common in any question that sharing one with the passage names nothing in particular ("What was the
# most interesting thing you've done?" shares "done" with many a passage).
GENERIC_WORDS = frozenset(
    """
    best big came come comes day days did done favorite favourite find first found get go goes going gone good
    got great important interesting keep kind know last like look looked looking lot made make makes making
    new next old part people place see seen sort take taken time times took try tried use used want wanted way
    ways went year years
    """.split()
)

_TERM = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def stem(word: str) -> str:
    """A crude English stem, enough to match "starters"/"starter", "baking"/"bake", "cycled"/"cycle"."""
    word = word.lower().removesuffix("'s").removesuffix("’s")
    if len(word) <= 4 or not word.isalpha():
        return word
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    return word.rstrip("e") if len(word) > 4 else word


def content_terms(text: str) -> set[str]:
    """The stems of the content words and numbers in `text`: no stopwords, no words about the material itself."""
    terms = set()
    for word in _TERM.findall(unicodedata.normalize("NFKC", text).replace("’", "'")):
        lower = word.lower()
        if lower in STOPWORDS or lower in META_WORDS or lower in GENERIC_WORDS:
            continue
        if len(lower) < 3 and not lower.isdigit():
            continue
        terms.add(stem(lower))
    return terms - _EXCLUDED_STEMS


_EXCLUDED_STEMS = frozenset(stem(w) for w in META_WORDS | GENERIC_WORDS)


def shared_terms(question: str, passage: str) -> set[str]:
    """The content terms the question shares with its passage (empty: it names nothing of it)."""
    return content_terms(question) & content_terms(passage)


def names_passage(question: str, passage: str) -> bool:
    return bool(shared_terms(question, passage))


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


Embed = Callable[[list[str]], np.ndarray]  # texts → unit-length float32 rows


class TemplateGate:
    """Is a question one of the generic templates, or close to one (cosine ≥ `threshold`)?"""

    def __init__(self, embed: Embed, threshold: float, templates: Sequence[str] = GENERIC_TEMPLATES):
        self.embed = embed
        self.threshold = threshold
        self.templates = list(templates)
        self._exact = {_normalized(t) for t in self.templates}
        self._vectors: np.ndarray | None = None

    def similarities(self, questions: list[str]) -> np.ndarray:
        """Each question's highest cosine similarity to a template."""
        if not questions:
            return np.zeros(0, dtype=np.float32)
        if self._vectors is None:
            self._vectors = self.embed(self.templates)
        return (self.embed(questions) @ self._vectors.T).max(axis=1)

    def generic(self, questions: list[str]) -> list[bool]:
        similarity = self.similarities(questions)
        return [
            _normalized(q) in self._exact or float(s) >= self.threshold
            for q, s in zip(questions, similarity, strict=True)
        ]


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    url: str
    text: str


class RoundTrip:
    """Retrieval over the question-writing passages: does a question find its own page in the top k?

    Every passage is cut into the embedding model's windows (`windows`) and each window embedded; a passage
    scores its best window, and the top k passages (by score) are the ones retrieved. It embeds these passages
    rather than reading the RAG index so that `synthetic_qa` does not depend on `rag.*`: re-chunking the index
    re-gates and retrains nothing."""

    def __init__(
        self, passages: Sequence[Passage], embed: Embed, k: int, windows: Callable[[str], list[str]] = lambda t: [t]
    ):
        if not passages:
            raise ValueError("RoundTrip needs at least one passage to retrieve from")
        self.passages = list(passages)
        self.k = k
        self.embed = embed
        owners, texts = [], []
        for position, passage in enumerate(self.passages):
            for window in windows(passage.text) or [passage.text]:
                owners.append(position)
                texts.append(window)
        self._owners = np.asarray(owners)
        self._vectors = embed(texts)

    def ranked_urls(self, questions: list[str]) -> list[list[str]]:
        """For each question, the pages of its top k passages, best first."""
        if not questions:
            return []
        scores = self.embed(questions) @ self._vectors.T  # (questions, windows)
        best = np.full((len(questions), len(self.passages)), -np.inf, dtype=np.float32)
        rows = np.arange(len(questions))[:, None]
        np.maximum.at(best, (rows, self._owners[None, :]), scores)  # each passage: its best window
        order = np.argsort(-best, axis=1, kind="stable")[:, : self.k]
        return [[self.passages[i].url for i in row] for row in order]

    def page_ranks(self, questions: list[str], urls: list[str]) -> list[int | None]:
        """1-based rank of the first top-k passage from each question's page; None: not in the top k."""
        ranks = []
        for retrieved, url in zip(self.ranked_urls(questions), urls, strict=True):
            ranks.append(retrieved.index(url) + 1 if url in retrieved else None)
        return ranks


class QuestionGates:
    """The gates a question passes before `synthetic_qa` keeps it (`qa.gates`), applied to a batch at once."""

    def __init__(
        self,
        enabled: Sequence[str],
        *,
        template: TemplateGate | None = None,
        roundtrip: RoundTrip | None = None,
    ):
        unknown = set(enabled) - set(GATES)
        if unknown:
            raise ValueError(f"unknown question gates {sorted(unknown)}; known: {', '.join(GATES)}")
        if "not_template" in enabled and template is None:
            raise ValueError("the not_template gate needs a TemplateGate")
        if "roundtrip" in enabled and roundtrip is None:
            raise ValueError("the roundtrip gate needs a RoundTrip")
        self.enabled = [g for g in GATES if g in enabled]
        self.template = template
        self.roundtrip = roundtrip

    def reasons(self, questions: list[str], passages: list[str], urls: list[str]) -> list[str | None]:
        """The first gate each question fails (its rejection reason), or None when it passes them all."""
        reasons: list[str | None] = [None] * len(questions)
        if "names_passage" in self.enabled:
            for i, (question, passage) in enumerate(zip(questions, passages, strict=True)):
                if not names_passage(question, passage):
                    reasons[i] = GATE_REASON["names_passage"]
        if "not_template" in self.enabled and self.template is not None:
            open_ = [i for i, r in enumerate(reasons) if r is None]
            for i, generic in zip(open_, self.template.generic([questions[i] for i in open_]), strict=True):
                if generic:
                    reasons[i] = GATE_REASON["not_template"]
        if "roundtrip" in self.enabled and self.roundtrip is not None:
            open_ = [i for i, r in enumerate(reasons) if r is None]
            ranks = self.roundtrip.page_ranks([questions[i] for i in open_], [urls[i] for i in open_])
            for i, rank in zip(open_, ranks, strict=True):
                if rank is None:
                    reasons[i] = GATE_REASON["roundtrip"]
        return reasons


NO_GATES = QuestionGates(())
