"""RagBot's hybrid retrieval and sentence context, and the extractive answer mode, on a small site with the fake
chat model and embedder (tests/fakes.py) and a real FAISS index. The bundled model's own answers:
test_rag_grounding.py (full tier)."""

import numpy as np
import pandas as pd
import pytest

from mebot.assets.index.embeddings import embed_chunks, stack_vectors
from mebot.assets.index.extractive import DECLINE, ExtractiveBot, extractive_answer
from mebot.assets.index.rag import RagBot
from mebot.resources.settings import parse_settings
from mebot.resources.vector_index import load_index, write_index
from tests.fakes import FakeChat, FakeEmbedder

URL = "http://127.0.0.1:9"
PAGES = [
    (
        "/posts/telescope/",
        "Two Years with a Dobsonian",
        "I bought the telescope second-hand in 2019. The mirror is 200 mm across. "
        "The Telrad finder cost me £40 and it was the best upgrade I made. I keep it in the shed. "
        "Cooling takes about forty minutes on a winter night.",
    ),
    (
        "/posts/bread/",
        "Weekday Sourdough",
        "My sourdough starter is called Brenda. I feed her rye flour every evening. "
        "The dough is 75% hydration. I bake at 250°C in a Dutch oven.",
    ),
    (
        "/posts/bike/",
        "Coast to Coast",
        "We rode from Whitehaven to Sunderland in three days. The B&B in Penrith cost £95 for the night. "
        "My moving time was 11 hours 40 minutes.",
    ),
]


def _chunks() -> pd.DataFrame:
    rows = [
        {"chunk_id": f"c{n}", "url": URL + path, "title": title, "chunk_index": 0, "text": text, "n_tokens": 60}
        for n, (path, title, text) in enumerate(PAGES)
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def make_bot(tmp_path):
    chunks = _chunks()

    def make(rag: dict | None = None, chat: FakeChat | None = None) -> RagBot:
        settings = parse_settings({"rag": {"top_k": 2, "temperature": 0, **(rag or {})}})
        embedder = FakeEmbedder(settings.models.embedding)
        frame, _ = embed_chunks(chunks, embedder, None)
        write_index(
            tmp_path / "index",
            stack_vectors(frame, embedder.dim),
            frame["chunk_id"].tolist(),
            embedder.identity,
            50_000,
            16,
        )
        index = load_index(tmp_path / "index", embedder.identity)
        return RagBot(settings, embedder, index, chunks, chat or FakeChat(settings.models.chat))

    return make


def test_sentence_context_sends_the_best_sentences_labelled_by_page_and_reports_the_chunks_used(make_bot):
    chat = FakeChat(parse_settings({}).models.chat)
    bot = make_bot({"context": "sentences", "context_sentences": 1, "context_neighbours": 1}, chat)
    answer = bot.ask("How much did the Telrad finder cost you?")
    prompt = chat.calls[0][0][-1]["content"]
    assert (
        'From "Two Years with a Dobsonian":\nThe mirror is 200 mm across. The Telrad finder cost me £40 and it was '
        "the best upgrade I made. I keep it in the shed." in prompt
    )
    assert "I bought the telescope second-hand" not in prompt  # not a neighbour
    assert "Brenda" not in prompt and "Penrith" not in prompt  # the other retrieved chunk gave no sentence
    assert prompt.startswith("Use the following pieces of context")  # the configured (original) prompt
    assert [s.url for s in answer.sources] == [URL + "/posts/telescope/"]
    assert answer.context in prompt
    assert "£40" in answer.answer  # the fake model answers with the context's best matching sentence


def test_chunk_context_sends_the_whole_retrieved_chunks(make_bot):
    chat = FakeChat(parse_settings({}).models.chat)
    bot = make_bot({"context": "chunks"}, chat)
    answer = bot.ask("How much did the Telrad finder cost you?")
    prompt = chat.calls[0][0][-1]["content"]
    assert PAGES[0][2] in prompt  # the whole chunk, as the original
    assert len(answer.sources) == 2 and answer.sources[0].url == URL + "/posts/telescope/"


class _WrongFirstIndex:
    """A vector index that ranks the bread chunk first whatever the question (dense retrieval gone wrong)."""

    def __init__(self, order):
        self.order = order

    def search(self, vector, k):
        return [[(chunk_id, 0.9 - n / 10) for n, chunk_id in enumerate(self.order[:k])]]


def test_hybrid_retrieval_lifts_the_chunk_with_the_questions_rare_words(make_bot):
    bot = make_bot({"retrieval": "hybrid", "top_k": 3})
    bot.index = _WrongFirstIndex(["c1", "c0", "c2"])
    assert bot.retrieve("How much was the B&B in Penrith?")[0].url == URL + "/posts/bike/"
    dense = make_bot({"retrieval": "dense", "top_k": 3})
    dense.index = _WrongFirstIndex(["c1", "c0", "c2"])
    assert [s.chunk_id for s in dense.retrieve("How much was the B&B in Penrith?")] == ["c1", "c0", "c2"]


def test_extractive_quotes_the_source_sentence_with_title_and_link(make_bot):
    bot = make_bot({"extractive_sentences": 1, "extractive_neighbours": 0, "extractive_min_score": 0.1})
    answer = ExtractiveBot(bot).ask("What is your sourdough starter called?")
    assert answer.answer == (
        "“My sourdough starter is called Brenda.”\n— Weekday Sourdough (http://127.0.0.1:9/posts/bread/)"
    )
    assert answer.model == "extractive" and answer.prompt_tokens == 0
    assert [s.url for s in answer.sources] == [URL + "/posts/bread/"]


def test_extractive_declines_below_the_threshold(make_bot):
    question = "What is your sourdough starter called?"
    sure = make_bot({"extractive_min_score": 0.1})
    assert extractive_answer(sure, question).answer != DECLINE
    picky = make_bot({"extractive_min_score": 0.99})
    declined = extractive_answer(picky, question)
    assert declined.answer == DECLINE == "I am not programmed to answer that."
    assert declined.sources == []


def test_extractive_streams_its_answer_whole(make_bot):
    pieces = []
    answer = ExtractiveBot(make_bot({"extractive_min_score": 0.1})).ask("Who is Brenda?", on_token=pieces.append)
    assert pieces == [answer.answer]


def test_sentence_vectors_are_computed_once_per_text(make_bot):
    bot = make_bot({"context": "sentences"})
    bot.ask("How much did the Telrad finder cost you?")
    encoded = bot.embedder.encoded
    bot.ask("How much did the Telrad finder cost you?")
    assert bot.embedder.encoded == encoded + 1  # only the question again
    assert np.isfinite(bot.sentence_vectors(["I keep it in the shed."])).all()
