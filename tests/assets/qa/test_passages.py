"""qa_chunks: the relevance filter (boilerplate, short passages, error pages), the passage (chunk or its longest
paragraph), and the asset's metadata and errors."""

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.ingest.chunks import chunk_id
from mebot.assets.qa.passages import NoPassagesError, build_qa_chunks, explain_no_passages, longest_paragraph, qa_chunks
from mebot.resources.settings import QaSettings
from mebot.resources.tokens import count_tokens

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


def test_qa_chunks_asset_reports_kept_and_dropped(qa_resources, tmp_path, make_config):
    pages = _pages(("https://x/bread", "Bread", BODY, 200), ("https://x/r", "R", RELATED, 200))
    result = dg.materialize([_raw_pages_asset(pages), qa_chunks], resources=qa_resources(make_config()))
    assert result.success
    metadata = result.asset_materializations_for_node("qa_chunks")[0].metadata
    assert metadata["kept"].value == 1
    assert metadata["dropped"].value == {"boilerplate": 1, "too_short": 0}
    assert "Brenda" in metadata["passages_preview"].value
    stored = pd.read_parquet(tmp_path / "data" / "qa_chunks.parquet")
    assert list(stored.columns[:2]) == ["chunk_id", "url"] and {"title", "passage", "n_tokens"} <= set(stored)


def test_qa_chunks_errors_clearly_when_the_filter_leaves_nothing(qa_resources, tmp_path, make_config):
    pages = _pages(("https://x/short", "S", "Thanks for reading!", 200), ("https://x/r", "R", RELATED, 200))
    with pytest.raises(NoPassagesError, match=r"qa\.min_tokens = 20.*qa\.drop_patterns"):
        dg.materialize([_raw_pages_asset(pages), qa_chunks], resources=qa_resources(make_config()))


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
