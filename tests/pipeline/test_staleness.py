"""Editing a setting makes exactly the assets that read it stale in Dagster; downstream follows once the
re-materialized upstream actually has new data (data versions), which is what keeps recrawls incremental. The
models are the fakes of tests/fakes.py: staleness does not depend on what they answer."""

import contextlib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from mebot.pipeline.definitions import build_definitions
from mebot.pipeline.jobs import INGEST_SELECTION
from mebot.pipeline.run_report import user_error_message
from mebot.resources.settings import DEFAULT_CONFIG_PATH
from tests.fakes import with_fake_models
from tests.helpers import deep_merge
from tests.sites import free_port, write_small_site

FRESH, STALE = StaleStatus.FRESH, StaleStatus.STALE


@contextlib.contextmanager
def _project(root: Path):
    """(instance, make_defs): the whole graph materialized once into a persistent test instance."""
    site = write_small_site(root / "site")
    base = deep_merge(
        yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()),
        # one fixed port for every crawl of the test, so unchanged pages keep their URLs
        {"site": {"local_dir": str(site), "local_port": free_port(), "download_delay": 0}},
    )

    def make_defs(overrides: dict, name: str) -> dg.Definitions:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(base, overrides)))
        return build_definitions(path, data_dir=root / "data")

    with dg.instance_for_test() as instance:
        assert _materialize(instance, make_defs({}, "original")).success
        yield instance, make_defs


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    """Shared by the tests that only read statuses."""
    with _project(tmp_path_factory.mktemp("staleness")) as project:
        yield project


@pytest.fixture
def project(tmp_path):
    """A fresh one for the tests that materialize again."""
    with _project(tmp_path) as project:
        yield project


def _materialize(instance, defs: dg.Definitions, selection=INGEST_SELECTION) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=with_fake_models(defs.resources),
        instance=instance,
        selection=selection,
    )


def _statuses(instance, defs: dg.Definitions) -> dict[str, StaleStatus]:
    resolver = get_stale_status_resolver(instance, list(defs.assets))
    return {
        key.to_user_string(): resolver.get_status(key)
        for a in defs.assets
        for key in a.keys
        if key.to_user_string() in ASSETS
    }


ASSETS = ("raw_pages", "rag_chunks", "chunk_embeddings", "vector_index")


def _only(*stale: str) -> dict[str, StaleStatus]:
    return {name: STALE if name in stale else FRESH for name in ASSETS}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, _only()),
        ({"rag": {"chunk_tokens": 500}}, _only("rag_chunks")),
        ({"site": {"deny": ["post-3"]}}, _only("raw_pages")),
        ({"models": {"embedding": {"window_tokens": 64}}}, _only("chunk_embeddings", "vector_index")),
        ({"rag": {"ivf_nprobe": 4}}, _only("vector_index")),
        ({"rag": {"top_k": 9}}, _only()),
        ({"models": {"chat": {"n_ctx": 2048}}}, _only()),
        ({"persona": {"name": "Somebody"}}, _only()),
        ({"serve": {"port": 8123}}, _only()),
    ],
)
def test_a_settings_edit_makes_exactly_the_assets_that_read_it_stale(materialized, overrides, expected):
    instance, make_defs = materialized
    assert _statuses(instance, make_defs(overrides, "edited")) == expected


def test_downstream_turns_stale_when_the_edited_upstream_produces_new_data(project):
    instance, make_defs = project
    defs = make_defs({"site": {"deny": ["post-3"]}}, "deny")
    assert _materialize(instance, defs, "raw_pages").success
    assert _statuses(instance, defs) == _only("rag_chunks")


def test_downstream_stays_fresh_when_the_edited_upstream_produces_the_same_data(project):
    instance, make_defs = project
    defs = make_defs({"site": {"max_pages": 400}}, "same-data")
    assert _statuses(instance, defs)["raw_pages"] == STALE
    assert _materialize(instance, defs, "raw_pages").success
    assert _statuses(instance, defs) == _only()


def test_an_asset_refuses_to_run_when_the_file_changed_after_loading(materialized):
    instance, make_defs = materialized
    defs = make_defs({"rag": {"chunk_tokens": 600}}, "edited-later")
    config_path = defs.resources["settings"].config_path
    with open(config_path) as handle:
        text = handle.read()
    with open(config_path, "w") as handle:
        handle.write(text.replace("chunk_tokens: 600", "chunk_tokens: 700"))
    result = dg.materialize(
        [*defs.assets],
        resources=with_fake_models(defs.resources),
        instance=instance,
        selection="rag_chunks",
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "changed after the definitions were loaded" in user_error_message(failure.step_failure_data.error)
