"""mebot's text vocabulary: how text is folded and cut into tokens wherever two texts are compared.

`canonical_tokens` reads figures the way a person means them: case, punctuation, accents, thousands separators
(1,240 = 1 240), currency (£62 = 62 pounds = GBP 62), unit spellings (8,000 km = 8000 kilometres) and number
words (twelve = 12) do not matter, a different number always does (62 is not 620, 6.2 or 162).
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

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


def fold(text: str) -> str:
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


def canonical_tokens(text: str) -> list[str]:
    """The canonical token sequence: numbers as plain decimals, currency after the amount as a code, units one
    spelling each. Answers and facts go through the same function, so a fact matches where its tokens occur."""
    text = fold(text)
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


def contains_run(haystack: list[str], needle: list[str]) -> bool:
    """needle as a contiguous run of haystack; a fact's °C also accepts plain "degrees", as people say it."""
    n = len(needle)
    return n > 0 and any(
        all(a == f or (f == "degc" and a == "deg") for a, f in zip(haystack[i : i + n], needle, strict=True))
        for i in range(len(haystack) - n + 1)
    )


def is_unit(word: str) -> bool:
    """A currency or unit word the canonical tokens know (km, kilometres, pounds, %, ...)."""
    folded = fold(word.strip())
    return folded in _UNIT_ALIASES or folded in _UNIT_ALIASES.values() or folded in _CURRENCIES
