"""synthetic_qa: cleaning and judging model outputs, the seeds of the rounds, the conversation and constraints
that ask for one question, and question writing with the local model (provenance, gates, no repeated call on a
re-run) and with scripted outputs (contract tests of the retries and the quality gates)."""

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.ingest.chunks import chunk_id
from mebot.assets.qa.gates import names_passage
from mebot.assets.qa.questions import (
    MAX_REJECT_EXAMPLES,
    QUESTION_GBNF,
    clean_question,
    normalize_question,
    question_constraints,
    question_messages,
    rejection_reason,
    round_seed,
    synthetic_qa,
    write_questions,
)
from mebot.resources.chat import ChatClient, ChatResult, chat_client
from mebot.resources.settings import (
    ORIGINAL_QA_PROMPT,
    ChatModelSettings,
    FewShotExample,
    QaSettings,
    resolve_qa_prompt,
)
from mebot.resources.tokens import count_tokens

# The default prompt puts the instruction before the passage; SmolLM2-135M then mostly continues the passage.
# With the instruction after the passage it writes a question most of the time (measured: 7 of 8 outputs).
PASSAGE_FIRST_PROMPT = (
    '### TEXT ###\n{passage}\n\nWrite one short question, addressed to the author as "you", that the TEXT above '
    "answers. Reply with the question only."
)


# ----------------------------------------------------------------------------------------- cleanup, rejection


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("What is your starter called?", "What is your starter called?"),
        ('  "What is your starter called?"  ', "What is your starter called?"),
        ("“Where do you live?”", "Where do you live?"),
        ("Question: Where do you live?", "Where do you live?"),
        ("question 2: Where do you live?", "Where do you live?"),
        ("Q: 'Where do you live?'", "Where do you live?"),
        ("1. Where do you live?\n2. What do you do?", "Where do you live?"),
        ("- **Question:** Why Sheffield?", "Why Sheffield?"),
        ("Q1) Why Sheffield?", "Why Sheffield?"),
        ("Where do you live?\nAnswer: Sheffield.", "Where do you live?"),
        ("Where do you live? I live in Sheffield.", "Where do you live?"),
        ("\n\n  Where   do you\tlive?  \n", "Where do you live?"),
        ("Here is a concise question:\n\nHow much did the sensor cost?", "How much did the sensor cost?"),
        ("Question:\nWhat bike do you ride?", "What bike do you ride?"),
        (
            'Here\'s a question in the second person: "What is the secret of your bread?"',
            "What is the secret of your bread?",
        ),
        ("Sure, here is one question: How old is Brenda?", "How old is Brenda?"),
        ("### Question ###\nWhen did you start?", "When did you start?"),
        ("", ""),
        ("   \n \n", ""),
    ],
)
def test_clean_question_keeps_only_the_question(raw, expected):
    assert clean_question(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("Question:", "empty"),
        ('""', "empty"),
        ("??", "empty"),
        ("What " + "very " * 80 + "long question is this?", "too_long"),
        ("Your sourdough starter is called Brenda.", "not_a_question"),
        ("Here is a question about your bread.", "not_a_question"),
        ("What a view!", "not_a_question"),
        ("What a pleasure to meet you, I am Tobias", "not_a_question"),
        ("How to bake bread in a week", "not_a_question"),
        ("I cycled from Sheffield to Edinburgh.\nWhere did you cycle?", "not_a_question"),  # first line only
        ("What is your starter called?", None),
        ("Where do you live", None),  # a question word without the question mark is still a question
        ("Do you bake every day", None),
        ("You cycled how far?", None),  # a question mark without a question word is a question
    ],
)
def test_rejection_of_crafted_model_outputs(raw, reason):
    assert rejection_reason(clean_question(raw), max_chars=120) == reason


def test_an_existing_question_in_other_words_is_a_duplicate():
    existing = {normalize_question("What is your starter called?")}
    assert rejection_reason("what is your STARTER called", 300, existing) == "duplicate"
    assert rejection_reason("What is your starter fed?", 300, existing) is None


def test_rounds_use_different_seeds():
    seeds = {round_seed(42, k, attempt) for k in range(3) for attempt in (0, 1)}
    assert len(seeds) == 6 and round_seed(42, 1, 0) == round_seed(42, 1, 0) != round_seed(43, 1, 0)


BREAD = (
    "My sourdough starter is called Brenda. I feed her every morning with rye flour and she has lived in my "
    "kitchen since 2019, surviving two house moves and one very long holiday in Portugal."
)


PASSAGES = [
    ("https://x/bread", "Bread", BREAD),
    (
        "https://x/sensor",
        "Cloud sensor",
        "I bought a cloud sensor for the observatory shed for 120 pounds. It measures the sky temperature, so the "
        "roll-off roof closes by itself when clouds arrive and the telescope stays dry.",
    ),
    (
        "https://x/ride",
        "Coast to coast",
        "Last summer I cycled from Sheffield to Edinburgh over four days, about 400 kilometres, mostly on quiet lanes "
        "and the occasional canal towpath, with a flapjack in every jersey pocket.",
    ),
]


def _qa_chunks_asset(passages=PASSAGES) -> dg.AssetsDefinition:
    frame = pd.DataFrame(
        [
            {
                "chunk_id": chunk_id(url, 0, text),
                "url": url,
                "title": title,
                "chunk_index": 0,
                "passage": text,
                "n_tokens": count_tokens(text),
            }
            for url, title, text in passages
        ]
    )

    @dg.asset(name="qa_chunks")
    def source() -> pd.DataFrame:
        return frame

    return source


@pytest.mark.full
def test_local_model_writes_questions_with_provenance_and_a_rerun_makes_no_model_call(
    qa_resources, tmp_path, make_config
):
    config = make_config(
        {
            "qa": {"prompt": PASSAGE_FIRST_PROMPT, "max_tokens": 24, "questions_per_chunk": 2},
            "models": {"chat": {"n_ctx": 1024, "n_threads": 1}},
        }
    )
    resources = qa_resources(config, real_embedder=True)
    first = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=resources)
    assert first.success
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert list(frame.columns) == ["qa_id", "question", "answer", "chunk_id", "url", "title", "split"]
    assert len(frame) >= 2, frame
    by_url = {url: (title, text) for url, title, text in PASSAGES}
    for row in frame.itertuples():
        assert row.question and rejection_reason(row.question, 300) is None
        assert row.question.endswith("?") and "\n" not in row.question  # the grammar: one question
        assert names_passage(row.question, row.answer), row.question  # the gates
        assert (row.title, row.answer) == by_url[row.url]
        assert row.chunk_id == chunk_id(row.url, 0, row.answer)
    assert frame.groupby("chunk_id")["question"].apply(lambda q: q.map(normalize_question).is_unique).all()
    metadata = first.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["llm_calls"].value >= 6 and metadata["llm_cache_misses"].value == metadata["llm_calls"].value
    written = metadata["questions_written"].value
    assert written == len(frame) and written + metadata["questions_never_written"].value == 6
    assert metadata["gates"].value == ["names_passage", "not_template", "roundtrip"]
    rejections = metadata["gate_rejections"].value
    assert set(rejections) == {"no_passage_term", "generic_template", "no_roundtrip"}
    examples = metadata["rejected_examples"].value
    assert set(examples) == set(metadata["rejected_outputs"].value)
    assert all(1 <= len(v) <= MAX_REJECT_EXAMPLES for v in examples.values())

    second = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=resources)
    again = second.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert again["llm_calls"].value == metadata["llm_calls"].value
    assert again["llm_cache_hits"].value == again["llm_calls"].value and again["llm_cache_misses"].value == 0
    pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet"))


def _scripted_batch(outputs_per_round: list[list[str]], calls: list, finish_reason: str = "stop"):
    """A contract stand-in for ChatClient.complete_batch: round i returns outputs_per_round[i]."""

    def complete_batch(self, batch, **params):
        texts = outputs_per_round[len(calls)] if len(calls) < len(outputs_per_round) else [""] * len(batch)
        calls.append({"batch": batch, **params})
        return [
            ChatResult(texts[i % len(texts)], 10, 5, finish_reason, "fake", None, False, 0.0) for i in range(len(batch))
        ]

    return complete_batch


def test_contract_a_model_that_never_writes_a_question_gives_counts_not_a_crash(
    qa_resources, tmp_path, make_config, monkeypatch
):
    calls: list = []
    outputs = [["I am Tobias."], ["Sure!"], [""], ["   "]]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls))
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=qa_resources(make_config()))
    assert result.success
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert frame.empty and list(frame.columns) == ["qa_id", "question", "answer", "chunk_id", "url", "title", "split"]
    metadata = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["questions_never_written"].value == 6  # 3 passages x 2 questions
    assert metadata["dropped"].value == {"empty": 3, "not_a_question": 3}
    assert metadata["rejected_outputs"].value == {"empty": 6, "not_a_question": 6}
    assert metadata["questions_by_split"].value == {"train": 0, "validation": 0, "test": 0}
    # question 1: a try and a retry for each passage, then question 2 the same; every retry has another seed
    assert [len(c["batch"]) for c in calls] == [3, 3, 3, 3]
    assert len({c["seed"] for c in calls}) == 4


def test_contract_duplicates_are_retried_with_the_existing_questions_listed(
    qa_resources, tmp_path, make_config, monkeypatch
):
    calls: list = []
    same = "What is your sourdough starter called?"
    # round 1: the same question for all 3 passages (only the first keeps it); retry: new questions
    outputs = [[same], ["Why a cloud sensor?", "Q: Where do you ride?"], [same], ["How far did you go?"]]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls))
    config = make_config({"qa": {"gates": []}})  # the retry mechanics alone; the gates have their own test
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=qa_resources(config))
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert frame["question"].map(normalize_question).is_unique
    # passage 1: `same`, then "How far…" on the retry of question 2; passages 2 and 3: their retry question
    # for question 1, and for question 2 only duplicates (of `same`, then of passage 1's "How far…")
    assert frame.groupby("url")["question"].apply(list).to_dict() == {
        "https://x/bread": [same, "How far did you go?"],
        "https://x/sensor": ["Why a cloud sensor?"],
        "https://x/ride": ["Where do you ride?"],
    }
    metadata = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["rejected_outputs"].value == {"duplicate": 7}
    assert metadata["dropped"].value == {"duplicate": 2}
    retry_prompts = [m[-1]["content"] for m in calls[1]["batch"]]
    assert all(same in p and "already exist" in p for p in retry_prompts)
    assert calls[0]["temperature"] == QaSettings().temperature and calls[0]["max_tokens"] == QaSettings().max_tokens


def test_contract_output_cut_off_by_max_tokens_counts_only_with_a_question_mark(
    qa_resources, tmp_path, make_config, monkeypatch
):
    calls: list = []
    outputs = [
        ["What did you do in the summer of 2019 when you"],
        ["Where did you ride?", "Why rye?", "Who is Brenda?"],
    ]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls, finish_reason="length"))
    config = make_config({"qa": {"questions_per_chunk": 1, "gates": []}})
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=qa_resources(config))
    metadata = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["rejected_outputs"].value == {"cut_off": 3}
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert sorted(frame["question"]) == ["Where did you ride?", "Who is Brenda?", "Why rye?"]


# ------------------------------------------------------------------------------- the conversation, constraints


def test_few_shot_examples_are_earlier_turns_and_the_passage_comes_last():
    examples = [FewShotExample(passage="I keep bees.", question="What do you keep?")]
    messages = question_messages(PASSAGE_FIRST_PROMPT, BREAD, ["Who is Brenda?"], examples)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == PASSAGE_FIRST_PROMPT.format(passage="I keep bees.")
    assert messages[1]["content"] == "What do you keep?"
    assert messages[2]["content"].startswith(PASSAGE_FIRST_PROMPT.format(passage=BREAD))
    assert messages[2]["content"].endswith("write a different one:\n- Who is Brenda?")
    assert question_messages(PASSAGE_FIRST_PROMPT, BREAD, []) == [
        {"role": "user", "content": PASSAGE_FIRST_PROMPT.format(passage=BREAD)}
    ]


def test_the_original_prompt_is_a_setting_value():
    qa = QaSettings(prompt="original")
    assert resolve_qa_prompt(qa.prompt) == ORIGINAL_QA_PROMPT
    assert ORIGINAL_QA_PROMPT.startswith(
        "Write a concise question in as few words as possible to the author in the second person that has the "
        "following TEXT as the answer."
    )
    assert "### TEXT ###\n{passage}" in ORIGINAL_QA_PROMPT
    with pytest.raises(ValueError, match="passage"):
        QaSettings(prompt="Write a question.")


def test_the_grammar_is_asked_of_llama_cpp_only_and_only_when_constrained():
    local = chat_client(ChatModelSettings(provider="llama_cpp", n_ctx=512, n_threads=1))
    remote = chat_client(ChatModelSettings(provider="openai", base_url="http://127.0.0.1:9/v1", api_key_env="X_UNSET"))
    assert question_constraints(local, QaSettings()) == {"grammar": QUESTION_GBNF}
    assert question_constraints(local, QaSettings(constrained=False)) == {}
    assert question_constraints(remote, QaSettings()) == {}


def test_contract_questions_failing_a_gate_are_retried_then_dropped_and_counted_with_examples(
    qa_resources, tmp_path, make_config, monkeypatch
):
    calls: list = []
    # round 1 (question 1, first try) for the 3 passages in order: bread, sensor, ride
    outputs = [
        ["What is the text above?", "What is the question?", "What is your favourite marathon shoe?"],
        # retries: bread gets a good question; sensor a generic one again; ride one that names its passage
        # (jersey pocket) but is about another page
        [
            "Who is Brenda?",
            "What is the main idea of the passage?",
            "Do you keep your sourdough starter Brenda and her rye flour in a jersey pocket?",
        ],
    ]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls))
    config = make_config({"qa": {"questions_per_chunk": 1, "roundtrip_k": 1}})
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=qa_resources(config))
    assert result.success
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert frame.groupby("url")["question"].apply(list).to_dict() == {"https://x/bread": ["Who is Brenda?"]}
    metadata = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["rejected_outputs"].value == {"no_passage_term": 4, "no_roundtrip": 1}
    assert metadata["gate_rejections"].value == {"no_passage_term": 4, "generic_template": 0, "no_roundtrip": 1}
    assert metadata["dropped"].value == {"no_passage_term": 1, "no_roundtrip": 1}
    assert metadata["gated_outputs"].value == 6
    examples = metadata["rejected_examples"].value
    assert [e["question"] for e in examples["no_passage_term"]] == [  # all four (up to MAX_REJECT_EXAMPLES)
        "What is the text above?",
        "What is the question?",
        "What is your favourite marathon shoe?",
        "What is the main idea of the passage?",
    ]
    assert examples["no_roundtrip"] == [
        {
            "question": "Do you keep your sourdough starter Brenda and her rye flour in a jersey pocket?",
            "url": "https://x/ride",
            "attempt": "2",
        }
    ]
    assert len({c["seed"] for c in calls}) == 2  # the retry has another seed


def test_every_question_call_declares_the_few_shot_turns_and_the_prompt_head_as_its_fixed_prefix() -> None:
    from tests.fakes import FakeChat

    client = FakeChat(ChatModelSettings())
    client.reuses_prompt_prefix = True  # as llama.cpp: the declared head goes into the call
    passages = pd.DataFrame(
        [{"chunk_id": chunk_id(url, 0, text), "url": url, "passage": text} for url, _, text in PASSAGES]
    )
    qa = QaSettings(questions_per_chunk=1)
    write_questions(client, passages, qa)
    head = resolve_qa_prompt(qa.prompt).split("{passage}")[0]
    assert head and len(client.calls) >= len(PASSAGES)
    for messages, params in client.calls:
        assert params["prompt_prefix"] == head and messages[-1]["content"].startswith(head)
        assert len(messages) == 2 * len(qa.few_shot) + 1  # the few-shot turns come before it, the same each call
