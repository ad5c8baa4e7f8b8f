"""Golden questions: a person's own questions about their site, and the facts a right answer must state.

Synthetic questions and a tiny LLM judge can both be noise; the person a bot imitates knows their own facts. They
write the exam (format and examples: data/golden/sample_site.yaml) and it is scored without a judge: an answer is
right when it states an accepted fact, an unanswerable question must be declined, and the source page should be
among those retrieved. Matching ignores case, punctuation, accents, thousands separators (1,240 = 1 240), currency
(£62 = 62 pounds = GBP 62), unit spellings (8,000 km = 8000 kilometres) and number words (twelve = 12), but never
accepts a different number (62 is not 620, 6.2 or 162). Pure functions (no Dagster, no models): assets wrap them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import yaml

# ---------------------------------------------------------------------------------------------- data model


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


@dataclass(frozen=True)
class GoldenQuestion:
    id: str
    question: str
    source: str | None  # site-relative path or URL of the page that states the answer; None when unanswerable
    facts: FactSpec | None  # None exactly when unanswerable
    line: int  # where the entry starts in the file, for messages

    @property
    def answerable(self) -> bool:
        return self.facts is not None


@dataclass(frozen=True)
class GoldenSet:
    path: str
    questions: tuple[GoldenQuestion, ...]

    def by_id(self) -> dict[str, GoldenQuestion]:
        return {q.id: q for q in self.questions}


class GoldenFileError(ValueError):
    """A golden file that cannot be used; the message names the file, the line and the field."""


# ------------------------------------------------------------------------------------------------- loading

_QUESTION_KEYS = {"id", "question", "source", "facts", "unanswerable"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SCALARS = yaml.constructor.SafeConstructor()


class _Reader:
    """Walks the composed YAML node tree, so that every error can name the line a person has to fix."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node, field: str, message: str) -> GoldenFileError:
        return GoldenFileError(f"{self.path} line {node.start_mark.line + 1}, {field}: {message}")

    def mapping(self, node: yaml.Node, field: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, field, "expected a mapping (key: value lines)")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            name = f"{field}.{key}" if field else str(key)
            if key not in allowed:
                raise self.error(key_node, name, f"unknown key; expected one of {', '.join(sorted(allowed))}")
            if key in entries:
                raise self.error(key_node, name, "duplicate key")
            entries[key] = (key_node, value_node)
        return entries

    def scalar(self, node: yaml.Node, field: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, field, "expected a single value")
        return _SCALARS.construct_object(node)  # YAML's own typing: 12 is an int, true a bool, "12" text

    def text(self, node: yaml.Node, field: str) -> str:
        value = self.scalar(node, field)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, field, "expected non-empty text")
        return value.strip()

    def fact(self, node: yaml.Node, field: str) -> Fact:
        if isinstance(node, yaml.MappingNode):
            entries = self.mapping(node, field, {"regex"})
            if "regex" not in entries:
                raise self.error(node, f"{field}.regex", "missing")
            pattern_node = entries["regex"][1]
            pattern = self.text(pattern_node, f"{field}.regex")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.error(pattern_node, f"{field}.regex", f"bad regular expression: {exc}") from None
            return RegexFact(pattern)
        value = self.scalar(node, field) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
            raise self.error(node, field, "a fact is text, a number or {regex: ...} (quote yes/no/true/false)")
        if not _tokens(str(value)):
            raise self.error(node, field, "a fact needs at least one word or number")
        return str(value).strip()

    def facts(self, node: yaml.Node, field: str) -> FactSpec:
        """{any_of: [...]} and/or {all_of: [...]}; a plain list, a single fact or {regex: ...} mean any_of."""
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" or node.value in ({}, []):
            raise self.error(node, field, "an answerable question needs at least one fact")
        if not isinstance(node, yaml.MappingNode) or any(k.value == "regex" for k, _ in node.value):
            return FactSpec(any_of=self.fact_list(node, field))
        entries = self.mapping(node, field, {"all_of", "any_of"})
        lists = {key: self.fact_list(value, f"{field}.{key}") for key, (_, value) in entries.items()}
        return FactSpec(all_of=lists.get("all_of", ()), any_of=lists.get("any_of", ()))

    def fact_list(self, node: yaml.Node, field: str) -> tuple[Fact, ...]:
        if not isinstance(node, yaml.SequenceNode):
            return (self.fact(node, field),)
        if not node.value:
            raise self.error(node, field, "an empty list: give at least one fact, or leave the key out")
        return tuple(self.fact(item, f"{field}[{i}]") for i, item in enumerate(node.value))

    def source(self, node: yaml.Node, field: str) -> str:
        source = self.text(node, field)
        parts = urlsplit(source)
        is_url = parts.scheme in ("http", "https") and bool(parts.netloc)
        path = source.startswith("/") and not source.startswith("//")
        if not (is_url or path) or any(c.isspace() for c in source):
            raise self.error(node, field, f"expected a site-relative path (/posts/x/) or an http(s) URL: {source!r}")
        return source

    def question(self, node: yaml.Node, field: str, seen: dict[str, int]) -> GoldenQuestion:
        entries = self.mapping(node, field, _QUESTION_KEYS)
        for required in ("id", "question"):
            if required not in entries:
                raise self.error(node, f"{field}.{required}", "missing")
        id_node = entries["id"][1]
        qid = str(self.scalar(id_node, f"{field}.id")).strip()
        if not _ID.match(qid):
            raise self.error(id_node, f"{field}.id", "letters, digits, '-', '_' and '.' only")
        if qid in seen:
            raise self.error(id_node, f"{field}.id", f"duplicate id {qid!r} (first on line {seen[qid]})")
        seen[qid] = id_node.start_mark.line + 1
        flag_node = entries.get("unanswerable", (None, None))[1]
        unanswerable = False if flag_node is None else self.scalar(flag_node, f"{field}.unanswerable")
        if not isinstance(unanswerable, bool):
            raise self.error(flag_node, f"{field}.unanswerable", "expected true or false")
        facts_entry, source_entry = entries.get("facts"), entries.get("source")
        if unanswerable:
            for name, entry in (("facts", facts_entry), ("source", source_entry)):
                if entry is not None:
                    raise self.error(entry[0], f"{field}.{name}", "an unanswerable question has no " + name)
            facts, source = None, None
        else:
            if facts_entry is None:
                raise self.error(node, f"{field}.facts", "an answerable question needs at least one fact")
            if source_entry is None:
                raise self.error(node, f"{field}.source", "an answerable question needs the page that states it")
            facts = self.facts(facts_entry[1], f"{field}.facts")
            source = self.source(source_entry[1], f"{field}.source")
        question = self.text(entries["question"][1], f"{field}.question")
        return GoldenQuestion(qid, question, source, facts, node.start_mark.line + 1)


def load_golden(path: str | Path) -> GoldenSet:
    """Read and validate a golden file; GoldenFileError (file, line, field) on anything a person must fix."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GoldenFileError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise GoldenFileError(f"{name}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    reader = _Reader(name)
    if root is None:
        raise GoldenFileError(f"{name} line 1, questions: missing (the file is empty)")
    entries = reader.mapping(root, "", {"questions"})
    if "questions" not in entries:
        raise reader.error(root, "questions", "missing")
    items = entries["questions"][1]
    if not isinstance(items, yaml.SequenceNode) or not items.value:
        raise reader.error(items, "questions", "expected a non-empty list of questions")
    seen: dict[str, int] = {}
    questions = tuple(reader.question(item, f"questions[{i}]", seen) for i, item in enumerate(items.value))
    return GoldenSet(name, questions)


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


# ------------------------------------------------------------------------------------------------- scoring

ANSWER_COLUMNS = ["question_id", "model", "answer", "sources_json", "latency_s"]
"""Input of score_golden_answers, one row per (question_id, model): the answer text (missing: not answered);
sources_json, a JSON list of {url, title, score} in retrieval order ("" or "[]": retrieved nothing; a `sources`
column is read when there is no sources_json); latency_s in seconds (optional). A frame with a `question` column
instead of question_id (a bring-your-own answers file) is matched on the question text."""

SCORE_COLUMNS = [
    "id",
    "model",
    "question",
    "answerable",
    "answer",
    "correct",
    "refused",
    "false_refusal",
    "n_sources",
    "source_rank",
    "latency_s",
]
"""Output, one row per golden question per model: correct = answerable and states its facts; refused = declines
(and is not correct); false_refusal = answerable and refused; n_sources = how many sources were retrieved;
source_rank = 1-based rank of the question's source page among the first k of them, missing when absent; answer
and latency_s missing when the model has no answer to the question."""


def _page_path(url: str) -> str:
    """/posts/x/, /posts/x, /posts/x/index.html and https://site/posts/x/ are one page."""
    path = urlsplit(str(url)).path or "/"
    path = re.sub(r"/index\.html?$", "/", path)
    return path.rstrip("/") or "/"


def _sources(value: Any) -> list[dict]:
    """sources_json as a list of {url, ...}; missing, empty or NaN is no sources."""
    parsed = (json.loads(value) if value.strip() else []) if isinstance(value, str) else value
    return [s for s in parsed if isinstance(s, dict)] if isinstance(parsed, list) else []


def source_rank(sources: Iterable[dict], source: str, k: int) -> int | None:
    """1-based rank of the first of the top k sources on the page `source`; None when it is not among them."""
    wanted = _page_path(source)
    for rank, item in enumerate(list(sources)[:k], start=1):
        if _page_path(item.get("url", "")) == wanted:
            return rank
    return None


def score_golden_answers(golden: GoldenSet, answers: pd.DataFrame, k: int) -> pd.DataFrame:
    """SCORE_COLUMNS for every golden question and every model in `answers` (a question a model did not answer
    scores as unanswered: neither correct nor refused)."""
    frame = answers.copy()
    if not {"model", "answer"} <= set(frame.columns) or not {"question_id", "question"} & set(frame.columns):
        raise ValueError(f"answers needs columns question_id (or question), model, answer; has {list(frame.columns)}")
    if "question_id" not in frame.columns:
        ids = {" ".join(_fold(q.question).split()): q.id for q in golden.questions}
        frame["question_id"] = [ids.get(" ".join(_fold(str(q)).split())) for q in frame["question"]]
    if "sources_json" not in frame.columns:
        frame["sources_json"] = frame["sources"] if "sources" in frame.columns else None
    if "latency_s" not in frame.columns:
        frame["latency_s"] = math.nan
    if frame.duplicated(["question_id", "model"]).any():
        raise ValueError("answers has more than one row for a (question_id, model)")
    rows = []
    indexed = frame.set_index(["question_id", "model"])
    for model in sorted(frame["model"].dropna().unique(), key=str):
        for q in golden.questions:
            hit = indexed.loc[(q.id, model)] if (q.id, model) in indexed.index else None
            answer = hit["answer"] if hit is not None and isinstance(hit["answer"], str) else None
            sources = _sources(hit["sources_json"]) if hit is not None else []
            correct = q.facts is not None and answer is not None and answer_states_facts(answer, q.facts)
            refused = not correct and is_refusal(answer)
            rank = source_rank(sources, q.source, k) if q.source else None
            latency = float(hit["latency_s"]) if hit is not None and pd.notna(hit["latency_s"]) else math.nan
            false_refusal = q.answerable and refused
            rows.append(
                [
                    q.id,
                    model,
                    q.question,
                    q.answerable,
                    answer,
                    correct,
                    refused,
                    false_refusal,
                    len(sources),
                    rank,
                    latency,
                ]
            )
    types = dict.fromkeys(["answerable", "correct", "refused", "false_refusal"], "bool")
    return pd.DataFrame(rows, columns=SCORE_COLUMNS).astype(
        types | {"n_sources": "int64", "source_rank": "Int64", "latency_s": "float64"}
    )


def _mean(values: pd.Series) -> float:
    return float(values.astype(float).mean()) if len(values) else math.nan


def golden_summary(scores: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """Per model: fact_accuracy and false_refusal_rate over answerable questions, refusal_accuracy over the
    unanswerable ones, hit_at_k and mrr over answerable questions that retrieved anything, latency p50/p95 over
    answered questions, and the counts behind them. NaN where a rate has nothing to count."""
    summary: dict[str, dict[str, float | int]] = {}
    for model, rows in scores.groupby("model", sort=True):
        answerable, unanswerable = rows[rows["answerable"]], rows[~rows["answerable"]]
        retrieved = answerable[answerable["n_sources"] > 0]
        ranks = retrieved["source_rank"].astype("Float64").fillna(0).astype(float).to_numpy()
        latencies = rows["latency_s"].dropna().to_numpy(dtype=float)
        summary[str(model)] = {
            "fact_accuracy": _mean(answerable["correct"]),
            "refusal_accuracy": _mean(unanswerable["refused"]),
            "false_refusal_rate": _mean(answerable["false_refusal"]),
            "hit_at_k": float((ranks > 0).mean()) if len(ranks) else math.nan,
            "mrr": float(np.where(ranks > 0, 1 / np.maximum(ranks, 1), 0).mean()) if len(ranks) else math.nan,
            "latency_p50": float(np.percentile(latencies, 50)) if len(latencies) else math.nan,
            "latency_p95": float(np.percentile(latencies, 95)) if len(latencies) else math.nan,
            "n_answerable": len(answerable),
            "n_unanswerable": len(unanswerable),
            "n_retrieved": len(retrieved),
        }
    return summary


# ------------------------------------------------------------------------------------- judge validity pairs

PAIR_COLUMNS = ["kind", "qa_id", "other_qa_id", "question", "reference", "candidate"]
"""As the judge's synthetic validity pairs: `matched` (the right answer) and `mismatched` (another question's)."""


def _statement(spec: FactSpec) -> str | None:
    """A sentence stating the spec's first plain facts (regex facts cannot be said back); None if none can."""
    said = [f for f in spec.all_of if isinstance(f, str)]
    if len(said) < len(spec.all_of):
        return None
    said += [f for f in spec.any_of if isinstance(f, str)][:1]
    if spec.any_of and len(said) == len(spec.all_of):
        return None
    sentence = "The answer is " + " and ".join(said) + "."
    return sentence if answer_states_facts(sentence, spec) else None


def right_and_wrong_pairs(golden: GoldenSet, n: int, seed: int) -> pd.DataFrame:
    """For up to `n` answerable questions (a seeded hash order, stable when questions are added): a right answer
    (a sentence stating its accepted fact) and a wrong one (the next question's sentence, which must not state
    this question's facts). A judge worth trusting scores every right answer above every wrong one."""
    statements = {q.id: (q, s) for q in golden.questions if q.facts and (s := _statement(q.facts))}
    order = sorted(statements, key=lambda i: hashlib.sha256(f"{seed}\x00golden\x00{i}".encode()).hexdigest())
    rows = []
    for position, qid in enumerate(order[: max(n, 0)]):
        question, right = statements[qid]
        others = order[position + 1 :] + order[:position]
        other = next((o for o in others if not answer_states_facts(statements[o][1], question.facts)), None)
        if other is None or question.facts is None:
            continue
        rows.append(["matched", qid, qid, question.question, right, right])
        rows.append(["mismatched", qid, other, question.question, right, statements[other][1]])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)
