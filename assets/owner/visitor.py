"""What the visitor log says about an answer, computed without a model: declined (the golden scorer's refusal
test), grounded (most of the answer's content words are in the pages it was based on) and weak evidence (few of
the question's content words are in the best page retrieved). Cheap enough to compute on every answer served."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mebot.assets.evaluation.golden_match import is_refusal

GROUNDED_SHARE = 0.5  # of the answer's content words found in its sources
WEAK_EVIDENCE_SHARE = 0.34  # of the question's content words found in the best source
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be but by did do does for from had has have how i in is it its me my of on or so that the "
    "their them there they this to was were what when where which who why will with would you your yours".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in (m.group(0).casefold() for m in _WORD.finditer(text or "")) if w not in STOPWORDS}


@dataclass(frozen=True)
class AnswerFlags:
    declined: bool
    grounded: bool | None  # None: an answer with no sources (a fine-tuned model's) cannot be checked
    weak_evidence: bool


def answer_flags(question: str, answer: str, source_texts: Sequence[str]) -> AnswerFlags:
    """The flags of one answer given the texts of its sources, best first."""
    declined = is_refusal(answer)
    if not source_texts:
        return AnswerFlags(declined, None, True)
    said = content_words(answer)
    in_sources = content_words(" ".join(source_texts))
    grounded = (not said) or declined or len(said & in_sources) / len(said) >= GROUNDED_SHARE
    asked = content_words(question)
    weak = bool(asked) and len(asked & content_words(source_texts[0])) / len(asked) < WEAK_EVIDENCE_SHARE
    return AnswerFlags(declined, grounded, weak)
