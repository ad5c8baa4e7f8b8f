"""What an LLM judge's reply says, free of Dagster: the score 0-10 it gave, two ways, as in the reproduced write-up.

The expected score over the probabilities of the score tokens at the first generated position
(`score_distribution`, or `distribution_from_mapping` for bring-your-own results) and the score it wrote
(`parse_direct_score`); `score_constraint` makes every reply a score (a grammar, or a JSON schema)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SCORE_VALUES = tuple(range(11))
_SCORE_TOKENS = {str(s): s for s in SCORE_VALUES}


@dataclass(frozen=True)
class ScoreDistribution:
    probabilities: dict[int, float]  # renormalised over the valid scores 0..10 (sums to 1), empty if no mass
    valid_mass: float  # probability mass that fell on valid score tokens before renormalising
    argmax: int | None
    expected: float | None  # sum(s * p(s)); None when valid_mass == 0
    ten_resolved: bool  # whether P("10") could be separated from P("1")


def _probabilities(logprobs: Mapping[str, float], *, strip: bool = True) -> dict[str, float]:
    """{token: probability}; tokens that differ only by whitespace (" 7", "7") are one alternative's mass."""
    probs: dict[str, float] = {}
    for token, logprob in logprobs.items():
        if logprob is None or math.isnan(logprob):
            continue
        key = token.strip() if strip else token
        probs[key] = probs.get(key, 0.0) + math.exp(logprob)
    return probs


def _split_after_one(continuation: Mapping[str, float]) -> tuple[float, float]:
    """(P("0" next | "1"), P(another digit next | "1")) from the alternatives after a "1"; a token continues the
    number only when it starts with a digit (" 0" after "1" is "1 0", not ten)."""
    p_zero = p_other = 0.0
    for token, p in _probabilities(continuation, strip=False).items():
        digits = re.match(r"\d*", token.rstrip()).group()
        if not digits:
            continue
        if digits == "0":
            p_zero += p
        else:  # "15", "100": not a score
            p_other += p
    return min(p_zero, 1.0), min(p_other, 1.0 - min(p_zero, 1.0))


def _distribution(mass: dict[int, float], valid_mass: float, ten_resolved: bool) -> ScoreDistribution:
    total = sum(mass.values())
    if total <= 0:
        return ScoreDistribution({}, 0.0, None, None, ten_resolved)
    probabilities = {s: mass.get(s, 0.0) / total for s in SCORE_VALUES}
    argmax = max(SCORE_VALUES, key=lambda s: (probabilities[s], -s))  # ties go to the lower score
    expected = sum(s * p for s, p in probabilities.items())
    return ScoreDistribution(probabilities, valid_mass, argmax, expected, ten_resolved)


def score_distribution(
    positions: list[dict[str, float]],
    chosen: list[str],
    *,
    continuation_after_one: dict[str, float] | None = None,
) -> ScoreDistribution:
    """The judge's score distribution from its token logprobs.

    positions[i] = {token: logprob} of the top alternatives at generated position i (0 = first generated token),
    chosen[i] = the token generated there; tokens are compared stripped of whitespace. A single "10" token is a
    candidate at position 0. Where "10" is "1" then "0" (SmolLM2's tokenizer): when chosen[0] is "1" and position
    1 exists, P(10) = P("1")·P("0" | "1") and P(1) = P("1")·(1 − P("0" | "1") − P(other digit | "1")) — the
    alternatives not in the top list are taken to end the number. Otherwise the split of "1" is unknown: all of
    it counts as 1 and `ten_resolved` is False, unless `continuation_after_one` (the alternatives after a forced
    "1", from a second call) gives the split. `ten_resolved` is also True when there is no mass on "1" to split.
    Mass on tokens that are not valid scores ("The", "\\n", "15") is excluded; `valid_mass` reports what was left.
    """
    if not positions:
        return ScoreDistribution({}, 0.0, None, None, False)
    first = _probabilities(positions[0])
    mass: dict[int, float] = {}
    for token, p in first.items():
        if token in _SCORE_TOKENS:
            mass[_SCORE_TOKENS[token]] = mass.get(_SCORE_TOKENS[token], 0.0) + p
    p_one = mass.pop(1, 0.0)
    chosen_first = chosen[0].strip() if chosen else None
    if chosen_first == "1" and len(positions) > 1:
        continuation: Mapping[str, float] | None = positions[1]
    else:
        continuation = continuation_after_one
    if p_one > 0 and continuation is not None:
        p_zero, p_other = _split_after_one(continuation)
        mass[10] = mass.get(10, 0.0) + p_one * p_zero
        mass[1] = p_one * (1.0 - p_zero - p_other)
        ten_resolved = True
    else:
        mass[1] = p_one
        ten_resolved = p_one == 0 or "10" in first  # a single "10" token: "1" is then just one
    return _distribution(mass, float(sum(mass.values())), ten_resolved)


def distribution_from_mapping(mapping: Mapping) -> ScoreDistribution:
    """A distribution given as {"0": p0, …, "10": p10} (bring-your-own judge; int keys too, any subset of 0..10,
    non-negative numbers, need not be normalised). `valid_mass` is the total when it is at most 1 (probabilities
    that left some mass elsewhere), else 1 (weights or counts). Raises ValueError naming the bad key or value."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"a judge distribution must be an object like {{'0': 0.1, …, '10': 0.2}}, got {mapping!r}")
    mass: dict[int, float] = {}
    for key, value in mapping.items():
        score = score_key(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"judge distribution value for score {key!r} is {value!r}; use a non-negative number")
        mass[score] = mass.get(score, 0.0) + float(value)
    total = sum(mass.values())
    if total <= 0:
        raise ValueError("judge distribution has no mass (all values are 0 or it is empty)")
    return _distribution(mass, min(total, 1.0), True)


def score_key(key: object) -> int:
    if isinstance(key, bool):
        key = repr(key)
    if isinstance(key, int) and key in _SCORE_TOKENS.values():
        return key
    if isinstance(key, str) and key.strip() in _SCORE_TOKENS:
        return _SCORE_TOKENS[key.strip()]
    raise ValueError(f"judge distribution key {key!r} is not a score; use the keys '0' to '10'")


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
# "on a scale of 0 to 10", "(1-10)": the scale's bounds are not the score
_SCALE = re.compile(
    r"\b(?:from|of|between)\s+[01]\s*(?:-|–|to|and)\s*10\b|\(\s*[01]\s*(?:-|–|to)\s*10\s*\)", re.IGNORECASE
)
_DENOMINATOR_BEFORE = re.compile(r"(?:/|\bout\s+of)\s*$", re.IGNORECASE)
_NUMBER_WORDS = {w: float(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_WORD_REPLY = re.compile(r"^\W*(?:(?:score|rating)\s*[:=]?\s*)?\W*([a-z]+)\W*$", re.IGNORECASE)


def parse_direct_score(text: str | None) -> float | None:
    """A judge's plain reply as a score in [0, 10], or None when it has none.

    "7", "7.", " 8/10", "Score: 9", "9 out of 10", "**6**", "Rating: 7.5" → 7, 7, 8, 9, 9, 6, 7.5. With several
    numbers, the first in 0..10 that is not the "/10" or "out of 10" denominator nor a scale's bounds ("on a
    scale of 0 to 10"). Out-of-range numbers ("42", "-3") are skipped. A spelled-out number counts only when it
    is the whole reply ("Ten.", "**seven**", "Score: eight"): inside a sentence words like "one" are too often
    not scores."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    text = str(text)
    cleaned = _SCALE.sub(" ", text)
    for match in _NUMBER.finditer(cleaned):
        if _DENOMINATOR_BEFORE.search(cleaned[: match.start()]):
            continue
        value = float(match.group())
        if 0 <= value <= 10:
            return value
    word = _WORD_REPLY.match(text.strip())
    if word and not any(ch.isdigit() for ch in text):
        return _NUMBER_WORDS.get(word.group(1).lower())
    return None


# ------------------------------------------------------------------------------------------ constrained judge
# The logprobs a server reports are the model's own, unconstrained; renormalised over the 11 score tokens at the
# score's position (`score_start`) they are the constrained distribution, so the expected score is read as above.

# One optional non-digit after the score, so a "1" the model means as one is not forced into "10".
SCORE_GBNF = 'root ::= ("10" | [0-9]) [^0-9]?'
SCORE_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": list(SCORE_VALUES)}},
    "required": ["score"],
    "additionalProperties": False,
}
SCORE_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "judge_score", "strict": True, "schema": SCORE_JSON_SCHEMA},
}
GRAMMAR_MAX_TOKENS = 3  # "1", "0", "."
JSON_MAX_TOKENS = 16  # {"score": 10}


def score_constraint(provider: str) -> dict[str, Any]:
    """`ChatClient.complete` arguments that make a judge's reply a score 0..10 (and room enough to write it)."""
    if provider == "llama_cpp":
        return {"grammar": SCORE_GBNF, "max_tokens": GRAMMAR_MAX_TOKENS}
    return {"response_format": SCORE_RESPONSE_FORMAT, "max_tokens": JSON_MAX_TOKENS}


def score_start(tokens: Sequence[str]) -> int:
    """The generated position where the score starts: the first token that starts with a digit (after
    whitespace), e.g. 3 in `{"`, `score`, `":`, ` 7`, `}`; 0 when there is none."""
    for position, token in enumerate(tokens):
        if token.strip()[:1].isdigit():
            return position
    return 0
