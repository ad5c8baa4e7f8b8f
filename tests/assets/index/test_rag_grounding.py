"""The bundled chat model answers from what RagBot retrieved (full tier: the real GGUF and MiniLM).

The sample site is read from data/sample_site (its pages' main text, as raw_pages holds it), chunked as
rag_chunks does, embedded by MiniLM into a real FAISS index; the chat model is the bundled SmolLM2 through
llama.cpp, wrapped by a client that records every prompt it is sent. These tests fail if RagBot.ask sent the bare
question, or a context without the retrieved text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mebot.assets.evaluation.golden import answer_states_facts, load_golden
from mebot.assets.index.embeddings import embed_chunks, stack_vectors
from mebot.assets.index.extractive import ExtractiveBot
from mebot.assets.index.rag import RagBot
from mebot.assets.ingest.chunks import chunk_pages
from mebot.assets.ingest.html_text import extract_page
from mebot.resources.chat import chat_client
from mebot.resources.embeddings import build_embedder
from mebot.resources.settings import PROJECT_ROOT, load_settings
from mebot.resources.vector_index import load_index, write_index
from tests.helpers import SAMPLE_GOLDEN

pytestmark = pytest.mark.full

SITE = PROJECT_ROOT / "data" / "sample_site"
BASE = "http://127.0.0.1:8765"
GROUNDED_QUESTIONS = [
    "favourite-film",
    "sister-job",
    "data-mesh-coined-by",
    "la-palma-casita-price",
    "spark-job-scala-lines",
]
"""Golden questions whose fact the bundled model states with the default context (greedy decoding), measured with
bench/bench_rag_answers.py; the test asks them again and checks the answers."""


def sample_site_chunks(settings) -> pd.DataFrame:
    """rag_chunks of the sample site, read from its files (no crawl): every content page, tag listings and the
    robots-disallowed /private/ page left out, as the crawl leaves them out."""
    rows = []
    for path in sorted(SITE.rglob("index.html")):
        rel = path.parent.relative_to(SITE).as_posix()
        url = f"{BASE}/" if rel == "." else f"{BASE}/{rel}/"
        if rel.startswith("private") or any(re.search(p, url) for p in settings.site.index_only):
            continue
        page = extract_page(
            path.read_text(encoding="utf-8"), settings.site.content_selectors, settings.site.drop_selectors
        )
        rows.append({"url": url, "title": page.title, "text": page.text, "status": 200})
    return chunk_pages(pd.DataFrame(rows), settings.rag.chunk_tokens, settings.rag.overlap_tokens)


class RecordingChat:
    """Wraps a real chat client: every `complete` call's messages are kept in `sent`, then passed on unchanged."""

    def __init__(self, inner):
        self.inner = inner
        self.sent: list[list[dict]] = []

    def complete(self, messages, **params):
        self.sent.append(messages)
        return self.inner.complete(messages, **params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def sample_bot(tmp_path_factory) -> tuple[RagBot, RecordingChat]:
    settings = load_settings(PROJECT_ROOT / "mebot.yaml")  # the project's defaults: what `mebot ask` uses
    settings = settings.model_copy(update={"rag": settings.rag.model_copy(update={"temperature": 0.0})})
    chunks = sample_site_chunks(settings)
    embedder = build_embedder(settings.models.embedding)
    frame, _ = embed_chunks(chunks, embedder, None)
    index_dir = Path(tmp_path_factory.mktemp("index"))
    write_index(
        index_dir, stack_vectors(frame, embedder.dim), frame["chunk_id"].tolist(), embedder.identity, 50_000, 16
    )
    chat = RecordingChat(chat_client(settings.models.chat))
    bot = RagBot(settings, embedder, load_index(index_dir, embedder.identity), chunks, chat)  # type: ignore[arg-type]
    return bot, chat


def test_the_prompt_sent_to_the_chat_model_holds_the_selected_sentences(sample_bot):
    bot, chat = sample_bot
    chat.sent.clear()
    answer = bot.ask("How much did Kepler's dental surgery set you back?")
    assert len(chat.sent) == 1
    prompt = chat.sent[0][-1]["content"]
    assert "Kepler" in answer.context and "640" in answer.context  # the sentence that states the fact
    assert answer.context in prompt  # ... reached the model, labelled with its page
    assert 'From "2024: A Year in Review":' in prompt
    assert prompt.rstrip().endswith(
        "Question: How much did Kepler's dental surgery set you back?\nHelpful answer in less than 100 words:"
    )
    assert prompt != "How much did Kepler's dental surgery set you back?"
    assert answer.sources and answer.sources[0].url == f"{BASE}/posts/2024-year-in-review/"


@pytest.mark.parametrize("question_id", GROUNDED_QUESTIONS)
def test_the_bundled_model_states_the_fact_from_its_context(sample_bot, question_id):
    bot, chat = sample_bot
    question = load_golden(SAMPLE_GOLDEN).by_id()[question_id]
    answer = bot.ask(question.question)
    assert answer_states_facts(answer.context, question.facts), "the context lost the fact: retrieval changed"
    assert answer_states_facts(answer.answer, question.facts), f"{question.question} -> {answer.answer!r}"


def test_extractive_answers_a_golden_question_with_the_source_sentence(sample_bot):
    bot, _ = sample_bot
    question = load_golden(SAMPLE_GOLDEN).by_id()["kepler-dental-cost"]
    answer = ExtractiveBot(bot).ask(question.question)
    assert answer_states_facts(answer.answer, question.facts)
    assert f"— 2024: A Year in Review ({BASE}/posts/2024-year-in-review/)" in answer.answer
    assert answer.answer.startswith("“")
    refused = ExtractiveBot(bot).ask("What's your phone number?")
    assert refused.answer == "I am not programmed to answer that."
