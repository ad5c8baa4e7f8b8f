"""A recrawl recomputes only what changed: data versions stop staleness (and the automation policy) where content
is the same, and the embedding cache sends only changed text to the model. The embedding model is the fake of
tests/fakes.py: what is tested is what Dagster and the cache do around it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from mebot.pipeline.definitions import build_definitions
from mebot.pipeline.jobs import INGEST_SELECTION
from mebot.resources.embeddings import text_sha256
from tests.fakes import FakeEmbedder, with_fake_models
from tests.sites import facts_paragraphs, free_port, page_html, write_page

RAG_ASSETS = ("raw_pages", "rag_chunks", "chunk_embeddings", "vector_index")
CHANGED_PAGE = "/posts/post-1/"


@dataclass
class Project:
    site: Path
    defs: dg.Definitions
    instance: dg.DagsterInstance
    cursor: object = None

    def materialize(self, selection) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [*self.defs.assets, *self.defs.asset_checks],
            resources=with_fake_models(self.defs.resources),
            instance=self.instance,
            selection=selection,
        )
        assert result.success
        return result

    def statuses(self) -> dict[str, StaleStatus]:
        resolver = get_stale_status_resolver(self.instance, list(self.defs.assets))
        return {name: resolver.get_status(dg.AssetKey(name)) for name in RAG_ASSETS}

    def automation_tick(self) -> set[str]:
        """What Dagster's automation sensor would start now (one tick, continuing from the previous one)."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {
            key.to_user_string()
            for key in self.defs.resolve_asset_graph().get_all_asset_keys()
            if result.get_num_requested(key)
        }

    def latest(self, name: str) -> dg.AssetMaterialization:
        return self.instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization


def _data_version(materialization: dg.AssetMaterialization) -> str:
    return materialization.tags["dagster/data_version"]


@pytest.fixture
def project(site_config, small_site, tmp_path):
    # one fixed port for every crawl of the test, so unchanged pages keep their URLs
    config = site_config({"site": {"local_port": free_port()}})
    defs = build_definitions(config, data_dir=tmp_path / "data")
    with dg.instance_for_test() as instance:
        project = Project(small_site, defs, instance)
        project.materialize(INGEST_SELECTION)
        assert project.automation_tick() == set()  # everything is there: nothing to start
        yield project


def test_a_recrawl_that_finds_nothing_new_leaves_everything_downstream_fresh(project):
    before = _data_version(project.latest("raw_pages"))
    project.materialize("raw_pages")
    assert _data_version(project.latest("raw_pages")) == before
    assert set(project.statuses().values()) == {StaleStatus.FRESH}
    assert project.automation_tick() == set()


def test_one_changed_page_re_embeds_only_its_windows_and_rebuilds_the_index(project, monkeypatch):
    old_embeddings = project.defs.load_asset_value("chunk_embeddings", instance=project.instance)
    old_index = project.latest("vector_index")
    body = facts_paragraphs("topic 1") + "<p>Update: I moved the topic 1 notes to a new notebook in 2025.</p>"
    write_page(project.site, CHANGED_PAGE, page_html(CHANGED_PAGE, "Post 1", body))

    project.materialize("raw_pages")
    assert project.statuses() == {
        "raw_pages": StaleStatus.FRESH,
        "rag_chunks": StaleStatus.STALE,
        "chunk_embeddings": StaleStatus.FRESH,
        "vector_index": StaleStatus.FRESH,
    }
    # the automation policy follows the changed data one step at a time
    assert project.automation_tick() == {"rag_chunks"}
    project.materialize("rag_chunks")
    assert project.automation_tick() == {"chunk_embeddings"}

    encoded: list[str] = []
    encode = FakeEmbedder._encode

    def counting_encode(self, texts):
        encoded.extend(texts)
        return encode(self, texts)

    monkeypatch.setattr(FakeEmbedder, "_encode", counting_encode)
    project.materialize("chunk_embeddings")
    new_embeddings = project.defs.load_asset_value("chunk_embeddings", instance=project.instance)
    chunks = project.defs.load_asset_value("rag_chunks", instance=project.instance)
    new_windows = set(new_embeddings["text_sha256"]) - set(old_embeddings["text_sha256"])
    assert new_windows, "the edit changed no window text"
    assert {text_sha256(text) for text in encoded} == new_windows
    assert len(encoded) == len(new_windows)
    changed_chunks = set(new_embeddings[new_embeddings["text_sha256"].isin(new_windows)]["chunk_id"])
    changed_urls = set(chunks[chunks["chunk_id"].isin(changed_chunks)]["url"])
    assert len(changed_urls) == 1 and changed_urls.pop().endswith(CHANGED_PAGE)
    metadata = project.latest("chunk_embeddings").metadata
    assert metadata["cache_misses"].value == len(new_windows)
    assert metadata["cache_hits"].value == len(new_embeddings) - len(new_windows) > 0

    assert project.automation_tick() == {"vector_index"}
    project.materialize("vector_index")
    new_index = project.latest("vector_index")
    assert new_index.metadata["version"].value != old_index.metadata["version"].value
    assert _data_version(new_index) != _data_version(old_index)
    assert new_index.metadata["vectors"].value == len(new_embeddings)
    assert set(project.statuses().values()) == {StaleStatus.FRESH}
    assert project.automation_tick() == set()
