"""The LLM judge: score distributions from logprobs and the plain score it writes (judge_reply), validity (AUC
and pairs), the provider contract (no logprobs, failures, budget), and `judge_scores` / `judge_validity` and the
check materialized with the real local judge (in `scored`): its scores are recorded, not required to be good."""

import json
import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mebot.assets.evaluation.judge import (
    JUDGE_SCORE_COLUMNS,
    judge_answers,
    judge_one,
    judge_summary,
    validity_pairs,
    validity_report,
    validity_reports,
)
from mebot.assets.evaluation.judge_reply import distribution_from_mapping, parse_direct_score, score_distribution
from mebot.resources.chat import BudgetExceeded, ChatProviderError, ChatResult
from mebot.resources.settings import EvalSettings
from tests.assets.evaluation.world import (
    RAG,
    SECOND,
    metadata_of,
    output_of,
    qa_frame,
)


def test_judge_scores_record_both_methods_with_the_real_local_judge(scored):
    frame = output_of(scored, RAG, "judge_scores")
    assert list(frame.columns) == JUDGE_SCORE_COLUMNS and len(frame) == 3
    assert frame["judge_error"].isna().all()
    assert (frame["logprob_method"] == "logprob").all()  # llama.cpp gives logprobs
    for text, expected in zip(frame["judge_distribution_json"], frame["judge_expected"], strict=True):
        distribution = {int(k): v for k, v in json.loads(text).items()}
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-4)
        assert expected == pytest.approx(sum(k * p for k, p in distribution.items()), abs=1e-3)
        assert 0 <= expected <= 10
    assert (frame["judge_valid_mass"] > 0).all() and (frame["judge_valid_mass"] <= 1 + 1e-9).all()
    assert frame["judge_direct_text"].notna().all()  # the direct method ran on every row
    parsed = frame["judge_direct"].dropna()
    assert ((parsed >= 0) & (parsed <= 10)).all()
    metadata = metadata_of(scored, RAG, "judge_scores")
    assert metadata["direct_unparseable"] == int(frame["judge_direct"].isna().sum())
    assert metadata["judge_expected_mean"] == pytest.approx(round(frame["judge_expected"].mean(), 4))
    assert metadata["judge_errors"] == 0 and "SmolLM2" in metadata["judge_model"]
    missing = output_of(scored, SECOND, "judge_scores").set_index("qa_id").loc["q-sensor"]
    assert not missing["answered"] and pd.isna(missing["judge_expected"]) and pd.isna(missing["judge_direct_text"])


def test_judge_validity_judges_references_against_themselves_and_others_and_the_check_warns(scored):
    validity = scored["results"]["validity"].output_for_node("judge_validity")
    assert sorted(validity["kind"].value_counts().items()) == [("matched", 2), ("mismatched", 2)]
    mismatched = validity[validity["kind"] == "mismatched"]
    assert (mismatched["qa_id"] != mismatched["other_qa_id"]).all()
    matched = validity[validity["kind"] == "matched"]
    assert (matched["qa_id"] == matched["other_qa_id"]).all()
    assert validity["judge_expected"].notna().all()
    metadata = metadata_of(scored, "validity", "judge_validity")
    # Two pairs a side are too few to trust any judge (MIN_VALIDITY_PAIRS): it cannot pass, whatever its AUC.
    assert 0 <= metadata["logprob_auc"] <= 1 and metadata["logprob_passed"] is False

    (evaluation,) = scored["results"][RAG].get_asset_check_evaluations()
    assert evaluation.check_name == "judge_validity" and evaluation.asset_key == dg.AssetKey("judge_scores")
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    check = {k: v.value for k, v in evaluation.metadata.items()}
    assert check["logprob_auc"] == pytest.approx(metadata["logprob_auc"])
    assert {"logprob_accuracy", "logprob_mean_matched", "logprob_mean_mismatched", "direct_auc"} <= set(check)
    assert check["logprob_pairs"] == 2 and evaluation.passed is False
    assert "too few to trust the judge" in evaluation.description


# ------------------------------------------------------------------------------------------ judge: logprobs

lp = math.log


def test_expected_score_from_single_digit_tokens_and_whitespace_prefixed_tokens():
    dist = score_distribution([{"7": lp(0.5), " 8": lp(0.3), "8": lp(0.1), "\n6": lp(0.1)}], ["7"])
    assert dist.valid_mass == pytest.approx(1.0)
    assert dist.probabilities[8] == pytest.approx(0.4)  # " 8" and "8" are one score
    assert dist.probabilities[6] == pytest.approx(0.1)
    assert dist.expected == pytest.approx(7 * 0.5 + 8 * 0.4 + 6 * 0.1)
    assert dist.argmax == 7
    assert dist.ten_resolved


def test_single_token_ten_is_a_candidate_at_the_first_position():
    dist = score_distribution([{"10": lp(0.6), "9": lp(0.3), "1": lp(0.1)}], ["10"])
    assert dist.probabilities[10] == pytest.approx(0.6)
    assert dist.probabilities[1] == pytest.approx(0.1)
    assert dist.expected == pytest.approx(6 + 2.7 + 0.1)
    assert dist.ten_resolved


def test_ten_written_as_one_then_zero_is_split_by_the_second_position():
    positions = [
        {"1": lp(0.5), "9": lp(0.3), "The": lp(0.2)},
        {"0": lp(0.6), "5": lp(0.1), ".": lp(0.3)},  # after "1": "10", "15" (not a score), "1."
    ]
    dist = score_distribution(positions, ["1", "0"])
    assert dist.ten_resolved
    # P(10) = .5 * .6, P(1) = .5 * (1 - .6 - .1), P(9) = .3; "The" and "15" are not scores.
    assert dist.valid_mass == pytest.approx(0.3 + 0.15 + 0.3)
    assert dist.probabilities[10] == pytest.approx(0.3 / 0.75)
    assert dist.probabilities[1] == pytest.approx(0.15 / 0.75)
    assert dist.probabilities[9] == pytest.approx(0.3 / 0.75)
    assert dist.expected == pytest.approx((10 * 0.3 + 1 * 0.15 + 9 * 0.3) / 0.75)
    assert dist.argmax == 9  # 10 and 9 tie at .4; the lower score wins a tie


def test_one_not_chosen_counts_as_one_and_says_ten_is_unresolved():
    dist = score_distribution([{"8": lp(0.7), "1": lp(0.3)}, {"/": lp(0.9)}], ["8", "/"])
    assert dist.probabilities[1] == pytest.approx(0.3)
    assert dist.probabilities[10] == 0.0
    assert not dist.ten_resolved


def test_continuation_after_a_forced_one_resolves_ten():
    dist = score_distribution([{"8": lp(0.5), "1": lp(0.5)}], ["8"], continuation_after_one={"0": lp(0.8)})
    assert dist.ten_resolved
    assert dist.probabilities[10] == pytest.approx(0.4)
    assert dist.probabilities[1] == pytest.approx(0.1)


def test_mass_on_invalid_tokens_is_excluded_and_reported():
    dist = score_distribution([{"The": lp(0.5), "\n": lp(0.3), "4": lp(0.2)}], ["The"])
    assert dist.valid_mass == pytest.approx(0.2)
    assert dist.probabilities[4] == pytest.approx(1.0)
    assert dist.expected == pytest.approx(4.0)


@pytest.mark.parametrize("positions", [[{"The": lp(0.9), "\n": lp(0.1)}], []])
def test_no_valid_mass_gives_no_expected_score(positions):
    dist = score_distribution(positions, ["The"] if positions else [])
    assert dist.valid_mass == 0.0
    assert dist.expected is None and dist.argmax is None and dist.probabilities == {}


def test_distribution_from_mapping_normalises_weights():
    dist = distribution_from_mapping({"0": 1, "5": 2, 10: 1})
    assert dist.probabilities[5] == pytest.approx(0.5)
    assert dist.expected == pytest.approx(5.0)
    assert dist.valid_mass == 1.0
    assert distribution_from_mapping({"9": 0.6, "8": 0.2}).valid_mass == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [({"11": 1.0}, "'11' is not a score"), ({"7": -0.1}, "non-negative"), ({"7": 0}, "no mass"), ([1], "object")],
)
def test_distribution_from_mapping_rejects_bad_keys_and_values(mapping, message):
    with pytest.raises(ValueError, match=message):
        distribution_from_mapping(mapping)


# --------------------------------------------------------------------------------------- judge: plain reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("7", 7.0),
        ("7.", 7.0),
        (" 8/10", 8.0),
        ("8 / 10", 8.0),
        ("Score: 9", 9.0),
        ("9 out of 10", 9.0),
        ("**6**", 6.0),
        ("Rating: 7.5", 7.5),
        ("10/10", 10.0),
        ("0", 0.0),
        ("On a scale of 0 to 10, I would give it a 7.", 7.0),
        ("Score (1-10): 4", 4.0),
        ("A score of 3", 3.0),
        ("I'd rate it 42, no, 6", 6.0),
        ("Ten.", 10.0),
        ("**seven**", 7.0),
        ("Score: eight", 8.0),
        ("No one could say", None),
        ("The answer is wrong", None),
        ("42", None),
        ("-3", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_direct_score(reply, expected):
    assert parse_direct_score(reply) == expected


# ------------------------------------------------------------------------------------------ judge validity


def test_a_judge_scoring_at_random_fails_validity():
    rng = np.random.default_rng(7)
    report = validity_report(list(rng.integers(0, 11, 300)), list(rng.integers(0, 11, 300)))
    assert report["auc"] == pytest.approx(0.5, abs=0.07)
    assert not report["passed"]


def test_a_judge_that_tells_right_from_wrong_passes_validity():
    report = validity_report([9, 10, 8, 9, None], [1, 0, 2, math.nan, 3])
    assert report["auc"] == 1.0 and report["accuracy"] == 1.0 and report["passed"]
    assert 3 < report["threshold"] <= 8
    assert (report["n_matched"], report["n_mismatched"], report["n_null"]) == (4, 4, 2)
    assert report["mean_matched"] == pytest.approx(9.0) and report["mean_mismatched"] == pytest.approx(1.5)


def test_validity_auc_counts_ties_as_half():
    # pairs (matched, mismatched): 5>3, 5=5, 7>3, 7>5 → (3 + 0.5) / 4
    report = validity_report([5, 7], [3, 5], min_auc=0.9)
    assert report["auc"] == pytest.approx(0.875)
    assert not report["passed"]
    assert report["accuracy"] == pytest.approx(0.75)


def test_validity_with_an_empty_side_has_no_auc():
    report = validity_report([9, 8], [None])
    assert report["auc"] is None and report["accuracy"] is None and not report["passed"]
    assert report["n_null"] == 1


# ------------------------------------------------------------------------------------ judge: provider contract


class RecordedProvider:
    """Contract stand-in for a provider that returns no logprobs (no offline OpenAI-compatible server omits
    them) or fails on some calls; replies are ChatResults as ChatClient returns them."""

    def __init__(self, replies: list):
        self.replies = list(replies)
        self.calls: list[dict] = []

    def complete(self, messages: list[dict], **params) -> ChatResult:
        self.calls.append(params)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return ChatResult(reply, 20, 1, "stop", "recorded", None, False, 0.0)


def test_contract_a_provider_without_logprobs_falls_back_to_the_direct_score():
    provider = RecordedProvider(["7"])
    verdict = judge_one(provider, [{"role": "user", "content": "rate"}], ["logprob", "direct"])
    assert len(provider.calls) == 1  # one call serves both methods
    assert provider.calls[0]["logprobs"] is True and provider.calls[0]["top_logprobs"] == 20
    assert (verdict.logprob_method, verdict.expected, verdict.direct) == ("direct_fallback", 7.0, 7.0)


def test_contract_a_failing_or_unparseable_judgement_is_null_and_counted_and_the_budget_still_stops():
    answers = pd.DataFrame(
        {
            "qa_id": ["a", "b", "c"],
            "model": "m",
            "question": "Q?",
            "reference": "R",
            "answer": ["A", "A", "A"],
            "error": None,
        }
    )
    provider = RecordedProvider([ChatProviderError("HTTP 500 after 5 retries"), "no idea", "8"])
    frame = judge_answers(provider, answers, EvalSettings().judge_prompt, ["direct"])
    assert frame["judge_error"].tolist()[0].startswith("ChatProviderError") and frame["judge_error"][1:].isna().all()
    assert pd.isna(frame.loc[1, "judge_direct"]) and frame.loc[2, "judge_direct"] == 8.0
    summary = judge_summary(frame)
    assert (summary["judge_errors"], summary["direct_unparseable"], summary["judged"]) == (1, 1, 3)
    with pytest.raises(BudgetExceeded):
        judge_answers(RecordedProvider([BudgetExceeded("cap")]), answers[:1], EvalSettings().judge_prompt, ["direct"])


def test_validity_pairs_match_each_reference_with_itself_and_a_different_one_even_from_one_question():
    qa = qa_frame()
    test = qa[qa["split"] == "test"]
    pairs = validity_pairs(test, qa, 2, seed=0)
    assert pairs["kind"].tolist() == ["matched", "mismatched", "matched", "mismatched"]
    matched, mismatched = pairs[pairs["kind"] == "matched"], pairs[pairs["kind"] == "mismatched"]
    assert (matched["reference"] == matched["candidate"]).all()
    assert (mismatched["reference"] != mismatched["candidate"]).all()
    assert set(pairs["qa_id"]) <= set(test["qa_id"])
    assert validity_pairs(test, qa, 2, seed=0).equals(pairs)  # seeded: the same pairs every run
    # A single held-out question still gets a mismatched reference: another split's.
    only = test.iloc[:1]
    single = validity_pairs(only, qa, 6, seed=0)
    assert len(single) == 2 and single.iloc[1]["other_qa_id"] != only.iloc[0]["qa_id"]


def test_a_judge_passes_validity_only_with_a_high_auc_over_enough_pairs():
    def frame(matched: list[float], mismatched: list[float]) -> pd.DataFrame:
        kinds = ["matched"] * len(matched) + ["mismatched"] * len(mismatched)
        return pd.DataFrame({"kind": kinds, "judge_expected": matched + mismatched, "judge_direct": math.nan})

    good = validity_reports(frame([9, 8, 10], [1, 2, 0]), ["logprob", "direct"])
    assert good["logprob"]["auc"] == 1.0 and good["logprob"]["passed"] is True
    assert good["direct"]["auc"] is None and good["direct"]["passed"] is False  # no direct scores at all
    assert validity_reports(frame([9, 8], [1, 2]), ["logprob"])["logprob"]["passed"] is False  # too few pairs
    assert validity_reports(frame([3, 2, 5], [4, 3, 5]), ["logprob"])["logprob"]["passed"] is False  # AUC < 0.8


def test_the_judge_is_sent_the_question_reference_and_answer_in_their_places():
    from mebot.resources.settings import ChatModelSettings
    from tests.fakes import FakeChat

    judge = FakeChat(ChatModelSettings())
    answers = pd.DataFrame(
        [
            {
                "qa_id": "q1",
                "model": "rag",
                "question": "What is your starter called?",
                "reference": "My starter is called Brenda.",
                "answer": "Brenda, a rye starter.",
                "error": None,
            }
        ]
    )
    judge_answers(judge, answers, EvalSettings().judge_prompt, ["direct"])
    ((messages, _params),) = judge.calls
    assert messages == [
        {
            "role": "user",
            "content": "QUESTION: What is your starter called?\n\nANSWER: My starter is called Brenda.\n\n"
            "PROPOSED ANSWER: Brenda, a rye starter.\n\nCan you rate the PROPOSED ANSWER to the above QUESTION from "
            "0 (not even close) to 10 (exact meaning) on whether or not it matches ANSWER?  Only output the number.",
        }
    ]
