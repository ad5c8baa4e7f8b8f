"""The asset checks fail on bad input, and a failed blocking check stops what depends on it.

Each check has a test where it fails: here `rag_chunks_within_token_limit` and `raw_pages`'s `non_empty`; the
others beside their assets: `no_robots_disallowed_url` and `no_boilerplate_lines` (assets/ingest/test_raw_pages.py),
`training_file_valid` (assets/finetune/test_dataset.py), `judge_validity` (assets/evaluation/test_judge.py)."""

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.ingest.chunks import rag_chunks_within_token_limit
from mebot.assets.ingest.crawl import CrawlError, raw_pages
from mebot.resources.crawler import ScrapyCrawler
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import SettingsResource
from tests.sites import write_small_site

LIMIT = 50
GOOD = {"chunk_id": "c1", "url": "https://x/1", "title": "One", "chunk_index": 0, "text": "Some words.", "n_tokens": 3}


def chunks_source(rows: list[dict]) -> dg.AssetsDefinition:
    @dg.asset(name="rag_chunks")
    def source() -> pd.DataFrame:
        return pd.DataFrame(rows, columns=list(GOOD))

    return source


@dg.asset(deps=["rag_chunks"])
def downstream_of_chunks() -> None:
    """Stands for chunk_embeddings: must not run after a failed blocking check."""


@pytest.mark.parametrize(
    ("rows", "metadata"),
    [
        ([GOOD, GOOD | {"chunk_id": "c2", "n_tokens": LIMIT + 1}], {"over_limit": 1, "max_tokens": LIMIT + 1}),
        ([GOOD, GOOD | {"chunk_id": "c2", "text": "  \n "}], {"empty": 1}),
        ([], {"chunks": 0}),
    ],
    ids=["over-the-limit", "empty-text", "no-chunks"],
)
def test_rag_chunks_check_fails_on_bad_chunks_and_blocks_what_follows(tmp_path, make_config, rows, metadata):
    config = make_config({"rag": {"chunk_tokens": LIMIT, "overlap_tokens": 5}})
    result = dg.materialize(
        [chunks_source(rows), rag_chunks_within_token_limit, downstream_of_chunks],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
        },
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "rag_chunks_within_token_limit" and evaluation.passed is False
    assert {name: evaluation.metadata[name].value for name in metadata} == metadata
    assert not result.success  # blocking: the run fails...
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"rag_chunks"}  # ...and nothing downstream is built


def test_rag_chunks_check_passes_on_good_chunks(tmp_path, make_config):
    """The same materialization with good chunks: the failures above come from the bad rows."""
    config = make_config({"rag": {"chunk_tokens": LIMIT, "overlap_tokens": 5}})
    result = dg.materialize(
        [chunks_source([GOOD]), rag_chunks_within_token_limit, downstream_of_chunks],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
        },
    )
    assert result.success and result.get_asset_check_evaluations()[0].passed


def test_a_crawl_that_keeps_no_page_fails_raw_pages_before_anything_downstream(tmp_path, make_config):
    """`non_empty` cannot report a failure: with no page kept, raw_pages raises (naming the cause) before it
    yields its output or its checks, which blocks the graph at least as hard as the blocking check would."""
    site = write_small_site(tmp_path / "site", posts=1)
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /\n", encoding="utf-8")
    config = make_config({"site": {"local_dir": str(site), "local_port": 0, "download_delay": 0}})

    @dg.asset(deps=["raw_pages"])
    def downstream_of_pages() -> None:
        """Stands for rag_chunks."""

    result = dg.materialize(
        [raw_pages, downstream_of_pages],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
            "crawler": ScrapyCrawler(),
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_pages"
    error = failure.event_specific_data.error
    cause = error.cause or error
    assert cause.cls_name == CrawlError.__name__
    assert "robots" in cause.message.lower()
    assert not result.get_asset_materialization_events()
    assert not result.get_asset_check_evaluations()
