"""A recrawl whose extraction breaks (a theme change: the content selector now catches the footer) through the real
graph: the real crawl of a small site over HTTP, chunks, FAISS index, golden answers and scores, golden_summary and
release, with the fake chat and embedding models (tests/fakes.py). The golden fact accuracy falls, the release is
refused, data/releases/CURRENT and the answers the server gives stay as they were."""

import dagster as dg
import pandas as pd
import pytest

from mebot.pipeline.definitions import build_definitions
from mebot.pipeline.server.models import ModelRegistry
from mebot.resources.layout import DataLayout
from mebot.resources.releases import read_current_id
from mebot.resources.settings import load_settings
from tests.fakes import with_fake_models
from tests.helpers import ephemeral_instance, write_settings
from tests.sites import write_small_site

GOLDEN = """site: {site}
questions:
  - id: topic-2-number
    question: What is the number for topic 2 paragraph 0?
    source: /posts/post-2/
    facts: [1000]
  - id: topic-3-number
    question: What is the number for topic 3 paragraph 0?
    source: /posts/post-3/
    facts: [1000]
"""
QUESTION = "What is the number for topic 2 paragraph 0?"


def run_graph(config, data, instance) -> dg.ExecuteInProcessResult:
    """As `mebot run` would: the crawl to golden_questions, the rag model's golden answers and scores, then the
    summary and the release."""
    defs = build_definitions(config, data_dir=data)
    resources = with_fake_models(defs.resources)
    everything = [*defs.assets, *(defs.asset_checks or [])]

    def run(selection, partition=None):
        return dg.materialize(everything, selection=selection, partition_key=partition, resources=resources,
                              instance=instance, raise_on_error=False)  # fmt: skip

    first = run(dg.AssetSelection.groups("ingest", "index") | dg.AssetSelection.assets("golden_questions"))
    assert first.success
    assert run(["golden_answers", "golden_scores"], "rag").success
    return run(["golden_summary", "release"])


def served(config, data: DataLayout, resources) -> str:
    registry = ModelRegistry(load_settings(config), resources, data.root)
    registry.refresh()
    return registry.answer("rag", QUESTION).text


@pytest.mark.parametrize(
    ("broken", "failure"),
    [
        # each page's title alone: the pages are there, the facts are not
        ({"content_selectors": ["h1"], "drop_selectors": []}, "rag fact_accuracy fell 1.000"),
        # the same footer on every page: deduplicated to one chunk, the golden pages gone, nothing measured
        ({"content_selectors": [".site-footer"], "drop_selectors": []}, "rag fact_accuracy not measured"),
    ],
    ids=["titles-only", "footer-only"],
)
def test_a_recrawl_with_broken_extraction_is_refused_and_visitors_keep_the_release(tmp_path, broken, failure):
    site = write_small_site(tmp_path / "site", posts=4)
    golden = tmp_path / "golden.yaml"
    golden.write_text(GOLDEN.format(site=site), encoding="utf-8")
    settings = {
        "site": {"local_dir": str(site), "local_port": 0, "download_delay": 0},
        "eval": {"golden_path": str(golden)},
        "finetune": {"sweep": {}},
    }
    config = write_settings(tmp_path / "mebot.yaml", settings)
    data = DataLayout(tmp_path / "data")
    instance = ephemeral_instance()
    good = run_graph(config, data.root, instance)
    assert good.success
    first_release = read_current_id(data.releases_dir)
    resources = with_fake_models(build_definitions(config, data_dir=data.root).resources)
    before = served(config, data, resources)
    assert "1000" in before

    write_settings(config, {**settings, "site": {**settings["site"], **broken}})
    recrawl = run_graph(config, data.root, instance)

    assert not recrawl.success
    (check,) = [c for c in recrawl.get_asset_check_evaluations() if c.check_name == "golden_no_regression"]
    assert check.passed is False
    assert check.metadata["drop[rag.golden_fact_accuracy]"].value == pytest.approx(1.0)
    assert failure in check.metadata["drops"].value
    assert read_current_id(data.releases_dir) == first_release
    assert not pd.read_parquet(data.asset("rag_chunks"))["text"].str.contains("1000").any()  # the newest: broken
    assert served(config, data, resources) == before
