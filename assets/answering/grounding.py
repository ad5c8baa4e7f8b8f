"""Is a generated answer grounded in the context it was given? The claims an answer states (numbers with their
currency or unit, dates, names, quoted titles) are looked up in that context, spelled the way the golden matcher
reads them, so "£95" is found in "95 pounds" and "1,240 km" in "1240 kilometres", but 95 never in 950.

Pure functions, whatever model wrote the answer.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from mebot.assets.text import canonical_tokens, contains_run, is_unit

_MONTHS = (
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
_MONTH = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_AMOUNT = r"[£$€]?\s?\d(?:[\d,]*\d)?(?:\.\d+)?"
_UNIT_WORD = r"(?:\s?(?:%|°\s?c?|[a-z]{1,12}\b))?"
_NUMBER_CLAIM = re.compile(rf"(?<![\w.]){_AMOUNT}{_UNIT_WORD}", re.IGNORECASE)
_DATE_CLAIM = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:\s+\d{{4}})?|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|{_MONTH}\s+\d{{4}}|{_MONTH})\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"“”«]([^\"“”«»]{3,120})[\"“”»]|(?<!\w)[‘']([^‘’']{3,120})[’'](?!\w)")
_NAME = re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:of\s+|the\s+|de\s+|van\s+)?[A-Z][\w'’-]*)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*|[\"“(]\s*)$")
# capitalised words that name nothing: pronouns, greetings, words that open a clause
_NOT_NAMES = set(
    "i i'm i've i'd i'll my me mine we our you your yes no not oh ok okay hi hello thanks thank sorry well so and but "
    "or if when while because as the a an this that these those it it's its there here what which who how why where "
    "also then however still just yet monday tuesday wednesday thursday friday saturday sunday".split()
) | set(_MONTHS)


@dataclass(frozen=True)
class Grounding:
    """What an answer claims that its context does not support; `grounded` when that is nothing."""

    claims: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = field(default=())

    @property
    def grounded(self) -> bool:
        return not self.unsupported


def _number_claims(answer: str) -> list[str]:
    """Every figure written with digits, with its currency sign before it and its unit word after it."""
    claims = []
    for match in _NUMBER_CLAIM.finditer(answer):
        text = match.group(0).strip()
        amount = re.match(_AMOUNT, text)
        tail = text[amount.end() :].strip() if amount else ""
        if tail and not is_unit(tail):  # "3 times": the figure alone
            text = amount.group(0).strip()
        claims.append(text)
    return claims


def _date_claims(answer: str) -> list[str]:
    return [m.group(0).strip() for m in _DATE_CLAIM.finditer(answer) if not m.group(0).strip().isdigit()]


def _name_claims(answer: str, known_names: tuple[str, ...]) -> list[str]:
    """Runs of capitalised words that are not the first word of a sentence, a pronoun or a known name."""
    known = {token for name in known_names for token in canonical_tokens(name)}
    claims = []
    for match in _NAME.finditer(answer):
        words = match.group(0).split()
        if _SENTENCE_START.search(answer[: match.start()]):
            words = words[1:]  # a sentence's first word is capitalised whatever it is
        words = [w.strip("'’") for w in words if w.casefold().strip("'’") not in _NOT_NAMES]
        words = [w for w in words if len(w) > 1 and not is_unit(w)]
        name = " ".join(words)
        if name and not set(canonical_tokens(name)) <= known and any(c.isalpha() for c in name):
            claims.append(name)
    return claims


def _quoted_claims(answer: str) -> list[str]:
    return [(m.group(1) or m.group(2)).strip() for m in _QUOTED.finditer(answer) if (m.group(1) or m.group(2)).strip()]


def answer_claims(answer: str, known_names: tuple[str, ...] = ()) -> list[str]:
    """The checkable claims of `answer`, each as written, in order of kind (figures, dates, names, titles)."""
    text = unicodedata.normalize("NFKC", answer or "")
    found = _number_claims(text) + _date_claims(text) + _name_claims(text, known_names) + _quoted_claims(text)
    return list(dict.fromkeys(found))


def check_grounding(answer: str, context: str, known_names: tuple[str, ...] = ()) -> Grounding:
    """The claims of `answer` and those of them not found in `context` (a claim is found where its canonical
    tokens occur as one run in the context's; `known_names`, e.g. the persona's, need no source)."""
    claims = answer_claims(answer, known_names)
    context_tokens = canonical_tokens(context or "")
    unsupported = [c for c in claims if not contains_run(context_tokens, canonical_tokens(c))]
    return Grounding(tuple(claims), tuple(unsupported))
