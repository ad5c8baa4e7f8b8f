"""`mebot ask --model extractive`: the best sentences quoted with their page, no LLM (full tier: MiniLM)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from mebot.assets.index.embeddings import embed_chunks, stack_vectors
from mebot.resources.embeddings import build_embedder
from mebot.resources.layout import DataLayout
from mebot.resources.settings import Settings
from mebot.resources.vector_index import write_index

pytestmark = pytest.mark.full

URL = "http://127.0.0.1:9/posts/bread/"


@pytest.fixture
def data_dir(tmp_path):
    """A data dir holding rag_chunks and a MiniLM index of two small pages (what `make run` leaves behind)."""
    layout = DataLayout(tmp_path / "data")
    chunks = pd.DataFrame(
        {
            "chunk_id": ["c-bread", "c-bike"],
            "url": [URL, "http://127.0.0.1:9/posts/bike/"],
            "title": ["Weekday Sourdough", "Coast to Coast"],
            "chunk_index": [0, 0],
            "text": [
                "I bake on Wednesdays. My sourdough starter is called Brenda. She lives in the fridge.",
                "We rode from Whitehaven to Sunderland in three days. The B&B in Penrith cost £95.",
            ],
            "n_tokens": [20, 20],
        }
    )
    layout.asset("rag_chunks").parent.mkdir(parents=True, exist_ok=True)
    chunks.to_parquet(layout.asset("rag_chunks"), index=False)
    embedder = build_embedder(Settings().models.embedding)
    frame, _ = embed_chunks(chunks, embedder, None)
    write_index(
        layout.index_dir, stack_vectors(frame, embedder.dim), frame["chunk_id"].tolist(), embedder.identity, 50_000, 16
    )
    return layout.root


def _ask(data_dir, *arguments):
    env = {**os.environ, "MEBOT_DATA_DIR": str(data_dir), "MEBOT_DAGSTER_HOME": str(data_dir.parent / "home")}
    return subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "ask", "--model", "extractive", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_mebot_ask_extractive_quotes_the_sentence_with_its_page(data_dir):
    asked = _ask(data_dir, "--json", "What is your sourdough starter called?")
    assert asked.returncode == 0, asked.stderr[-3000:]
    reply = json.loads(asked.stdout)
    assert "“I bake on Wednesdays. My sourdough starter is called Brenda. She lives in the fridge.”" in reply["answer"]
    assert f"— Weekday Sourdough ({URL})" in reply["answer"]
    assert [s["url"] for s in reply["sources"]] == [URL]


def test_mebot_ask_extractive_declines_what_the_site_does_not_say(data_dir):
    asked = _ask(data_dir, "What's your phone number?")
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert asked.stdout.strip() == "I am not programmed to answer that."
