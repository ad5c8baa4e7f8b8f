"""A judge that answers with a score: constrained to 0..10 (a GBNF grammar on llama.cpp, a JSON schema on an
OpenAI-compatible server), so its written score always parses and its valid mass is 1 by construction, while the
expected score still comes from the probabilities of the 11 score tokens; models.judge_logprob and
models.judge_direct as two models; and a contract test of an OpenAI-class judge's validity (AUC >= 0.8) from
scripted logprobs."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from mebot.assets.evaluation.judge import (
    judge_messages,
    judge_one,
    judge_validity_pairs,
    validity_pairs,
    validity_reports,
)
from mebot.assets.evaluation.judge_call import JudgeClients, call_params, judge_calls, judge_clients
from mebot.assets.evaluation.judge_reply import (
    SCORE_GBNF,
    SCORE_RESPONSE_FORMAT,
    parse_direct_score,
    score_constraint,
    score_start,
)
from mebot.resources.chat import chat_client
from mebot.resources.settings import DEFAULT_JUDGE_PROMPT, ChatModelSettings, Settings
from tests.fakes import FakeChat, FakeChatModelResource
from tests.resources.scripted_server import ScriptedServer

LOCAL = ChatModelSettings(provider="llama_cpp", n_ctx=2048, n_threads=1)
UNSET_KEY_ENV = "MEBOT_TEST_KEY_THAT_IS_NOT_SET"

REFERENCES = [
    "My sourdough starter is called Brenda; I feed her rye flour every morning.",
    "I bought a cloud sensor for the observatory shed for 120 pounds.",
    "Last summer I cycled from Sheffield to Edinburgh over four days.",
    "I left Fernlight in 2024 after six years as a data engineer.",
    "My telescope is a Sky-Watcher 200P on a Dobsonian mount.",
    "I moved a nightly job from a Spark cluster to DuckDB on one machine.",
]
QUESTIONS = [
    "What is your starter called?",
    "How much was the cloud sensor?",
    "Where did you cycle last summer?",
    "When did you leave Fernlight?",
    "Which telescope do you use?",
    "What replaced your Spark cluster?",
]


# ------------------------------------------------------------------------------------------------ units


def test_score_constraint_per_provider():
    assert score_constraint("llama_cpp") == {"grammar": SCORE_GBNF, "max_tokens": 3}
    remote = score_constraint("openai")
    assert remote["response_format"] == SCORE_RESPONSE_FORMAT and remote["max_tokens"] >= 12
    schema = SCORE_RESPONSE_FORMAT["json_schema"]["schema"]
    assert schema["properties"]["score"]["enum"] == list(range(11)) and schema["required"] == ["score"]


@pytest.mark.parametrize(
    ("tokens", "start"),
    [
        (["7"], 0),
        (["1", "0"], 0),
        (['{"', "score", '":', " 7", "}"], 3),
        (['{"', "score", '":', "10", "}"], 3),
        ([], 0),
    ],
)
def test_score_start_finds_the_scores_position(tokens, start):
    assert score_start(tokens) == start


def test_one_model_serves_both_methods_with_one_call_and_two_models_make_two():
    same = FakeChat(ChatModelSettings(model="judge"))
    scored, written = judge_calls(same, [{"role": "user", "content": "x"}], ["logprob", "direct"])
    assert scored is written and len(same.calls) == 1
    params = same.calls[0][1]
    assert params["grammar"] == SCORE_GBNF and params["logprobs"] and params["top_logprobs"] == 100

    logprob, direct = FakeChat(ChatModelSettings(model="a")), FakeChat(ChatModelSettings(model="b"))
    judge = JudgeClients(logprob, direct, constrained=True)
    scored, written = judge_calls(judge, [{"role": "user", "content": "x"}], ["logprob", "direct"])
    assert scored is not written and len(logprob.calls) == len(direct.calls) == 1
    assert logprob.calls[0][1]["logprobs"] and not direct.calls[0][1]["logprobs"]
    assert judge.identity == "logprob: fake:llama_cpp:a; direct: fake:llama_cpp:b"
    assert call_params(logprob, constrained=False, logprobs=False) == {"temperature": 0.0, "max_tokens": 6}


def test_judge_models_default_to_models_judge_and_share_one_usage(tmp_path):
    resource = FakeChatModelResource(cache_dir=str(tmp_path))
    settings = Settings()
    default = judge_clients(resource, settings)
    assert default.same and default.logprob is default.direct and default.constrained
    split = settings.model_copy(
        update={
            "models": settings.models.model_copy(
                update={"judge_direct": ChatModelSettings(provider="openai", model="gpt-4o")}
            )
        }
    )
    two = judge_clients(resource, split)
    assert not two.same and two.direct.chat.model == "gpt-4o" and two.logprob.chat.model == "SmolLM2-135M-Instruct"
    assert two.direct.usage is two.logprob.usage is two.usage


def test_constrained_verdict_has_valid_mass_one_and_keeps_the_unconstrained_mass():
    judge = FakeChat(ChatModelSettings(model="judge"), responder=lambda messages, params, client: "7")
    verdict = judge_one(judge, judge_messages(DEFAULT_JUDGE_PROMPT, "q", "r", "a"), ["logprob", "direct"])
    assert verdict.direct == 7.0 and verdict.valid_mass == 1.0
    assert verdict.raw_valid_mass == pytest.approx(1.0)  # the fake puts all its mass on score tokens
    unconstrained = judge_one(
        JudgeClients(judge, judge, constrained=False),
        judge_messages(DEFAULT_JUDGE_PROMPT, "q2", "r", "a"),
        ["logprob"],
    )
    assert unconstrained.valid_mass == unconstrained.raw_valid_mass
    assert "grammar" not in judge.calls[-1][1]


# ------------------------------------------------------------------------------------- the bundled judge


@pytest.mark.full
def test_bundled_judge_constrained_always_writes_a_score_with_all_its_mass_on_scores():
    """The bundled 135M model as a grammar-constrained judge: every written score parses, the valid mass is 1,
    and the expected score comes from the score tokens' probabilities (a distribution over 0..10)."""
    client = chat_client(LOCAL)
    verdicts = []
    for i, question in enumerate(QUESTIONS[:4]):
        for candidate in (REFERENCES[i], REFERENCES[i + 1]):
            messages = judge_messages(DEFAULT_JUDGE_PROMPT, question, REFERENCES[i], candidate)
            verdicts.append(judge_one(client, messages, ["logprob", "direct"]))
    for verdict in verdicts:
        assert verdict.error is None
        assert re.fullmatch(r"(10|[0-9])[^0-9]?", verdict.direct_text), verdict.direct_text
        assert verdict.direct == parse_direct_score(verdict.direct_text) is not None
        assert verdict.valid_mass == 1.0 and 0 < verdict.raw_valid_mass <= 1
        distribution = json.loads(verdict.distribution_json)
        assert set(distribution) <= {str(s) for s in range(11)}
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-4)
        assert 0 <= verdict.expected <= 10


# ------------------------------------------------------------------- an OpenAI-class judge (contract test)


def _score_logprobs(probabilities: dict[int, float]) -> dict:
    """OpenAI's logprobs.content for the reply {"score": <argmax>}, with the score position's alternatives."""
    best = max(probabilities, key=probabilities.get)
    fixed = [{"token": t, "logprob": 0.0, "bytes": None, "top_logprobs": []} for t in ('{"', "score", '":')]
    top = [
        {"token": f" {s}", "logprob": math.log(p), "bytes": None}
        for s, p in sorted(probabilities.items(), key=lambda item: -item[1])
    ]
    score = {"token": f" {best}", "logprob": math.log(probabilities[best]), "bytes": None, "top_logprobs": top}
    return {"content": [*fixed, score, {"token": "}", "logprob": 0.0, "bytes": None, "top_logprobs": []}]}


def scripted_judge(request: dict) -> tuple[int, dict, dict]:
    """A stand-in for a capable OpenAI-class judge: high scores when the proposed answer says what the reference
    says, low ones otherwise — as JSON under the response_format, with logprobs at the score's position."""
    body = request["json"]
    prompt = body["messages"][-1]["content"]
    reference = prompt.split("ANSWER: ", 1)[1].split("\n\nPROPOSED ANSWER: ", 1)[0]
    proposed = prompt.split("PROPOSED ANSWER: ", 1)[1].split("\n\n", 1)[0]
    if proposed.strip() == reference.strip():
        probabilities = {10: 0.6, 9: 0.3, 8: 0.08, 3: 0.02}
    else:
        probabilities = {1: 0.5, 0: 0.3, 2: 0.15, 8: 0.05}
    best = max(probabilities, key=probabilities.get)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": json.dumps({"score": best})},
        "logprobs": _score_logprobs(probabilities),
        "finish_reason": "stop",
    }
    usage = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}
    return (
        200,
        {},
        {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-x", "choices": [choice], "usage": usage},
    )


def test_contract_an_openai_class_judge_passes_validity_with_structured_scores(monkeypatch):
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    qa = pd.DataFrame(
        {
            "qa_id": [f"q{i}" for i in range(len(QUESTIONS))],
            "question": QUESTIONS,
            "answer": REFERENCES,
            "split": ["test"] * len(QUESTIONS),
        }
    )
    pairs = validity_pairs(qa, qa, n=len(QUESTIONS), seed=0)
    with ScriptedServer([scripted_judge]) as server:
        settings = ChatModelSettings(
            provider="openai", base_url=server.base_url, model="gpt-x", api_key_env=UNSET_KEY_ENV, max_retries=0
        )
        frame = judge_validity_pairs(chat_client(settings), pairs, DEFAULT_JUDGE_PROMPT, ["logprob", "direct"])
        request = server.requests[0]["json"]
    assert request["response_format"] == SCORE_RESPONSE_FORMAT
    assert request["logprobs"] is True and request["top_logprobs"] == 20 and request["temperature"] == 0.0
    assert frame["judge_error"].isna().all() and frame["judge_direct"].notna().all()
    assert (frame["logprob_method"] == "logprob").all()
    reports = validity_reports(frame, ["logprob", "direct"])
    assert reports["logprob"]["auc"] >= 0.8 and reports["logprob"]["passed"]
    assert reports["direct"]["auc"] >= 0.8 and reports["direct"]["passed"]
    matched = frame.loc[frame["kind"] == "matched", "judge_expected"]
    assert matched.between(8.5, 10).all()  # 10·0.6 + 9·0.3 + 8·0.08 + 3·0.02 = 9.4
