"""Golden questions: a person's own questions about their site, and the facts a right answer must state.

Synthetic questions and a tiny LLM judge can both be noise; the person a bot imitates knows their own facts. They
write the exam (format and examples: golden/sample_site.yaml) and it is scored without a judge: an answer is
right when it states an accepted fact (`golden_match.py`: tolerant of case, separators, currency, units and number
words, never of a different number), an unanswerable question must be declined, and the source page should be
among those retrieved. Pure functions (no Dagster, no models): the assets in `golden_assets.py` wrap them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import yaml

from mebot.assets.evaluation.golden_match import (
    Fact,
    FactSpec,
    RegexFact,
    _fold,
    _tokens,
    answer_states_facts,
    is_refusal,
)
from mebot.assets.evaluation.golden_match import (
    states_fact as states_fact,  # the matcher's names are this module's too
)

# ---------------------------------------------------------------------------------------------- data model


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
    site: str | None = None  # the site the questions are about: a start URL, a host, or the local folder served

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
    entries = reader.mapping(root, "", {"questions", "site"})
    site = reader.text(entries["site"][1], "site") if "site" in entries else None
    if "questions" not in entries:
        raise reader.error(root, "questions", "missing")
    items = entries["questions"][1]
    if not isinstance(items, yaml.SequenceNode) or not items.value:
        raise reader.error(items, "questions", "expected a non-empty list of questions")
    seen: dict[str, int] = {}
    questions = tuple(reader.question(item, f"questions[{i}]", seen) for i, item in enumerate(items.value))
    return GoldenSet(name, questions, site)


QUESTION_COLUMNS = ["question_id", "question", "answerable", "source", "facts_json", "line"]
"""A golden set as a table (the `golden_questions` asset): facts_json is {"all_of": [...], "any_of": [...]} with
a regex fact as {"regex": "..."}; empty for an unanswerable question."""


def _fact_json(fact: Fact) -> str | dict[str, str]:
    return {"regex": fact.pattern} if isinstance(fact, RegexFact) else fact


def _fact_of(value: str | dict[str, str]) -> Fact:
    return RegexFact(value["regex"]) if isinstance(value, dict) else str(value)


def golden_to_frame(golden: GoldenSet) -> pd.DataFrame:
    """QUESTION_COLUMNS, one row per question in file order; golden_from_frame reads it back."""
    rows = [
        [
            q.id,
            q.question,
            q.answerable,
            q.source,
            json.dumps(
                {"all_of": [_fact_json(f) for f in q.facts.all_of], "any_of": [_fact_json(f) for f in q.facts.any_of]}
            )
            if q.facts
            else None,
            q.line,
        ]
        for q in golden.questions
    ]
    return pd.DataFrame(rows, columns=QUESTION_COLUMNS).astype({"answerable": "bool", "line": "int64"})


def golden_from_frame(frame: pd.DataFrame, path: str = "golden_questions") -> GoldenSet:
    """The GoldenSet of a golden_to_frame table (an empty table: no questions)."""
    questions = []
    for row in frame.itertuples(index=False):
        facts = None
        if isinstance(row.facts_json, str) and row.facts_json:
            spec = json.loads(row.facts_json)
            facts = FactSpec(tuple(map(_fact_of, spec["all_of"])), tuple(map(_fact_of, spec["any_of"])))
        source = row.source if isinstance(row.source, str) and row.source else None
        questions.append(GoldenQuestion(str(row.question_id), str(row.question), source, facts, int(row.line)))
    return GoldenSet(path, tuple(questions))


# ------------------------------------------------------------------------------------------------- scoring

ANSWER_COLUMNS = ["question_id", "model", "answer", "sources_json", "latency_s"]
"""Input of score_golden_answers, one row per (question_id, model): the answer text (missing: not answered);
sources_json, a JSON list of {url, title, score} in retrieval order ("" or "[]": retrieved nothing; a `sources`
column is read when there is no sources_json); latency_s in seconds (optional). A frame with a `question` column
instead of question_id (a bring-your-own answers file) is matched on the question text."""

SCORE_COLUMNS = [
    "question_id",
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
    """sources_json as a list of {url, ...} (a plain URL counts as {url}); missing, empty or NaN is no sources."""
    parsed = (json.loads(value) if value.strip() else []) if isinstance(value, str) else value
    if not isinstance(parsed, list | tuple | np.ndarray):
        return []
    return [{"url": s} if isinstance(s, str) else s for s in parsed if isinstance(s, dict | str)]


def source_rank(sources: Iterable[dict], source: str, k: int) -> int | None:
    """1-based rank of the first of the top k sources on the page `source`; None when it is not among them."""
    wanted = _page_path(source)
    for rank, item in enumerate(list(sources)[:k], start=1):
        if _page_path(item.get("url", "")) == wanted:
            return rank
    return None


def normalise_question(text: object) -> str:
    """A question as matched across files: case, accents and runs of whitespace do not count."""
    return " ".join(_fold(str(text)).split())


def match_questions(golden: GoldenSet, answers: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows whose `question` is a golden question, with its question_id; the rest): matched on the text after
    normalise_question, never silently dropped: the caller reports the unmatched ones."""
    ids = {normalise_question(q.question): q.id for q in golden.questions}
    question_ids = answers["question"].map(lambda q: ids.get(normalise_question(q)))
    matched = answers.assign(question_id=question_ids)
    return matched[question_ids.notna()].reset_index(drop=True), answers[question_ids.isna()].reset_index(drop=True)


def score_golden_answers(golden: GoldenSet, answers: pd.DataFrame, k: int) -> pd.DataFrame:
    """SCORE_COLUMNS for every golden question and every model in `answers` (a question a model did not answer
    scores as unanswered: neither correct nor refused). Without a question_id column the rows are matched on the
    question text (match_questions; unmatched rows are left out: match them first to report them)."""
    frame = answers.copy()
    if not {"model", "answer"} <= set(frame.columns) or not {"question_id", "question"} & set(frame.columns):
        raise ValueError(f"answers needs columns question_id (or question), model, answer; has {list(frame.columns)}")
    if "question_id" not in frame.columns:
        frame = match_questions(golden, frame)[0]
    if "sources_json" not in frame.columns:
        frame["sources_json"] = frame["sources"] if "sources" in frame.columns else None
    if "latency_s" not in frame.columns:
        frame["latency_s"] = math.nan
    twice = frame[frame.duplicated(["question_id", "model"])]
    if len(twice):
        first = twice.iloc[0]
        raise ValueError(
            f"answers has more than one row for a (question_id, model): model {first['model']!r} answers "
            f"{first['question_id']!r} {int(frame.duplicated(['question_id', 'model'], keep=False).sum())} times"
        )
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
            rows.append([q.id, model, q.question, q.answerable, answer, correct, refused, false_refusal])
            rows[-1] += [len(sources), rank, latency]
    types = dict.fromkeys(["answerable", "correct", "refused", "false_refusal"], "bool")
    return pd.DataFrame(rows, columns=SCORE_COLUMNS).astype(
        types | {"n_sources": "int64", "source_rank": "Int64", "latency_s": "float64"}
    )


GOLDEN_RATES = ("fact_accuracy", "refusal_accuracy", "false_refusal_rate", "hit_at_k", "mrr")


def golden_samples(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-question values behind one model's golden figures (their means are the rates): fact_accuracy and
    false_refusal_rate, 0/1 per answerable question; refusal_accuracy, 0/1 per unanswerable one; hit_at_k and
    mrr, the source page found (0/1) and 1/rank (0 when absent) per answerable question that retrieved anything
    (a model without retrieval has none); latency_s, per answered question."""
    answerable, unanswerable = rows[rows["answerable"]], rows[~rows["answerable"]]
    retrieved = answerable[answerable["n_sources"] > 0]
    ranks = retrieved["source_rank"].astype("Float64").fillna(0).astype(float).to_numpy()
    return {
        "fact_accuracy": answerable["correct"].to_numpy(dtype=float),
        "refusal_accuracy": unanswerable["refused"].to_numpy(dtype=float),
        "false_refusal_rate": answerable["false_refusal"].to_numpy(dtype=float),
        "hit_at_k": (ranks > 0).astype(float),
        "mrr": np.where(ranks > 0, 1 / np.maximum(ranks, 1), 0.0),
        "latency_s": rows["latency_s"].dropna().to_numpy(dtype=float),
    }


def golden_summary(scores: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """Per model: the GOLDEN_RATES (means of golden_samples), latency p50/p95 over answered questions, and the
    counts behind them. NaN where a rate has nothing to count."""
    summary: dict[str, dict[str, float | int]] = {}
    for model, rows in scores.groupby("model", sort=True):
        samples = golden_samples(rows)
        latencies = samples["latency_s"]
        summary[str(model)] = {
            **{rate: float(samples[rate].mean()) if len(samples[rate]) else math.nan for rate in GOLDEN_RATES},
            "latency_p50": float(np.percentile(latencies, 50)) if len(latencies) else math.nan,
            "latency_p95": float(np.percentile(latencies, 95)) if len(latencies) else math.nan,
            "n_answerable": int(rows["answerable"].sum()),
            "n_unanswerable": int((~rows["answerable"]).sum()),
            "n_retrieved": len(samples["hit_at_k"]),
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
