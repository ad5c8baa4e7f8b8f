"""Evaluation arithmetic, free of Dagster: ROUGE, LLM-judge score distributions and their validity, retrieval
hit@k / MRR, bootstrap confidence intervals, pairwise wins/ties, bring-your-own answers, markdown tables.

The evaluation assets (assets/answers.py, assets/evaluation.py) are thin wrappers over these functions.

Judge scores come two ways, as in the original write-up: the *expected* score over the probabilities the judge
gave the score tokens "0".."10" at the first generated position (`score_distribution`), and the plain score it
wrote (`parse_direct_score`). Tiny local judges score poorly, so `validity_report` measures whether a judge can
tell a reference answer from another question's reference at all before its scores are trusted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers

from resources.parquet_io import markdown_preview

# --------------------------------------------------------------------------------------------------- ROUGE

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_COLUMNS: list[str] = [f"{kind}_{part}" for kind in ROUGE_TYPES for part in ("precision", "recall", "f1")]

_UNICODE_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer keeps only a-z0-9, so Greek, Cyrillic or CJK text has no tokens and scores
    0 whatever the answer; this one keeps letters and digits of every script. Like the default it lowercases and
    Porter-stems words over 3 characters, but only ASCII ones (the Porter stemmer is for English)."""

    def __init__(self, use_stemmer: bool = False) -> None:
        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        words = _UNICODE_WORD.findall(text.lower())
        if self._stemmer is None:
            return words
        return [self._stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in words]


def _text_or_empty(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def rouge_table(
    references: list[str],
    answers: list[str],
    *,
    use_stemmer: bool = True,
    tokenizer: Literal["default", "unicode"] = "default",
) -> pd.DataFrame:
    """One row per (reference, answer) pair, in input order, with ROUGE_COLUMNS from rouge-score's RougeScorer.

    `tokenizer="unicode"` scores non-Latin text (see UnicodeTokenizer). An empty or missing answer (None, NaN)
    scores 0 everywhere."""
    if len(references) != len(answers):
        raise ValueError(f"rouge_table got {len(references)} references but {len(answers)} answers; pass one each")
    if tokenizer == "default":
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    elif tokenizer == "unicode":
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeTokenizer(use_stemmer))
    else:
        raise ValueError(f'rouge tokenizer {tokenizer!r} is not known; use "default" or "unicode"')
    rows = []
    for reference, answer in zip(references, answers, strict=True):
        reference, answer = _text_or_empty(reference), _text_or_empty(answer)
        if not answer.strip() or not reference.strip():
            rows.append([0.0] * len(ROUGE_COLUMNS))
            continue
        scores = scorer.score(reference, answer)  # rouge-score's order: target first, prediction second
        rows.append([float(v) for kind in ROUGE_TYPES for v in scores[kind]])
    return pd.DataFrame(rows, columns=ROUGE_COLUMNS, dtype=float)


# ------------------------------------------------------------------------------------------ judge: logprobs

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
        score = _score_key(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"judge distribution value for score {key!r} is {value!r}; use a non-negative number")
        mass[score] = mass.get(score, 0.0) + float(value)
    total = sum(mass.values())
    if total <= 0:
        raise ValueError("judge distribution has no mass (all values are 0 or it is empty)")
    return _distribution(mass, min(total, 1.0), True)


def _score_key(key: object) -> int:
    if isinstance(key, bool):
        key = repr(key)
    if isinstance(key, int) and key in _SCORE_TOKENS.values():
        return key
    if isinstance(key, str) and key.strip() in _SCORE_TOKENS:
        return _SCORE_TOKENS[key.strip()]
    raise ValueError(f"judge distribution key {key!r} is not a score; use the keys '0' to '10'")


# --------------------------------------------------------------------------------------- judge: plain reply

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


# ------------------------------------------------------------------------------------------ judge validity


def _finite(values: Iterable[float | None]) -> tuple[np.ndarray, int]:
    """(the numbers as a float array, how many were None/NaN)."""
    kept, nulls = [], 0
    for v in values:
        if v is None or pd.isna(v):
            nulls += 1
        else:
            kept.append(float(v))
    return np.asarray(kept, dtype=float), nulls


def auc_score(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney); None if a side is empty."""
    if len(positives) == 0 or len(negatives) == 0:
        return None
    ordered = np.sort(negatives)
    below = np.searchsorted(ordered, positives, side="left")
    tied = np.searchsorted(ordered, positives, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positives) * len(negatives)))


def validity_report(
    matched_scores: list[float | None], mismatched_scores: list[float | None], *, min_auc: float = 0.8
) -> dict:
    """Whether the judge tells a right answer from a wrong one. matched = scores it gave a reference judged against
    itself (should be high); mismatched = a reference judged against another question's reference (should be low).

    auc: P(matched > mismatched), ties half; accuracy: the best accuracy of "score >= threshold means matched"
    over every threshold; passed: auc >= min_auc. None/NaN scores are counted in n_null and left out."""
    matched, null_matched = _finite(matched_scores)
    mismatched, null_mismatched = _finite(mismatched_scores)
    auc = auc_score(matched, mismatched)
    accuracy = threshold = None
    if auc is not None:
        # Candidates: every observed score, and one above them all (everything called mismatched).
        candidates = np.unique(np.concatenate([matched, mismatched, [np.inf]]))
        correct = (matched[None, :] >= candidates[:, None]).sum(axis=1) + (
            mismatched[None, :] < candidates[:, None]
        ).sum(axis=1)
        best = int(np.argmax(correct))
        accuracy = float(correct[best] / (len(matched) + len(mismatched)))
        threshold = float(candidates[best])
    return {
        "n_matched": len(matched),
        "n_mismatched": len(mismatched),
        "n_null": null_matched + null_mismatched,
        "auc": auc,
        "accuracy": accuracy,
        "threshold": threshold,
        "mean_matched": float(matched.mean()) if len(matched) else None,
        "mean_mismatched": float(mismatched.mean()) if len(mismatched) else None,
        "min_auc": min_auc,
        "passed": auc is not None and auc >= min_auc,
    }


# --------------------------------------------------------------------------------------------- similarity


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row i of `a` against row i of `b` (1-D inputs are one row each); a zero vector's similarity is 0."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarities needs arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------- retrieval

RETRIEVAL_MIN_OVERLAP = 0.5
# Word 3-grams, not single words: a 900-token chunk of the same page shares most of a passage's common words
# ("the", "I", "my") without containing the passage; shared 3-grams only come from shared text.
RETRIEVAL_NGRAM = 3


@dataclass(frozen=True)
class RetrievalHit:
    chunk_rank: int | None  # 1-based rank of the first retrieved chunk that contains the source, None if absent
    page_rank: int | None  # 1-based rank of the first retrieved chunk from the source page (url)


def _words(text: str) -> list[str]:
    return _UNICODE_WORD.findall(text.lower())


def passage_coverage(passage: str, chunk: str, *, ngram: int = RETRIEVAL_NGRAM) -> float:
    """The fraction of the passage's words that lie in a word n-gram the chunk also has (1.0: all of it)."""
    words = _words(passage)
    if not words:
        return 0.0
    n = min(ngram, len(words))
    chunk_words = _words(chunk)
    shared = {tuple(chunk_words[i : i + n]) for i in range(len(chunk_words) - n + 1)}
    covered = np.zeros(len(words), dtype=bool)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in shared:
            covered[i : i + n] = True
    return float(covered.mean())


def _squash(text: str) -> str:
    return " ".join(text.split())


def retrieval_hit(
    source_url: str,
    source_text: str,
    retrieved: list[tuple[str, str]],
    *,
    min_overlap: float = RETRIEVAL_MIN_OVERLAP,
) -> RetrievalHit:
    """Where the question's known source turned up in `retrieved` = [(url, chunk_text), …], best first.

    The source is a 250-token qa passage, RAG chunks are 900 tokens with other boundaries, so a chunk "contains"
    the source when it is from the same url and has the passage (whitespace-normalised substring) or covers at
    least `min_overlap` of its words (passage_coverage): a passage straddling two chunks is half in each."""
    chunk_rank = page_rank = None
    passage = _squash(source_text)
    for rank, (url, text) in enumerate(retrieved, start=1):
        if url != source_url:
            continue
        if page_rank is None:
            page_rank = rank
        if passage and (passage in _squash(text) or passage_coverage(passage, text) >= min_overlap):
            chunk_rank = rank
            break
    return RetrievalHit(chunk_rank=chunk_rank, page_rank=page_rank)


def retrieval_summary(hits: list[RetrievalHit], k: int) -> dict[str, float]:
    """hit@1, hit@k and mean reciprocal rank, for the source chunk and the source page; NaN rates when no hits."""
    if k < 1:
        raise ValueError(f"retrieval_summary needs k >= 1, got {k}")
    summary: dict[str, float] = {}
    for kind in ("chunk", "page"):
        ranks = np.array([getattr(h, f"{kind}_rank") or 0 for h in hits], dtype=float)
        found = ranks > 0
        if len(ranks) == 0:
            summary |= {f"{kind}_hit@1": math.nan, f"{kind}_hit@{k}": math.nan, f"{kind}_mrr": math.nan}
            continue
        summary[f"{kind}_hit@1"] = float((ranks == 1).mean())
        summary[f"{kind}_hit@{k}"] = float((found & (ranks <= k)).mean())
        summary[f"{kind}_mrr"] = float(np.where(found, 1.0 / np.where(found, ranks, 1.0), 0.0).mean())
    summary["n"] = float(len(hits))
    return summary


# ------------------------------------------------------------------------------------------------- bootstrap

_BOOTSTRAP_BATCH_CELLS = 2_000_000  # resampled values held in memory at once


def bootstrap_ci(
    values: Iterable[float | None], *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and a percentile-bootstrap confidence interval of it. None/NaN are dropped;
    no values → (nan, nan, nan); one value → (v, v, v). Deterministic for a seed."""
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap n_resamples must be at least 1, got {n_resamples}")
    data, _ = _finite(values)
    if len(data) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if len(data) == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    per_batch = max(1, _BOOTSTRAP_BATCH_CELLS // len(data))
    means = np.concatenate(
        [
            data[rng.integers(0, len(data), size=(min(per_batch, n_resamples - start), len(data)))].mean(axis=1)
            for start in range(0, n_resamples, per_batch)
        ]
    )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (mean, float(low), float(high))


# -------------------------------------------------------------------------------------------- wins and ties

PAIRWISE_COLUMNS = ["model_a", "model_b", "n", "wins_a", "wins_b", "ties", "win_rate_a", "win_rate_b"]
WINS_TIES_COLUMNS = ["model", "wins", "ties", "losses", "comparisons", "win_rate"]
# Scores like 7.2 - 7.1 differ from 0.1 by float rounding; a tie must not hinge on that.
_TIE_TOLERANCE = 1e-9


def pairwise_table(scores: pd.DataFrame, *, tie_epsilon: float) -> pd.DataFrame:
    """Head-to-head over the questions two models both have a score for (one judge method).

    scores: columns qa_id, model, score. One row per unordered model pair (model_a < model_b by name): n, wins of
    each, ties (|a - b| <= tie_epsilon), win rates (wins / n; ties count for neither; NaN when n is 0)."""
    missing = [c for c in ("qa_id", "model", "score") if c not in scores.columns]
    if missing:
        raise ValueError(f"pairwise_table needs columns qa_id, model, score; missing {', '.join(missing)}")
    if tie_epsilon < 0:
        raise ValueError(f"tie_epsilon must be >= 0, got {tie_epsilon}")
    duplicated = scores[scores.duplicated(["qa_id", "model"], keep=False)]
    if len(duplicated):
        pairs = sorted({(str(m), str(q)) for q, m in zip(duplicated["qa_id"], duplicated["model"], strict=True)})
        raise ValueError(f"pairwise_table got more than one score for (model, qa_id): {pairs[:5]}")
    models = sorted(scores["model"].astype(str).unique())
    wide = scores.assign(
        model=scores["model"].astype(str), score=pd.to_numeric(scores["score"], errors="coerce")
    ).pivot(index="qa_id", columns="model", values="score")
    rows = []
    for i, model_a in enumerate(models):
        for model_b in models[i + 1 :]:
            both = wide[[model_a, model_b]].dropna()
            diff = both[model_a] - both[model_b]
            n = len(both)
            ties = int((diff.abs() <= tie_epsilon + _TIE_TOLERANCE).sum())
            wins_a = int((diff > tie_epsilon + _TIE_TOLERANCE).sum())
            wins_b = n - ties - wins_a
            rows.append(
                [model_a, model_b, n, wins_a, wins_b, ties] + ([wins_a / n, wins_b / n] if n else [math.nan, math.nan])
            )
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS).astype(
        {"n": int, "wins_a": int, "wins_b": int, "ties": int, "win_rate_a": float, "win_rate_b": float}
    )


def wins_ties_by_model(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Per model, over all its pairs: wins, ties, losses, comparisons and wins / comparisons — the original's
    "Wins / Ties" columns. Sorted by wins, then ties (most first), then name."""
    totals: dict[str, Counter] = {}
    for row in pairwise.itertuples(index=False):
        for model, won, lost in ((row.model_a, row.wins_a, row.wins_b), (row.model_b, row.wins_b, row.wins_a)):
            total = totals.setdefault(model, Counter())
            total["wins"] += int(won)
            total["losses"] += int(lost)
            total["ties"] += int(row.ties)
            total["comparisons"] += int(row.n)
    rows = [
        [
            model,
            t["wins"],
            t["ties"],
            t["losses"],
            t["comparisons"],
            t["wins"] / t["comparisons"] if t["comparisons"] else math.nan,
        ]
        for model, t in totals.items()
    ]
    frame = pd.DataFrame(rows, columns=WINS_TIES_COLUMNS).astype(
        {"wins": int, "ties": int, "losses": int, "comparisons": int, "win_rate": float}
    )
    return frame.sort_values(["wins", "ties", "model"], ascending=[False, False, True], ignore_index=True)


# ------------------------------------------------------------------------------------ bring-your-own answers

EXTERNAL_REQUIRED_COLUMNS = ("question", "reference", "model", "answer")
EXTERNAL_OPTIONAL_COLUMNS = ("qa_id", "judge_distribution", "judge_direct_score", "source_url", "split")
EXTERNAL_COLUMNS = [
    *EXTERNAL_REQUIRED_COLUMNS,
    "qa_id",
    "judge_distribution_json",
    "judge_direct_score",
    "source_url",
    "split",
]
EXTERNAL_FORMATS = (".jsonl", ".csv", ".parquet")


class ExternalAnswersError(ValueError):
    """A bring-your-own answers file that cannot be used; the message names the file, the line and the fix."""


def external_qa_id(question: str, reference: str) -> str:
    """A stable id for a question without one: the same question and reference always get the same id."""
    return hashlib.sha256(f"{question}\x00{reference}".encode()).hexdigest()[:16]


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _records(path: Path, suffix: str) -> tuple[list[str], list[tuple[str, dict]]]:
    """(the columns, [(where, record), …]) where `where` names the record's line or row for error messages."""
    if suffix == ".jsonl":
        records, columns = [], {}
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ExternalAnswersError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
                if not isinstance(record, dict):
                    raise ExternalAnswersError(f"{path}, line {number}: expected a JSON object, one per line")
                columns |= dict.fromkeys(record)
                records.append((f"line {number}", record))
        return list(columns), records
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])  # reads the header line
            records, start = [], reader.line_num + 1
            for record in reader:
                # A quoted cell may span lines: name the line the record starts on.
                records.append((f"line {start}", record))
                start = reader.line_num + 1
            return columns, records
    frame = pd.read_parquet(path)
    records = [
        (f"row {i}", {k: (None if _is_na_scalar(v) else v) for k, v in record.items()})
        for i, record in enumerate(frame.to_dict("records"), start=1)
    ]
    return [str(c) for c in frame.columns], records


def _is_na_scalar(value: object) -> bool:
    return not isinstance(value, list | dict | np.ndarray) and bool(pd.isna(value))


def _judge_distribution_json(value: object) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"judge_distribution is not valid JSON ({error.msg})") from error
    elif isinstance(value, list | np.ndarray) and all(isinstance(p, tuple | list) and len(p) == 2 for p in value):
        value = dict(value)  # a Parquet map column reads as [(key, value), …]
    if isinstance(value, Mapping):  # a Parquet struct column fills the keys a row lacks with None
        value = {k: v for k, v in value.items() if v is not None}
    distribution_from_mapping(value)  # raises on a bad key or value
    canonical = {_score_key(k): float(v) for k, v in value.items()}
    return json.dumps({str(k): canonical[k] for k in sorted(canonical)})


def _direct_score(value: object) -> float:
    if _missing(value):
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"judge_direct_score is {value!r}; use a number from 0 to 10, or leave it empty")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"judge_direct_score {value!r} is not a number; use 0 to 10, or leave it empty") from None
    if not 0 <= score <= 10:
        raise ValueError(f"judge_direct_score {value!r} is outside 0..10")
    return score


def read_external_answers(path: str | Path) -> pd.DataFrame:
    """Answers produced elsewhere, to evaluate alongside the pipeline's own: a .jsonl, .csv or .parquet file.

    Required columns: question, reference, model, answer (answer may be empty). Optional: qa_id (default: a
    stable hash of question + reference), judge_distribution (an object {"0": p0, …, "10": p10}, or its JSON
    text in CSV; need not be normalised), judge_direct_score (0..10 or empty), source_url, split. Returns
    EXTERNAL_COLUMNS: the required ones, qa_id, judge_distribution_json (canonical JSON or None),
    judge_direct_score (float, NaN when absent), source_url and split (None when absent). Any problem raises
    ExternalAnswersError naming the file and the line (row, for Parquet)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTERNAL_FORMATS:
        raise ExternalAnswersError(
            f"{path}: answers files must be {', '.join(EXTERNAL_FORMATS)}; {suffix or 'no extension'} is not read"
        )
    if not path.is_file():
        raise ExternalAnswersError(f"{path}: no such answers file")
    try:
        columns, records = _records(path, suffix)
    except ExternalAnswersError:
        raise
    except Exception as error:  # a corrupt Parquet file, undecodable text
        raise ExternalAnswersError(f"{path}: could not be read as {suffix[1:]} ({error})") from error
    missing = [c for c in EXTERNAL_REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ExternalAnswersError(
            f"{path}: missing required column(s) {', '.join(missing)}; every row needs "
            f"{', '.join(EXTERNAL_REQUIRED_COLUMNS)}"
        )
    if not records:
        raise ExternalAnswersError(f"{path}: has no answers (no rows)")
    rows, seen = [], {}
    for where, record in records:
        try:
            row = _external_row(record)
        except ValueError as error:
            raise ExternalAnswersError(f"{path}, {where}: {error}") from error
        key = (row["qa_id"], row["model"])
        if key in seen:
            raise ExternalAnswersError(
                f"{path}, {where}: model {row['model']!r} already answered this question ({seen[key]}); "
                "keep one answer per model and question"
            )
        seen[key] = where
        rows.append(row)
    # object columns: pandas would turn the None of an absent value into NaN in a str column
    return pd.DataFrame(rows, columns=EXTERNAL_COLUMNS, dtype=object).astype({"judge_direct_score": float})


def _external_row(record: dict) -> dict:
    for column in ("question", "reference", "model"):
        if _missing(record.get(column)):
            raise ValueError(f"{column} is empty")
    text = {c: str(record[c]).strip() for c in ("question", "reference", "model")}
    answer = record.get("answer")
    qa_id = record.get("qa_id")
    return {
        **text,
        "answer": "" if _missing(answer) else str(answer),
        "qa_id": external_qa_id(text["question"], text["reference"]) if _missing(qa_id) else str(qa_id).strip(),
        "judge_distribution_json": _judge_distribution_json(record.get("judge_distribution")),
        "judge_direct_score": _direct_score(record.get("judge_direct_score")),
        "source_url": None if _missing(record.get("source_url")) else str(record["source_url"]).strip(),
        "split": None if _missing(record.get("split")) else str(record["split"]).strip(),
    }


# --------------------------------------------------------------------------------------------------- tables


def leaderboard_markdown(frame: pd.DataFrame, columns: list[str], *, digits: int = 3) -> str:
    """The selected columns, every row, as a GitHub-markdown table with floats rounded to `digits`."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"leaderboard_markdown: no column(s) {', '.join(missing)}; have {', '.join(frame.columns)}")
    table = frame[columns].copy()
    for column in table.columns:
        if pd.api.types.is_float_dtype(table[column]):
            table[column] = table[column].round(digits)
    return markdown_preview(table, rows=len(table))
