import pandas as pd
import pytest

from mebot.assets.index.rag import (
    ModelOutputError,
    QuestionError,
    RagBot,
    Source,
    build_prompt,
    clean_answer,
    format_context,
    load_rag_bot,
    prompt_head,
    rag_messages,
    validate_question,
)
from mebot.resources.chat import chat_client
from mebot.resources.settings import DEFAULT_RAG_PROMPT, Settings, parse_settings
from mebot.resources.vector_index import IndexNotFoundError


@pytest.mark.parametrize(
    ("question", "expected"),
    [("  What   telescope do you own? ", "What telescope do you own?"), ("a\nb", "a b")],
)
def test_validate_question_normalises_whitespace(question, expected):
    assert validate_question(question, 100) == expected


@pytest.mark.parametrize(
    ("question", "message"),
    [("", "the question is empty"), ("   \n ", "the question is empty"), ("x" * 101, "101 characters long")],
)
def test_validate_question_rejects_empty_and_over_long_questions(question, message):
    with pytest.raises(QuestionError, match=message):
        validate_question(question, 100)


def test_over_long_question_error_names_the_setting():
    with pytest.raises(QuestionError, match="rag.max_question_chars = 100"):
        validate_question("x" * 101, 100)


def test_default_prompt_matches_the_original_bots_prompt():
    prompt = build_prompt(DEFAULT_RAG_PROMPT, "Tobias Renwick", "Who are you?", format_context(["A.", "B."]))
    assert prompt.startswith("Use the following pieces of context to answer the question at the end.")
    assert '"I am not programmed to answer that"' in prompt
    assert "### Context ###\nYour name is Tobias Renwick.\n\nA.\n\nB.\n\n### Question ###" in prompt
    assert prompt.endswith("Question: Who are you?\nHelpful answer in less than 100 words:")


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "...", "?!"])
def test_clean_answer_rejects_empty_or_wordless_output(text):
    with pytest.raises(ModelOutputError, match="model-x"):
        clean_answer(text, "model-x")


def test_clean_answer_strips_whitespace():
    assert clean_answer("  My starter is Brenda.\n", "m") == "My starter is Brenda."


def _source(n: int, words: int) -> Source:
    text = " ".join(f"word{n}x{i}" for i in range(words))
    return Source(url=f"u{n}", title="t", chunk_id=f"c{n}", score=1.0 - n / 10, snippet=text[:50], text=text)


def test_prompt_drops_the_lowest_ranked_chunks_that_do_not_fit_the_context_window():
    settings = parse_settings({"models": {"chat": {"n_ctx": 1024}}, "rag": {"max_tokens": 128}})
    chat = chat_client(settings.models.chat)
    bot = RagBot(settings, embedder=None, index=None, chunks=pd.DataFrame({"chunk_id": []}), chat=chat)
    sources = [_source(n, 150) for n in range(4)]
    prompt, dropped = bot.prompt_for("Q?", sources)
    assert dropped >= 1
    assert chat.count_tokens(prompt) <= 1024 - 128
    assert "word0x0" in prompt and "word3x0" not in prompt


def test_loading_the_bot_without_outputs_says_to_run_make_run_first(tmp_path):
    from mebot.pipeline.definitions import build_definitions
    from mebot.resources.settings import DEFAULT_CONFIG_PATH

    resources = build_definitions(DEFAULT_CONFIG_PATH, data_dir=tmp_path).resources
    with pytest.raises(IndexNotFoundError, match="run `make run` first"):
        load_rag_bot(Settings(), resources, tmp_path)


@pytest.mark.parametrize(
    ("persona", "first_person", "system"),
    [
        ({}, False, None),  # the original: the filled prompt alone
        ({"description": "A baker and trail runner in Leeds."}, False, "A baker and trail runner in Leeds."),
        ({"name": "Ada Byron"}, True, "Answer in the first person as Ada Byron."),
        (
            {"name": "Ada Byron", "description": " Writes about engines. "},
            True,
            "Writes about engines. Answer in the first person as Ada Byron.",
        ),
    ],
)
def test_rag_messages_carry_the_persona_only_when_set(persona, first_person, system):
    settings = parse_settings({"persona": persona, "rag": {"first_person": first_person}})
    messages = rag_messages(settings, "PROMPT")
    assert messages[-1] == {"role": "user", "content": "PROMPT"}
    assert (messages[0]["content"] if len(messages) == 2 else None) == system
    assert len(messages) == (2 if system else 1) and (system is None or messages[0]["role"] == "system")


@pytest.mark.parametrize(
    ("template", "head"),
    [
        ("Intro for {persona_name}.\n{context}\nQ: {question}", "Intro for Ada.\n"),
        ("{question} about {persona_name}: {context}", ""),
        ("A {persona_name!r} and {persona_name:>5} then {context}", "A 'Ada' and   Ada then "),
        ("No field at all", "No field at all"),
        ("Context first: {context} as {persona_name}", "Context first: "),
    ],
)
def test_prompt_head_is_the_template_before_its_first_per_question_field(template: str, head: str) -> None:
    assert prompt_head(template, "Ada") == head
    filled = template.format(persona_name="Ada", context="C", question="Q?")
    assert filled.startswith(head)


def test_the_default_prompt_head_holds_the_instructions_and_the_name() -> None:
    head = prompt_head(DEFAULT_RAG_PROMPT, "Tobias Renwick")
    assert head.startswith("Use the following pieces of context") and head.endswith("Your name is Tobias Renwick.\n\n")
