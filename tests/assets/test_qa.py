import dagster as dg
import pandas as pd
import pytest

from assets.chunks import chunk_id
from assets.qa import (
    NoPassagesError,
    assign_splits,
    build_qa_chunks,
    clean_question,
    explain_no_passages,
    longest_paragraph,
    normalize_question,
    qa_chunks,
    rejection_reason,
    round_seed,
    sample_passages,
    split_pages,
    synthetic_qa,
)
from pipeline.settings import QaSettings, SettingsResource
from pipeline.tokens import count_tokens
from resources.chat import ChatClient, ChatModelResource, ChatResult
from resources.parquet_io import ParquetIOManagerFactory

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


# ------------------------------------------------------------------------------------------------- qa_chunks

BODY = (
    "My sourdough starter is called Brenda. I feed her every morning with rye flour and she has lived in my "
    "kitchen since 2019, surviving two house moves and one very long holiday in Portugal."
)
RELATED = "Related posts\n\nTen loaves I baked in 2023\n\nWhy rye flour is worth it"


def _pages(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["url", "title", "text", "status"])


def test_qa_chunks_drops_boilerplate_short_and_error_pages():
    pages = _pages(
        ("https://x/bread", "Bread", BODY, 200),
        ("https://x/related", "Related", RELATED + "\n\n" + BODY, 200),  # matches qa.drop_patterns
        ("https://x/short", "Short", "Thanks for reading!", 200),  # 4 tokens < qa.min_tokens
        ("https://x/gone", "", BODY, 404),
        ("https://x/empty", "Empty", "   ", 200),
    )
    frame, dropped = build_qa_chunks(pages, QaSettings(min_tokens=20))
    assert list(frame["url"]) == ["https://x/bread"]
    assert dict(dropped) == {"boilerplate": 1, "too_short": 1}
    row = frame.iloc[0]
    assert row["passage"] == BODY and row["title"] == "Bread"
    assert row["n_tokens"] == count_tokens(BODY) and row["chunk_id"] == chunk_id("https://x/bread", 0, BODY)


def test_longest_paragraph_mode_answers_with_the_chunks_longest_paragraph():
    text = f"A short intro line.\n\n{BODY}\n\nThe end, thanks."
    assert longest_paragraph(text) == BODY
    frame, _ = build_qa_chunks(_pages(("u", "T", text, 200)), QaSettings(passage="longest_paragraph", min_tokens=5))
    assert list(frame["passage"]) == [BODY]
    whole, _ = build_qa_chunks(_pages(("u", "T", text, 200)), QaSettings(passage="chunk", min_tokens=5))
    assert list(whole["passage"]) == [text]


def test_chunks_respect_the_token_size():
    long_text = "\n\n".join(f"Paragraph {i}: " + BODY for i in range(30))
    frame, _ = build_qa_chunks(_pages(("u", "T", long_text, 200)), QaSettings(chunk_tokens=100, min_tokens=10))
    assert len(frame) > 5 and frame["n_tokens"].max() <= 100 and frame["chunk_id"].is_unique


def _raw_pages_asset(frame: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name="raw_pages")
    def raw_pages() -> pd.DataFrame:
        return frame

    return raw_pages


def _resources(tmp_path, config) -> dict:
    return {
        "settings": SettingsResource(config_path=str(config)),
        "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
        "chat_model": ChatModelResource(cache_dir=str(tmp_path / "data" / "cache")),
    }


def test_qa_chunks_asset_reports_kept_and_dropped(tmp_path, make_config):
    pages = _pages(("https://x/bread", "Bread", BODY, 200), ("https://x/r", "R", RELATED, 200))
    result = dg.materialize([_raw_pages_asset(pages), qa_chunks], resources=_resources(tmp_path, make_config()))
    assert result.success
    metadata = result.asset_materializations_for_node("qa_chunks")[0].metadata
    assert metadata["kept"].value == 1
    assert metadata["dropped"].value == {"boilerplate": 1, "too_short": 0}
    assert "Brenda" in metadata["passages_preview"].value
    stored = pd.read_parquet(tmp_path / "data" / "qa_chunks.parquet")
    assert list(stored.columns[:2]) == ["chunk_id", "url"] and {"title", "passage", "n_tokens"} <= set(stored)


def test_qa_chunks_errors_clearly_when_the_filter_leaves_nothing(tmp_path, make_config):
    pages = _pages(("https://x/short", "S", "Thanks for reading!", 200), ("https://x/r", "R", RELATED, 200))
    with pytest.raises(NoPassagesError, match=r"qa\.min_tokens = 20.*qa\.drop_patterns"):
        dg.materialize([_raw_pages_asset(pages), qa_chunks], resources=_resources(tmp_path, make_config()))


def test_qa_chunks_says_when_no_page_has_text():
    pages = _pages(("https://x/gone", "", "", 404), ("https://x/blank", "B", " ", 200))
    frame, dropped = build_qa_chunks(pages, QaSettings())
    assert frame.empty and not dropped
    assert "raw_pages has no page with text" in explain_no_passages(pages, dropped, QaSettings())


def test_no_passages_error_in_longest_paragraph_mode_suggests_the_whole_chunk():
    pages = _pages(("u", "T", "\n\n".join(["One short line here."] * 40), 200))
    frame, dropped = build_qa_chunks(pages, QaSettings(passage="longest_paragraph"))
    assert frame.empty and dropped["too_short"] >= 1
    assert "qa.passage: chunk" in explain_no_passages(pages, dropped, QaSettings(passage="longest_paragraph"))


# ---------------------------------------------------------------------------------------------------- splits


def _passages(n_pages: int = 12, per_page: int = 3) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    rows, questions = [], {}
    for p in range(n_pages):
        for c in range(per_page):
            cid = f"chunk-{p}-{c}"
            rows.append({"chunk_id": cid, "url": f"https://x/page-{p}", "title": f"P{p}", "passage": f"text {p} {c}"})
            questions[cid] = [f"Question {i} about page {p} chunk {c}?" for i in range(2 if c else 3)]
    return pd.DataFrame(rows), questions


@pytest.mark.parametrize("mode", ["by_question", "by_page", "none"])
@pytest.mark.parametrize("seed", [1, 42])
def test_splits_are_deterministic_given_the_seed(mode, seed):
    passages, questions = _passages()
    qa = QaSettings(split=mode, seed=seed, train_fraction=0.6, validation_fraction=0.3)
    first = assign_splits(passages, questions, qa)
    pd.testing.assert_frame_equal(first, assign_splits(passages, questions, qa))
    assert first["qa_id"].is_unique
    assert set(first["split"]) <= {"train", "validation", "test"}
    if mode != "none":
        other = assign_splits(passages, questions, qa.model_copy(update={"seed": seed + 1}))
        assert not first["split"].equals(other["split"])  # the seed decides the assignment


@pytest.mark.parametrize("mode", ["by_question", "by_page"])
def test_held_out_questions_never_appear_in_train(mode):
    passages, questions = _passages()
    frame = assign_splits(passages, questions, QaSettings(split=mode, validation_fraction=0.1))
    train = set(frame.loc[frame["split"] == "train", "question"].map(normalize_question))
    held_out = set(frame.loc[frame["split"] != "train", "question"].map(normalize_question))
    assert held_out and train and not train & held_out
    assert (frame["split"] == "test").any()
    assert len(frame) == sum(len(q) for q in questions.values())  # each question exactly once


def test_by_question_holds_out_one_question_per_passage_and_trains_on_every_passage():
    passages, questions = _passages()
    frame = assign_splits(
        passages, questions, QaSettings(split="by_question", train_fraction=0.6, validation_fraction=0.3)
    )
    per_passage = frame.groupby("chunk_id")["split"].apply(list)
    for cid, splits in per_passage.items():
        assert sum(s != "train" for s in splits) == 1, cid  # one held out: validation or test
        assert splits.count("train") == len(questions[cid]) - 1
    held_out = frame.loc[frame["split"] != "train", "split"].value_counts()
    assert held_out.get("validation", 0) > 0 and held_out.get("test", 0) > 0


def test_by_question_passage_with_a_single_question_only_trains():
    passages, questions = _passages(n_pages=2, per_page=1)
    questions = {cid: qs[:1] for cid, qs in questions.items()}
    frame = assign_splits(passages, questions, QaSettings(split="by_question"))
    assert set(frame["split"]) == {"train"}


def test_by_page_keeps_each_page_in_one_split_with_the_fractions():
    passages, questions = _passages(n_pages=20)
    frame = assign_splits(passages, questions, QaSettings(split="by_page", train_fraction=0.8, validation_fraction=0.1))
    assert (frame.groupby("url")["split"].nunique() == 1).all()
    pages_per_split = frame.groupby("split")["url"].nunique().to_dict()
    assert pages_per_split == {"train": 16, "validation": 2, "test": 2}


@pytest.mark.parametrize("n_pages", [2, 3, 5])
def test_by_page_small_sites_still_get_a_test_page(n_pages):
    urls = [f"https://x/{i}" for i in range(n_pages)]
    splits = split_pages(urls, QaSettings(train_fraction=0.8, validation_fraction=0.1))
    assert "train" in splits.values() and "test" in splits.values()


def test_none_mode_tests_on_every_training_question():
    passages, questions = _passages(n_pages=3)
    frame = assign_splits(passages, questions, QaSettings(split="none"))
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == "test"]
    assert len(train) == len(test) == sum(len(q) for q in questions.values())
    assert list(train["question"]) == list(test["question"]) and list(train["answer"]) == list(test["answer"])
    assert set(frame["split"]) == {"train", "test"}


# ------------------------------------------------------------------------------------------------ question writing

PASSAGES = [
    ("https://x/bread", "Bread", BODY),
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


def test_local_model_writes_questions_with_provenance_and_a_rerun_makes_no_model_call(tmp_path, make_config):
    config = make_config(
        {
            "qa": {"prompt": PASSAGE_FIRST_PROMPT, "max_tokens": 24, "questions_per_chunk": 2},
            "models": {"chat": {"n_ctx": 1024}},
        }
    )
    resources = _resources(tmp_path, config)
    first = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=resources)
    assert first.success
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert list(frame.columns) == ["qa_id", "question", "answer", "chunk_id", "url", "title", "split"]
    assert len(frame) >= 2, frame
    by_url = {url: (title, text) for url, title, text in PASSAGES}
    for row in frame.itertuples():
        assert row.question and rejection_reason(row.question, 300) is None
        assert (row.title, row.answer) == by_url[row.url]
        assert row.chunk_id == chunk_id(row.url, 0, row.answer)
    assert frame.groupby("chunk_id")["question"].apply(lambda q: q.map(normalize_question).is_unique).all()
    metadata = first.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["llm_calls"].value >= 6 and metadata["llm_cache_misses"].value == metadata["llm_calls"].value
    written = metadata["questions_written"].value
    assert written == len(frame) and written + metadata["questions_never_written"].value == 6

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


def test_contract_a_model_that_never_writes_a_question_gives_counts_not_a_crash(tmp_path, make_config, monkeypatch):
    calls: list = []
    outputs = [["I am Tobias."], ["Sure!"], [""], ["   "]]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls))
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=_resources(tmp_path, make_config()))
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


def test_contract_duplicates_are_retried_with_the_existing_questions_listed(tmp_path, make_config, monkeypatch):
    calls: list = []
    same = "What is your sourdough starter called?"
    # round 1: the same question for all 3 passages (only the first keeps it); retry: new questions
    outputs = [[same], ["Why a cloud sensor?", "Q: Where do you ride?"], [same], ["How far did you go?"]]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls))
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=_resources(tmp_path, make_config()))
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
    retry_prompts = [m[0]["content"] for m in calls[1]["batch"]]
    assert all(same in p and "already exist" in p for p in retry_prompts)
    assert calls[0]["temperature"] == QaSettings().temperature and calls[0]["max_tokens"] == QaSettings().max_tokens


def test_contract_output_cut_off_by_max_tokens_counts_only_with_a_question_mark(tmp_path, make_config, monkeypatch):
    calls: list = []
    outputs = [
        ["What did you do in the summer of 2019 when you"],
        ["Where did you ride?", "Why rye?", "Who is Brenda?"],
    ]
    monkeypatch.setattr(ChatClient, "complete_batch", _scripted_batch(outputs, calls, finish_reason="length"))
    config = make_config({"qa": {"questions_per_chunk": 1}})
    result = dg.materialize([_qa_chunks_asset(), synthetic_qa], resources=_resources(tmp_path, config))
    metadata = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert metadata["rejected_outputs"].value == {"cut_off": 3}
    frame = pd.read_parquet(tmp_path / "data" / "synthetic_qa.parquet")
    assert sorted(frame["question"]) == ["Where did you ride?", "Who is Brenda?", "Why rye?"]


@pytest.mark.parametrize("max_passages", [1, 5, 12, 20])
def test_passage_sample_is_spread_over_pages_deterministic_and_grows_by_adding(max_passages):
    passages, _ = _passages(n_pages=8, per_page=3)
    sample = sample_passages(passages, max_passages, seed=42)
    assert len(sample) == max_passages and sample["chunk_id"].is_unique
    pd.testing.assert_frame_equal(sample, sample_passages(passages, max_passages, seed=42))
    per_page = sample["url"].value_counts()
    assert per_page.max() - per_page.min() <= 1 and len(per_page) == min(8, max_passages)  # pages take turns
    assert list(sample["chunk_id"]) == [c for c in passages["chunk_id"] if c in set(sample["chunk_id"])]  # order kept
    bigger = set(sample_passages(passages, max_passages + 3, seed=42)["chunk_id"])
    assert set(sample["chunk_id"]) < bigger  # a bigger sample keeps every earlier passage (and its cached questions)


@pytest.mark.parametrize("max_passages", [0, 24, 100])
def test_passage_sample_of_zero_or_more_than_there_are_keeps_everything(max_passages):
    passages, _ = _passages(n_pages=8, per_page=3)
    pd.testing.assert_frame_equal(sample_passages(passages, max_passages, seed=1), passages)


def test_a_different_seed_samples_other_passages():
    passages, _ = _passages(n_pages=8, per_page=3)
    first, second = (set(sample_passages(passages, 8, seed=seed)["chunk_id"]) for seed in (1, 2))
    assert first != second


@pytest.mark.parametrize(("n_pages", "fraction", "expected"), [(4, 0.1, 1), (12, 0.1, 1), (12, 0.25, 3), (12, 0.0, 0)])
def test_by_question_validation_gets_its_fraction_and_at_least_one_question(n_pages, fraction, expected):
    passages, questions = _passages(n_pages=n_pages, per_page=1)  # one passage per page, each with 3 questions
    frame = assign_splits(
        passages, questions, QaSettings(split="by_question", train_fraction=0.5, validation_fraction=fraction)
    )
    assert (frame["split"] == "validation").sum() == expected
    assert (frame["split"] == "test").sum() == n_pages - expected
