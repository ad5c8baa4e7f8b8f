import itertools
import random

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.ingest.chunks import chunk_id, chunk_pages, rag_chunks, rag_chunks_within_token_limit, split_text
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import SettingsResource
from mebot.resources.tokens import count_tokens

WORDS = "the garden railway runs on 45 millimetre track and I rebuilt its 12 points in March 2023 .".split()


def _prose(n_paragraphs: int, words_per_paragraph: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(words_per_paragraph)) for _ in range(n_paragraphs))


@pytest.mark.parametrize(
    ("text", "chunk_tokens", "overlap"),
    [
        (_prose(30, 120), 900, 100),
        (_prose(30, 120), 250, 0),
        (_prose(3, 2000), 300, 50),  # paragraphs far longer than a chunk
        ("x" * 20000, 100, 10),  # no separators at all
        ("混合テキスト、日本語と English words. " * 300, 200, 20),
    ],
)
def test_split_text_never_exceeds_the_token_limit_and_loses_no_words(text, chunk_tokens, overlap):
    chunks = split_text(text, chunk_tokens, overlap)
    assert chunks and all(0 < count_tokens(c) <= chunk_tokens for c in chunks)
    if " " in text:
        assert set(text.split()) == {w for c in chunks for w in c.split()}


def test_split_text_keeps_short_text_whole_and_cuts_at_paragraphs():
    text = "First paragraph about trains.\n\nSecond paragraph about tomatoes."
    assert split_text(text, 900, 100) == [text]
    long_text = _prose(12, 150)
    first_chunk = split_text(long_text, 300, 0)[0]
    assert long_text.startswith(first_chunk) and long_text[len(first_chunk) : len(first_chunk) + 2] == "\n\n"


def test_overlap_repeats_text_between_neighbouring_chunks():
    with_overlap = split_text(_prose(60, 20, seed=3), 200, 80)
    without = split_text(_prose(60, 20, seed=3), 200, 0)
    assert len(with_overlap) > len(without) > 2
    assert all(b[:60] in a for a, b in itertools.pairwise(with_overlap))
    assert not any(b[:60] in a for a, b in itertools.pairwise(without))


def test_chunk_ids_are_stable_and_depend_on_url_position_and_text():
    assert chunk_id("u", 0, "t") == chunk_id("u", 0, "t")
    assert len({chunk_id("u", 0, "t"), chunk_id("v", 0, "t"), chunk_id("u", 1, "t"), chunk_id("u", 0, "s")}) == 4


def test_chunk_pages_skips_error_and_empty_pages():
    pages = pd.DataFrame(
        {
            "url": ["a", "b", "c"],
            "title": ["A", "", "C"],
            "text": [_prose(10, 200), "", "short text"],
            "status": [200, 404, 200],
        }
    )
    chunks = chunk_pages(pages, 300, 30)
    assert set(chunks["url"]) == {"a", "c"}
    assert chunks.groupby("url")["chunk_index"].apply(list)["a"] == list(range((chunks["url"] == "a").sum()))
    assert chunks["chunk_id"].is_unique


@dg.asset(name="raw_pages")
def fake_raw_pages_source() -> pd.DataFrame:
    return pd.DataFrame({"url": ["https://x/1"], "title": ["One"], "text": [_prose(20, 150)], "status": [200]})


def test_rag_chunks_materializes_with_its_check_and_metadata(tmp_path, make_config):
    config = make_config({"rag": {"chunk_tokens": 300, "overlap_tokens": 30}})
    result = dg.materialize(
        [fake_raw_pages_source, rag_chunks, rag_chunks_within_token_limit],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
        },
    )
    assert result.success
    chunks = pd.read_parquet(tmp_path / "data" / "rag_chunks.parquet")
    assert len(chunks) > 3 and chunks["n_tokens"].max() <= 300
    metadata = result.asset_materializations_for_node("rag_chunks")[0].metadata
    assert metadata["tokens_max"].value <= 300
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["over_limit"].value == 0


@pytest.mark.parametrize(
    ("texts", "tokens", "passed", "figure"),
    [
        (["fine", "fine too"], [120, 300], True, None),
        (["fine", "too long"], [120, 301], False, ("over_limit", 1)),
        (["fine", "   "], [120, 0], False, ("empty", 1)),
        ([], [], False, ("chunks", 0)),
    ],
)
def test_the_chunk_check_fails_on_an_oversized_or_empty_chunk_or_none(make_config, texts, tokens, passed, figure):
    settings = SettingsResource(config_path=str(make_config({"rag": {"chunk_tokens": 300, "overlap_tokens": 30}})))
    chunks = pd.DataFrame({"text": texts, "n_tokens": tokens}, dtype=object).astype({"n_tokens": "int64"})
    result = rag_chunks_within_token_limit(settings=settings, rag_chunks=chunks)
    assert result.passed is passed
    if figure is not None:
        name, value = figure
        assert result.metadata[name].value == value
