"""Golden answers' matcher: does an answer state an accepted fact, and does it decline?

Matching ignores case, punctuation, accents, thousands separators (1,240 = 1 240), currency (£62 = 62 pounds =
GBP 62), unit spellings (8,000 km = 8000 kilometres) and number words (twelve = 12), but never accepts a different
number (62 is not 620, 6.2 or 162). Pure functions; `golden.py` reads the golden file and scores with them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

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

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = {w: i for i, w in enumerate(f"{_ONES} seventeen eighteen nineteen".split())} | {
    w: 10 * i for i, w in enumerate(_TENS.split(), start=2)
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_CURRENCY_PREFIXES = {"£": "gbp", "$": "usd", "€": "eur", "gbp": "gbp", "usd": "usd", "eur": "eur"}
_CURRENCIES = (
    _CURRENCY_PREFIXES
    | dict.fromkeys(("pound", "pounds", "quid"), "gbp")
    | {"dollar": "usd", "dollars": "usd", "euro": "eur", "euros": "eur"}
)
_UNITS = (  # canonical unit: its other spellings
    "km: kms kilometre kilometres kilometer kilometers | m: metre metres meter meters | mm: millimetre millimetres "
    "millimeter millimeters | cm: centimetre centimetres centimeter centimeters | kg: kgs kilo kilos kilogram "
    "kilograms | g: gram grams gramme grammes | h: hour hours hr hrs | min: minute minutes mins | s: sec secs seconds "
    "| %: percent pct | deg: degree degrees ° | kcal: kcals calorie calories kilocalories | gb: gigabyte gigabytes "
    "| mi: mile miles | pence: p"
)
_UNIT_ALIASES = {
    alias: unit.strip() for unit, aliases in (e.split(":") for e in _UNITS.split("|")) for alias in aliases.split()
}
_PHRASES = [  # multi-word spellings, rewritten before tokenising
    (re.compile(r"°\s*c\b|℃|\bdeg(?:rees?)?\s+(?:c|celsius|centigrade)\b|\bcelsius\b|\bcentigrade\b"), " degc "),
    (re.compile(r"\bper\s+cent\b"), " % "),
    (re.compile(r"\bkm\s*/\s*h\b|\bkph\b|\bkilomet(?:re|er)s?\s+(?:per|an|a)\s+hour\b"), " kmh "),
    (re.compile(r"(\d)(?:st|nd|rd|th)\b"), r"\1"),  # ordinals: 57th = 57
    (re.compile(r"(?<![\d.,])(\d{1,3})[\u00a0\u202f\u2009 ](?=\d{3}(?!\d))"), r"\1"),  # 1 240 = 1240
]
_TOKEN = re.compile(r"\d+(?:\.\d+){2,}|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|[^\W\d_]+|[£$€%°]")


def _fold(text: str) -> str:
    """NFKC, lower case, no accents, straight apostrophes: the spelling differences that never change meaning."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return "".join(c for c in text if not unicodedata.combining(c)).replace("\u2019", "'")


def _number(token: str) -> str:
    try:
        return format(Decimal(token.replace(",", "")).normalize(), "f")
    except InvalidOperation:  # a dotted version such as 0.10.0 stays as written
        return token


def _is_number(token: str) -> bool:
    return token[:1].isdigit()


def _read_number(raw: list[str], i: int) -> tuple[str, int] | None:
    """The number that starts at raw[i] when it is spelled in words or has a scale ("three hundred and twelve",
    "1.4 billion"): (its digits, the index after it); None otherwise. Digits and words are never mixed otherwise,
    so "2021 one" stays two numbers."""
    first = raw[i]
    if first in _NUMBER_WORDS:
        current = Decimal(_NUMBER_WORDS[first])
    elif _is_number(first) and i + 1 < len(raw) and raw[i + 1] in _SCALES:
        current = Decimal(first)
    else:
        return None
    total, j = Decimal(0), i + 1
    while j < len(raw):
        token, small = raw[j], _NUMBER_WORDS.get(raw[j])
        if token in _SCALES and current:
            if _SCALES[token] == 100:
                current *= 100
            else:
                total, current = total + current * _SCALES[token], Decimal(0)
        elif token == "and" and total + current >= 100 and j + 1 < len(raw) and raw[j + 1] in _NUMBER_WORDS:
            pass
        elif small is not None and small < 10 and 20 <= current % 100 and current % 10 == 0:
            current += small  # twenty one
        elif small is not None and current % 100 == 0 and (current >= 100 or (total and not current)):
            current += small  # three hundred twelve, two thousand five
        else:
            break
        j += 1
    return _number(str(total + current)), j


def _tokens(text: str) -> list[str]:
    """The canonical token sequence: numbers as plain decimals, currency after the amount as a code, units one
    spelling each. Answers and facts go through the same function, so a fact matches where its tokens occur."""
    text = _fold(text)
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)
    raw = [_number(t) if _is_number(t) else t for t in _TOKEN.findall(text)]
    merged: list[str] = []
    i = 0
    while i < len(raw):
        token, i = _read_number(raw, i) or (raw[i], i + 1)
        merged.append(token)
    out: list[str] = []
    for i, token in enumerate(merged):
        if token in _CURRENCY_PREFIXES and i + 1 < len(merged) and _is_number(merged[i + 1]):
            continue  # £62 and GBP 62: the code goes after the amount, as in "62 pounds"
        prefix = _CURRENCY_PREFIXES.get(merged[i - 1]) if i and _is_number(token) else None
        out.extend([token, prefix] if prefix else [_CURRENCIES.get(token) or _UNIT_ALIASES.get(token) or token])
    return out


def _contains(haystack: list[str], needle: list[str]) -> bool:
    """needle as a contiguous run of haystack; a fact's °C also accepts plain "degrees", as people say it."""
    n = len(needle)
    return n > 0 and any(
        all(a == f or (f == "degc" and a == "deg") for a, f in zip(haystack[i : i + n], needle, strict=True))
        for i in range(len(haystack) - n + 1)
    )


def states_fact(answer: str, fact: Fact) -> bool:
    """True if `answer` states `fact`: a regex is searched case-insensitively, anything else matches its canonical
    tokens as a contiguous run of the answer's (word boundaries, so a near number never matches)."""
    if not isinstance(answer, str) or not answer:
        return False
    if isinstance(fact, RegexFact):
        return re.search(fact.pattern, unicodedata.normalize("NFKC", answer), re.IGNORECASE) is not None
    return _contains(_tokens(answer), _tokens(str(fact)))


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
    text = _fold(answer)
    if not _DECLINES.search(text):
        return False
    return _DIGIT.search(_DECLINES.sub(" ", text)) is None
