"""Golden answers' matcher: does an answer state an accepted fact, and does it decline? A fact matches where its
canonical tokens (assets/text.py: tolerant of spelling, never of a different number) occur in the answer's.
Pure functions; `golden.py` reads the golden file and scores with them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from mebot.assets.text import canonical_tokens, contains_run, fold

# ------------------------------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class RegexFact:
    """A fact given as a regular expression (case-insensitive, searched in the answer's NFKC text)."""

    pattern: str


Fact = str | RegexFact


@dataclass(frozen=True)
class FactSpec:
    """A right answer states every fact of `all_of` and, if `any_of` is not empty, at least one of `any_of`."""

    all_of: tuple[Fact, ...] = ()
    any_of: tuple[Fact, ...] = ()

    @property
    def facts(self) -> tuple[Fact, ...]:
        return self.all_of + self.any_of


# ------------------------------------------------------------------------------------------- fact matching

# golden.py still reads the matcher's private names
_fold = fold
_tokens = canonical_tokens


def states_fact(answer: str, fact: Fact) -> bool:
    """True if `answer` states `fact`: a regex is searched case-insensitively, anything else matches its canonical
    tokens as a contiguous run of the answer's (word boundaries, so a near number never matches)."""
    if not isinstance(answer, str) or not answer:
        return False
    if isinstance(fact, RegexFact):
        return re.search(fact.pattern, unicodedata.normalize("NFKC", answer), re.IGNORECASE) is not None
    return contains_run(canonical_tokens(answer), canonical_tokens(str(fact)))


def answer_states_facts(answer: str, spec: FactSpec) -> bool:
    """All of `all_of` and one of `any_of` (when given); a spec without facts is never satisfied."""
    if not spec.facts:
        return False
    return all(states_fact(answer, f) for f in spec.all_of) and (
        not spec.any_of or any(states_fact(answer, f) for f in spec.any_of)
    )


# ------------------------------------------------------------------------------------------------- refusals

_DECLINES = re.compile(
    r"not programmed to answer|"
    r"\bi (?:do not|don't|dont|really don't) (?:know|have (?:any |that |enough )?(?:information|details|data))|"
    r"\bi (?:can ?not|can't|cant|am unable to|'m unable to|am not able to|'m not able to|won't be able to) "
    r"(?:answer|say|tell|help|share|comment|provide|speak|recall|remember)|"
    r"\b(?:not|never) (?:something|anything|a topic|a subject) (?:that )?(?:i've|i have|i) (?:ever )?"
    r"(?:written|write|blogged|posted|talked|mentioned|covered|shared)|"
    r"\bi (?:have not|haven't|have never|never) (?:written|blogged|posted|mentioned|talked|shared)\b|"
    r"\bno (?:idea|information|details)\b|\bi(?:'m| am) not sure\b|\bi(?:'d| would) rather not (?:say|answer|share)|"
    r"\b(?:can ?not|can't) be answered\b|\bisn't something i can\b|\bis not something i can\b"
)
_DIGIT = re.compile(r"\d")


def is_refusal(answer: str | None) -> bool:
    """The answer declines (the original prompt's "I am not programmed to answer that", "I don't know", "not
    something I've written about", ...) and states no figure besides: "I'm not sure, but it was £640" answers."""
    if not isinstance(answer, str):
        return False
    text = fold(answer)
    if not _DECLINES.search(text):
        return False
    return _DIGIT.search(_DECLINES.sub(" ", text)) is None
