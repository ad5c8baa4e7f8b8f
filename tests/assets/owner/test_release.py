"""`release` and its blocking check `golden_no_regression`: the first run makes the first release; a recrawl whose
extraction is broken (the menu caught as content) drops the golden figures, is refused, and the server keeps
answering from the release it had. Contract: golden_summary is a fake here (the golden scores as numbers); the
index is a real FAISS index, the chunks real Parquet, the server's registry the real one."""

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from mebot.assets.owner.release import GATE_COLUMNS, golden_figures, golden_gate, release
from mebot.pipeline.run_report import summary_lines
from mebot.pipeline.server.app import create_app
from mebot.pipeline.server.models import ModelRegistry
from mebot.resources.layout import DataLayout
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.releases import ReleaseStore, list_releases, read_current_id, rollback
from mebot.resources.settings import Settings, SettingsResource, load_settings
from mebot.resources.vector_index import VectorIndexResource, write_index
from tests.fakes import FakeEmbedder, fake_model_resources

GOOD_PAGES = [
    ("https://me.test/about/", "My favourite film is Apollo 13 and I watch it every winter."),
    ("https://me.test/bikes/", "I rode 6,412 km on my bikes in 2022, mostly on the Ribble."),
]
BROKEN_PAGES = [  # the content selector now catches the site's menu, on every page
    ("https://me.test/about/", "Home About Posts Contact Subscribe Search"),
    ("https://me.test/bikes/", "Home About Posts Contact Subscribe Search"),
]
QUESTION = "What is your favourite film?"


def chunks_of(pages: list[tuple[str, str]]) -> pd.DataFrame:
    rows = [
        {
            "chunk_id": f"c{i}-{hash(text) & 0xFFFF}",
            "url": url,
            "title": url,
            "chunk_index": 0,
            "text": text,
            "n_tokens": len(text.split()),
        }
        for i, (url, text) in enumerate(pages)
    ]
    return pd.DataFrame(rows)


def world(pages: list[tuple[str, str]], fact_accuracy: float, refusal_accuracy: float) -> list[dg.AssetsDefinition]:
    """Stand-ins for the crawl, index and golden evaluation of one recrawl: the chunks of `pages`, a real FAISS
    index of them, and golden_summary figures for `rag`."""
    chunks = chunks_of(pages)

    @dg.asset(name="rag_chunks")
    def rag_chunks() -> pd.DataFrame:
        return chunks

    @dg.asset(name="vector_index", deps=["rag_chunks"])
    def vector_index(index_store: VectorIndexResource) -> None:
        embedder = FakeEmbedder(Settings().models.embedding)
        vectors = embedder.embed(chunks["text"].tolist()).astype(np.float32)
        write_index(index_store.index_dir, vectors, chunks["chunk_id"].tolist(), embedder.identity, 10_000, 8)

    @dg.asset(name="golden_summary")
    def golden_summary() -> pd.DataFrame:
        return pd.DataFrame(
            [{"model": "rag", "golden_fact_accuracy": fact_accuracy, "golden_refusal_accuracy": refusal_accuracy}]
        )

    return [rag_chunks, vector_index, golden_summary, release]


@pytest.fixture
def setup(tmp_path, make_config):
    config = make_config({"serve": {"release": {"max_drop": 0.05}}})
    data = DataLayout(tmp_path / "data")
    resources = {
        "settings": SettingsResource(config_path=str(config)),
        "io_manager": ParquetIOManagerFactory(base_dir=str(data.root)),
        "index_store": VectorIndexResource(index_dir=str(data.index_dir)),
        "release_store": ReleaseStore(releases_dir=str(data.releases_dir)),
    }
    return config, data, resources


def served_answer(config, data: DataLayout) -> tuple[str, list[str]]:
    resources = {
        **fake_model_resources(data.cache_dir),
        "index_store": VectorIndexResource(index_dir=str(data.index_dir)),
    }
    registry = ModelRegistry(load_settings(config), resources, data.root)
    registry.refresh()
    reply = registry.answer("rag", QUESTION)
    return reply.text, [s.url for s in reply.sources]


def test_a_broken_recrawl_is_refused_and_the_served_answers_stay(setup):
    config, data, resources = setup
    first = dg.materialize(world(GOOD_PAGES, 0.8, 1.0), resources=resources)
    assert first.success
    first_release = read_current_id(data.releases_dir)
    assert first_release is not None  # the first run makes the first release
    (check,) = first.get_asset_check_evaluations()
    assert check.check_name == "golden_no_regression" and check.passed
    before = served_answer(config, data)
    assert "Apollo 13" in before[0]

    broken = dg.materialize(world(BROKEN_PAGES, 0.1, 1.0), resources=resources, raise_on_error=False)

    assert not broken.success  # blocking: the run fails
    (check,) = broken.get_asset_check_evaluations()
    assert check.passed is False
    assert math.isclose(check.metadata["drop[rag.golden_fact_accuracy]"].value, 0.7)
    assert "rag fact_accuracy fell 0.700" in check.metadata["drops"].value
    assert read_current_id(data.releases_dir) == first_release  # CURRENT unchanged
    assert served_answer(config, data) == before  # the served answer unchanged, though the newest index is broken
    assert [r.gate_passed for r in list_releases(data.releases_dir)] == [True, False]  # the refused one is kept
    assert any(
        "golden_no_regression FAILED" in line and "rag fact_accuracy fell 0.700" in line
        for line in summary_lines(broken)
    )


def test_a_release_within_the_allowed_drop_is_promoted_and_served(setup):
    config, data, resources = setup
    assert dg.materialize(world(GOOD_PAGES, 0.8, 1.0), resources=resources).success
    first_release = read_current_id(data.releases_dir)
    changed = [GOOD_PAGES[0], ("https://me.test/bikes/", "I rode 7,000 km on my bikes in 2023.")]
    assert dg.materialize(world(changed, 0.76, 1.0), resources=resources).success
    assert read_current_id(data.releases_dir) not in (None, first_release)
    chunks = pd.read_parquet(data.releases_dir / read_current_id(data.releases_dir) / "rag_chunks.parquet")
    assert "I rode 7,000 km on my bikes in 2023." in chunks["text"].tolist()


@pytest.mark.parametrize(
    ("candidate", "current", "passed", "failed_metrics"),
    [
        ({"rag": {"golden_fact_accuracy": 0.5}}, None, True, []),  # the first release
        ({"rag": {"golden_fact_accuracy": 0.75}}, {"rag": {"golden_fact_accuracy": 0.8}}, True, []),
        (
            {"rag": {"golden_fact_accuracy": 0.74}},
            {"rag": {"golden_fact_accuracy": 0.8}},
            False,
            ["rag.golden_fact_accuracy"],
        ),
        (
            {"rag": {"golden_fact_accuracy": 0.9, "golden_refusal_accuracy": 0.5}},
            {"rag": {"golden_fact_accuracy": 0.8, "golden_refusal_accuracy": 1.0}},
            False,
            ["rag.golden_refusal_accuracy"],
        ),
        (
            {"rag": {"golden_fact_accuracy": 0.8}},
            {"rag": {"golden_fact_accuracy": 0.8}, "ft-a": {"golden_fact_accuracy": 1.0}},
            True,
            [],
        ),
        ({"rag": {}}, {"rag": {"golden_fact_accuracy": 0.8}}, False, ["rag.golden_fact_accuracy"]),  # unmeasured
        ({}, {"rag": {"golden_fact_accuracy": 0.8}}, False, ["rag.golden_fact_accuracy"]),  # golden pages lost
        (
            {"rag": {"golden_fact_accuracy": 0.8}, "ft-a": {"golden_fact_accuracy": 0.2}},
            {"rag": {"golden_fact_accuracy": 0.8}, "ft-a": {"golden_fact_accuracy": 0.6}},
            False,
            ["ft-a.golden_fact_accuracy"],
        ),
    ],
    ids=["first", "within", "beyond", "refusals", "model-gone", "not-measured", "nothing-measured", "one-of-two"],
)
def test_golden_gate(candidate, current, passed, failed_metrics):
    gate = golden_gate(candidate, current, max_drop=0.05)
    assert gate.passed is passed
    assert list(gate.rows.columns) == GATE_COLUMNS
    failed = [f"{r.model}.{r.metric}" for r in gate.rows.itertuples() if not r.passed]
    assert failed == failed_metrics


def test_golden_figures_leave_out_what_was_not_counted():
    summary = pd.DataFrame([{"model": "rag", "golden_fact_accuracy": 0.5, "golden_refusal_accuracy": float("nan")}])
    assert golden_figures(summary) == {"rag": {"golden_fact_accuracy": 0.5}}
    assert golden_figures(pd.DataFrame()) == {}


def test_the_definitions_snapshot_has_golden_no_regression_as_a_blocking_check():
    snapshot = json.loads((Path(__file__).parents[2] / "pipeline" / "snapshots" / "definitions.json").read_text())
    assert snapshot["checks"]["release:golden_no_regression"]["blocking"] is True


def test_the_server_reloads_on_a_new_release_not_on_a_new_index(setup):
    config, data, resources = setup
    assert dg.materialize(world(GOOD_PAGES, 0.8, 1.0), resources=resources).success
    first_release = read_current_id(data.releases_dir)
    registry_resources = {
        **fake_model_resources(data.cache_dir),
        "index_store": VectorIndexResource(index_dir=str(data.index_dir)),
    }
    registry = ModelRegistry(load_settings(config), registry_resources, data.root)
    assert registry.refresh() and registry.bot.chunks["text"].tolist() == [text for _, text in GOOD_PAGES]
    # a new index (and chunks) that no release holds yet: still the release
    dg.materialize(world(BROKEN_PAGES, 0.8, 1.0)[:2], resources=resources)
    assert registry.refresh() is False
    # a new release: swapped in
    changed = [GOOD_PAGES[0], ("https://me.test/bikes/", "I rode 7,000 km on my bikes in 2023.")]
    assert dg.materialize(world(changed, 0.8, 1.0), resources=resources).success
    assert registry.refresh() is True
    assert "I rode 7,000 km on my bikes in 2023." in registry.bot.chunks["text"].tolist()
    # a rollback: the first release again, which /healthz names
    rollback(data.releases_dir, first_release)
    assert registry.refresh() is True
    assert registry.bot.chunks["text"].tolist() == [text for _, text in GOOD_PAGES]
    with TestClient(create_app(load_settings(config), registry)) as http:
        assert http.get("/healthz").json()["release"] == first_release
