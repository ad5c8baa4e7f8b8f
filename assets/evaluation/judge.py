"""The LLM judge: `judge_scores` per model, `judge_validity` across models, and the `judge_validity` check.

`judge_scores` rates each answer 0-10 by the methods of `eval.judge_methods` (the reply is read by
`judge_reply.py`); `judge_validity` asks whether the judge tells a right answer from a wrong one, which a tiny
local judge is expected to fail: that is what the check is for (docs/evaluation.md)."""

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.evaluation.answers import answered_mask, eval_questions, model_partitions
from mebot.assets.evaluation.golden import golden_from_frame, right_and_wrong_pairs
from mebot.assets.evaluation.judge_call import JudgeClients, as_judge, judge_calls, judge_clients
from mebot.assets.evaluation.judge_reply import ScoreDistribution, parse_direct_score, score_distribution, score_start
from mebot.assets.outputs import content_output, mean_metadata
from mebot.resources.chat import BudgetExceeded, ChatClient, ChatModelResource
from mebot.resources.hashing import seeded_order
from mebot.resources.settings import Settings, SettingsResource, reads_settings

MIN_VALIDITY_PAIRS = 3
JUDGE_METHOD_COLUMN = {"logprob": "judge_expected", "direct": "judge_direct"}
JUDGE_SCORE_COLUMNS = [
    "qa_id",
    "model",
    "answered",
    "judge_expected",
    "judge_distribution_json",
    "judge_valid_mass",
    "judge_raw_valid_mass",
    "judge_argmax",
    "judge_ten_resolved",
    "logprob_method",
    "judge_direct",
    "judge_direct_text",
    "judge_error",
]
VALIDITY_COLUMNS = [
    "pair_set",
    "kind",
    "qa_id",
    "other_qa_id",
    "judge_expected",
    "logprob_method",
    "judge_direct",
    "judge_direct_text",
    "judge_error",
]


@dataclass
class Verdict:
    expected: float | None = None
    distribution_json: str | None = None
    valid_mass: float | None = None  # of the score tokens in what the judge could write: 1.0 when constrained
    raw_valid_mass: float | None = None  # of the score tokens in the unconstrained model's first-token distribution
    argmax: float | None = None
    ten_resolved: bool | None = None
    logprob_method: str | None = None  # "logprob", or "direct_fallback" when the provider gave no logprobs
    direct: float | None = None
    direct_text: str | None = None
    error: str | None = None


def judge_messages(template: str, question: str, reference: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": template.format(question=question, reference=reference, answer=answer)}]


def _distribution_of(result_logprobs: list) -> ScoreDistribution:
    positions, chosen = [], []
    for entry in result_logprobs:
        alternatives = dict(entry.top)
        alternatives.setdefault(entry.token, entry.logprob)  # the generated token is an alternative too
        positions.append(alternatives)
        chosen.append(entry.token)
    return score_distribution(positions, chosen)


def judge_one(client: ChatClient | JudgeClients, messages: list[dict], methods: list[str]) -> Verdict:
    """The judge's verdict on one prompt by each method, from ONE greedy call when one model serves both
    (judge_call.py): its token logprobs give the score distribution (at the score's position) and its text is
    the direct reply (greedy text is what a plain call at temperature 0 writes). Constrained to a score
    (`eval.judge_constrained`), the reply always parses and its valid mass is 1. A provider without logprobs
    falls back to the direct score. A failed call is the verdict's `error`, not a raise (except BudgetExceeded,
    which must stop the run)."""
    verdict = Verdict()
    try:
        want_logprobs = "logprob" in methods
        constrained = as_judge(client).constrained
        scored, result = judge_calls(client, messages, methods)
        score = parse_direct_score(result.text)
        verdict.direct_text = result.text
        if "direct" in methods:
            verdict.direct = score
        if want_logprobs and scored is not None and scored.logprobs:
            start = score_start([entry.token for entry in scored.logprobs]) if constrained else 0
            distribution = _distribution_of(scored.logprobs[start:])
            verdict.logprob_method = "logprob"
            verdict.expected = distribution.expected
            verdict.raw_valid_mass = distribution.valid_mass
            verdict.valid_mass = 1.0 if constrained and distribution.expected is not None else distribution.valid_mass
            verdict.argmax = None if distribution.argmax is None else float(distribution.argmax)
            verdict.ten_resolved = distribution.ten_resolved
            verdict.distribution_json = json.dumps(
                {str(k): round(v, 6) for k, v in sorted(distribution.probabilities.items())}
            )
        elif want_logprobs:
            verdict.expected = score
            verdict.logprob_method = "direct_fallback"
    except BudgetExceeded:
        raise
    except (RuntimeError, ValueError, OSError) as exc:  # ChatProviderError is a RuntimeError
        verdict.error = f"{type(exc).__name__}: {exc}"[:500]
    return verdict


def _verdict_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "judge_expected": verdict.expected,
        "judge_distribution_json": verdict.distribution_json,
        "judge_valid_mass": verdict.valid_mass,
        "judge_raw_valid_mass": verdict.raw_valid_mass,
        "judge_argmax": verdict.argmax,
        "judge_ten_resolved": verdict.ten_resolved,
        "logprob_method": verdict.logprob_method,
        "judge_direct": verdict.direct,
        "judge_direct_text": verdict.direct_text,
        "judge_error": verdict.error,
    }


def _judge_frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=columns)
    floats = [
        c
        for c in ("judge_expected", "judge_valid_mass", "judge_raw_valid_mass", "judge_argmax", "judge_direct")
        if c in columns
    ]
    return frame.astype({c: "float64" for c in floats})


def judge_answers(
    client: ChatClient,
    answers: pd.DataFrame,
    template: str,
    methods: list[str],
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """JUDGE_SCORE_COLUMNS for the rows of a model_answers partition; unanswered rows are not judged."""
    records = []
    answered = answered_mask(answers["answer"], answers["error"]).tolist()
    for done, (row, has_answer) in enumerate(zip(answers.itertuples(index=False), answered, strict=True), start=1):
        record = {"qa_id": row.qa_id, "model": row.model, "answered": has_answer}
        verdict = (
            judge_one(client, judge_messages(template, row.question, row.reference, row.answer), methods)
            if has_answer
            else Verdict()
        )
        records.append(record | _verdict_record(verdict))
        if progress is not None:
            progress(done, len(answers))
    return _judge_frame(records, JUDGE_SCORE_COLUMNS)


def judge_summary(frame: pd.DataFrame) -> dict[str, int]:
    """Counts a judge_scores partition (or the validity run) reports in its metadata."""
    judged = frame[frame["answered"]] if "answered" in frame.columns else frame
    texts = judged["judge_direct_text"].dropna()
    logprob = judged["logprob_method"] == "logprob"
    return {
        "judged": len(judged),
        "judge_errors": int(judged["judge_error"].notna().sum()),
        "direct_unparseable": int(texts.map(parse_direct_score).isna().sum()),
        "logprob_fallbacks": int((judged["logprob_method"] == "direct_fallback").sum()),
        "no_valid_score_tokens": int((logprob & judged["judge_expected"].isna()).sum()),
    }


def finite_values(values: Iterable[float | None]) -> tuple[np.ndarray, int]:
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
    matched, null_matched = finite_values(matched_scores)
    mismatched, null_mismatched = finite_values(mismatched_scores)
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


PAIR_COLUMNS = ["kind", "qa_id", "other_qa_id", "question", "reference", "candidate"]


def validity_pairs(questions: pd.DataFrame, pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to `n` of `questions` (chosen by a seeded hash of qa_id), each as a `matched` pair (its reference judged
    against itself) and a `mismatched` pair (against the reference of another question: the next sampled one, or
    from `pool` (all of synthetic_qa) when the sample has only one; always a different text)."""
    distinct = questions.drop_duplicates("answer").set_index("qa_id", drop=False)
    sample = distinct.loc[seeded_order(distinct["qa_id"], seed, "sample")[:n]]
    others = pool.drop_duplicates("answer").set_index("qa_id", drop=False)
    others = others.loc[seeded_order(others["qa_id"], seed, "other")]
    rows = []
    for i, row in enumerate(sample.itertuples(index=False)):
        other = sample.iloc[(i + 1) % len(sample)]
        if other["answer"] == row.answer:
            candidates = others[others["answer"] != row.answer]
            if candidates.empty:
                continue
            other = candidates.iloc[0]
        rows.append(["matched", row.qa_id, row.qa_id, row.question, row.answer, row.answer])
        rows.append(["mismatched", row.qa_id, other["qa_id"], row.question, row.answer, other["answer"]])
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def judge_validity_pairs(
    client: ChatClient, pairs: pd.DataFrame, template: str, methods: list[str], pair_set: str = "synthetic"
) -> pd.DataFrame:
    """VALIDITY_COLUMNS: the judge's verdict on each pair; `pair_set` names where the pairs come from."""
    records = []
    for row in pairs.itertuples(index=False):
        verdict = judge_one(client, judge_messages(template, row.question, row.reference, row.candidate), methods)
        record = {"pair_set": pair_set, "kind": row.kind, "qa_id": row.qa_id, "other_qa_id": row.other_qa_id}
        record |= _verdict_record(verdict)
        records.append({c: record[c] for c in VALIDITY_COLUMNS})
    return _judge_frame(records, VALIDITY_COLUMNS)


VALIDITY_PAIR_SETS = ("synthetic", "golden")  # references vs another's; a golden fact vs another question's


def validity_reports(validity: pd.DataFrame, methods: list[str], pair_set: str = "synthetic") -> dict[str, dict]:
    """validity_report per judge method, over the pairs of `pair_set` (a frame without pair_set is synthetic).
    An AUC from fewer than MIN_VALIDITY_PAIRS scored pairs a side is a coin toss (one pair gives 0, 0.5 or 1),
    so such a judge does not pass, whatever its AUC."""
    if "pair_set" in validity.columns:
        validity = validity[validity["pair_set"] == pair_set]
    elif pair_set != "synthetic":
        validity = validity.iloc[:0]
    reports = {}
    for method in methods:
        scores = validity[JUDGE_METHOD_COLUMN[method]]
        matched = scores[validity["kind"] == "matched"].tolist()
        mismatched = scores[validity["kind"] == "mismatched"].tolist()
        report = validity_report(matched, mismatched)
        report["too_few_pairs"] = min(report["n_matched"], report["n_mismatched"]) < MIN_VALIDITY_PAIRS
        report["passed"] = bool(report["passed"]) and not report["too_few_pairs"]
        reports[method] = report
    return reports


def primary_method(methods: list[str]) -> str:
    return "logprob" if "logprob" in methods else "direct"


def validity_reports_by_set(validity: pd.DataFrame, methods: list[str]) -> dict[str, dict[str, dict]]:
    """{pair set: validity_reports} for each set that has pairs (synthetic always: its failure is the news)."""
    sets = {"synthetic", *(validity["pair_set"] if "pair_set" in validity.columns else [])}
    return {name: validity_reports(validity, methods, name) for name in VALIDITY_PAIR_SETS if name in sets}


def validity_passed(by_set: dict[str, dict[str, dict]], methods: list[str]) -> bool:
    """The judge passes when its primary method passes on every pair set it was tested on."""
    return all(reports[primary_method(methods)]["passed"] for reports in by_set.values())


def _judge_scores(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    model_answers: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Per answer of one model, the LLM judge's 0-10 rating against the reference, by each of `eval.judge_methods`:
    `judge_expected` (logprob: the expected score over the score tokens' probabilities, with the distribution,
    its valid mass and argmax) and `judge_direct` (the number it writes). A provider without logprobs falls back to
    the direct score (`logprob_method`); a failed or unparseable judgement is null and counted, never a crash."""
    config = settings.for_asset(context)
    client = judge_clients(chat_model, config)
    key = context.partition_key

    def progress(done: int, total: int) -> None:
        if done == total or done % 5 == 0:
            context.log.info(f"{key}: {done}/{total} judged")

    frame = judge_answers(client, model_answers, config.eval.judge_prompt, config.eval.judge_methods, progress)
    summary = judge_summary(frame)
    if summary["judge_errors"]:
        first = frame["judge_error"].dropna().iloc[0]
        context.log.warning(f"{key}: {summary['judge_errors']} judgements failed, e.g. {first}")
    judged = frame[frame["answered"]]
    return content_output(
        frame,
        {
            **mean_metadata(judged, ["judge_expected", "judge_direct", "judge_valid_mass", "judge_raw_valid_mass"]),
            **{name: dg.MetadataValue.int(int(value)) for name, value in summary.items()},
            "missing_answers": dg.MetadataValue.int(int((~frame["answered"]).sum())),
            "judge_methods": dg.MetadataValue.json(list(config.eval.judge_methods)),
            "judge_model": dg.MetadataValue.text(client.identity),
            **client.usage.as_metadata(),
        },
        version_of=["qa_id", "judge_expected", "judge_direct"],
    )


def judge_scores_asset(graph_settings: Settings) -> dg.AssetsDefinition:
    """`judge_scores`, one partition per model of `graph_settings`."""
    return dg.asset(
        name="judge_scores",
        group_name="evaluation",
        kinds={"llm", "parquet"},
        code_version="1",
        partitions_def=model_partitions(graph_settings),
        metadata=reads_settings(
            "models.judge",
            "models.judge_logprob",
            "models.judge_direct",
            "eval.judge_prompt",
            "eval.judge_methods",
            "eval.judge_constrained",
        ),
    )(_judge_scores)


@dg.asset(
    group_name="evaluation",
    kinds={"llm", "parquet"},
    code_version="1",
    metadata=reads_settings(
        "models.judge",
        "models.judge_logprob",
        "models.judge_direct",
        "eval.judge_constrained",
        "eval.judge_prompt",
        "eval.judge_methods",
        "eval.validity_sample",
        "eval.splits",
        "eval.seed",
    ),
)
def judge_validity(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    chat_model: ChatModelResource,
    synthetic_qa: pd.DataFrame,
    golden_questions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Can the judge be trusted? Two sets of pairs (`pair_set`), with the judge prompt and each judge method:
    `synthetic`, `eval.validity_sample` held-out references, each judged against itself (matched: should score
    high) and against another question's reference (mismatched: should score low); `golden`, every golden
    question whose facts can be said back, a sentence stating its fact (matched) against one stating another
    question's (mismatched). Metadata per set (golden ones prefixed `golden_`): AUC (P(matched > mismatched)),
    best accuracy and its threshold, means, and passed (AUC >= 0.8) per method. The bundled 135M judge is
    expected to fail."""
    config = settings.for_asset(context)
    questions = eval_questions(synthetic_qa, config.eval.splits, 0)
    pairs = validity_pairs(questions, synthetic_qa, config.eval.validity_sample, config.eval.seed)
    if len(pairs) < 2 * config.eval.validity_sample:
        context.log.warning(
            f"only {len(pairs) // 2} of eval.validity_sample = {config.eval.validity_sample} references could be "
            f"paired ({len(questions)} questions in eval.splits): the validity figures rest on few judgements"
        )
    client = judge_clients(chat_model, config)
    methods = config.eval.judge_methods
    frame = judge_validity_pairs(client, pairs, config.eval.judge_prompt, methods)
    golden = golden_from_frame(golden_questions)
    golden_pairs = right_and_wrong_pairs(golden, len(golden.questions), config.eval.seed)
    if len(golden_pairs):
        judged = judge_validity_pairs(client, golden_pairs, config.eval.judge_prompt, methods, "golden")
        frame = pd.concat([frame, judged], ignore_index=True)
    by_set = validity_reports_by_set(frame, methods)
    metadata: dict[str, dg.MetadataValue] = {}
    for pair_set, reports in by_set.items():
        primary = reports[primary_method(methods)]
        context.log.info(
            f"judge {client.identity}, {pair_set} pairs: validity AUC {primary['auc']} (matched mean "
            f"{primary['mean_matched']}, mismatched mean {primary['mean_mismatched']}); passed={primary['passed']}"
        )
        prefix = "" if pair_set == "synthetic" else f"{pair_set}_"
        for method, report in reports.items():
            for name in ("auc", "accuracy", "threshold", "mean_matched", "mean_mismatched"):
                if report[name] is not None:
                    metadata[f"{prefix}{method}_{name}"] = dg.MetadataValue.float(float(report[name]))
            metadata[f"{prefix}{method}_passed"] = dg.MetadataValue.bool(bool(report["passed"]))
    return content_output(
        frame,
        {
            **metadata,
            "reports": dg.MetadataValue.json(by_set["synthetic"]),
            "golden_reports": dg.MetadataValue.json(by_set.get("golden", {})),
            "pairs": dg.MetadataValue.int(int((frame["pair_set"] == "synthetic").sum())),
            "golden_pairs": dg.MetadataValue.int(int((frame["pair_set"] == "golden").sum())),
            "judge_errors": dg.MetadataValue.int(int(frame["judge_error"].notna().sum())),
            "judge_model": dg.MetadataValue.text(client.identity),
            **client.usage.as_metadata(),
        },
        version_of=["pair_set", "kind", "qa_id", "judge_expected", "judge_direct"],
    )


@dg.asset_check(
    asset="judge_scores",
    name="judge_validity",
    additional_ins={"judge_validity": dg.AssetIn()},
    description="The judge tells a matching reference from another question's, and a golden question's fact from "
    "another's (AUC >= 0.8 on each); warns otherwise.",
)
def judge_validity_check(settings: SettingsResource, judge_validity: pd.DataFrame) -> dg.AssetCheckResult:
    methods = settings.get().eval.judge_methods
    by_set = validity_reports_by_set(judge_validity, methods)
    reports = by_set["synthetic"]
    primary = primary_method(methods)
    metadata: dict[str, Any] = {"method": primary}
    for pair_set, set_reports in by_set.items():
        prefix = "" if pair_set == "synthetic" else f"{pair_set}_"
        for method, report in set_reports.items():
            for name in ("auc", "accuracy", "mean_matched", "mean_mismatched"):
                metadata[f"{prefix}{method}_{name}"] = dg.MetadataValue.float(
                    math.nan if report[name] is None else float(report[name])
                )
            metadata[f"{prefix}{method}_n_null"] = report["n_null"]
            metadata[f"{prefix}{method}_pairs"] = min(report["n_matched"], report["n_mismatched"])
        metadata[f"{prefix}passed"] = bool(set_reports[primary]["passed"])
    report = reports[primary]
    description = (
        f"judge validity AUC {report['auc']} ({primary}); below {report['min_auc']} its scores say little about "
        "the answers"
    )
    if report["too_few_pairs"]:
        description = (
            f"only {min(report['n_matched'], report['n_mismatched'])} scored pairs (at least {MIN_VALIDITY_PAIRS} "
            "needed): too few to trust the judge; raise eval.validity_sample or hold out more questions"
        )
    if "golden" in by_set:
        golden = by_set["golden"][primary]
        description += (
            f". Golden pairs (a golden question's fact against another question's): AUC {golden['auc']} over "
            f"{min(golden['n_matched'], golden['n_mismatched'])} pairs, "
            + ("passed" if golden["passed"] else f"below {golden['min_auc']} or too few: failed")
        )
    return dg.AssetCheckResult(
        passed=validity_passed(by_set, methods),
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=description,
    )
