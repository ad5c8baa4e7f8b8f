"""A golden file belongs to a site (assets/evaluation/golden_site.py): its `site:`, the checks against the crawl, the
golden assets skipping another site's file with a note, `mebot check-config`'s warning, and a leaderboard without
golden columns when there are no golden figures."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.evaluation.golden import QUESTION_COLUMNS, SCORE_COLUMNS, GoldenFileError, load_golden
from mebot.assets.evaluation.golden_assets import GOLDEN_ANSWER_COLUMNS, GOLDEN_SUMMARY_COLUMNS
from mebot.assets.evaluation.golden_site import golden_file_warning, golden_site_mismatch, sources_not_crawled
from mebot.assets.evaluation.leaderboard import GOLDEN_COLUMNS, leaderboard_table
from mebot.resources.settings import PROJECT_ROOT, EvalSettings, load_settings
from tests.assets.evaluation.test_golden_assets import GOLDEN_YAML, everything, fake_resources, graph, write_inputs
from tests.assets.evaluation.world import OVERRIDES, RAG, write_config
from tests.helpers import SAMPLE_GOLDEN, ephemeral_instance

# ------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("site", "start_urls", "local_dir", "matches"),
    [
        ("https://blog.example.com/", ["https://blog.example.com/posts/"], "data/sample_site", True),
        ("blog.example.com", ["https://www.blog.example.com/"], "data/sample_site", True),  # www. ignored
        ("http://blog.example.com:8080/x", ["https://blog.example.com/"], "data/sample_site", True),
        ("https://other.example.org/", ["https://blog.example.com/"], "data/sample_site", False),
        ("data/sample_site", ["https://blog.example.com/"], "data/sample_site", False),  # a folder, but a URL crawl
        ("data/sample_site", [], "data/sample_site", True),
        ("./data/sample_site/", [], "data/sample_site", True),
        ("data/other_site", [], "data/sample_site", False),
        ("https://blog.example.com/", [], "data/sample_site", False),  # a host, but the local folder is crawled
        (None, ["https://blog.example.com/"], "data/sample_site", True),  # names no site: nothing to check
    ],
)
def test_golden_site_mismatch(site, start_urls, local_dir, matches):
    reason = golden_site_mismatch(site, start_urls, local_dir, PROJECT_ROOT)
    assert (reason is None) == matches
    if not matches:
        assert repr(site) in reason and "the crawl is of" in reason


def test_sources_not_crawled_only_when_no_source_page_was(tmp_path):
    golden_file = tmp_path / "g.yaml"
    golden_file.write_text(GOLDEN_YAML, encoding="utf-8")
    golden = load_golden(golden_file)
    assert sources_not_crawled(golden, ["http://127.0.0.1:9/posts/sourdough/", "http://127.0.0.1:9/"]) is None
    assert sources_not_crawled(golden, ["https://x.example/posts/sourdough/index.html"]) is None  # same page
    reason = sources_not_crawled(golden, ["http://127.0.0.1:9/posts/other/"])
    assert reason == "none of its 3 source pages was crawled (1 pages were)"


def test_the_sample_golden_file_names_its_folder_and_an_unknown_top_key_is_still_refused(tmp_path):
    assert load_golden(SAMPLE_GOLDEN).site == "data/sample_site"
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: x.example\nowner: me\n" + GOLDEN_YAML, encoding="utf-8")
    with pytest.raises(GoldenFileError, match=r"line 2, owner: unknown key; expected one of questions, site"):
        load_golden(bad)
    empty_site = tmp_path / "empty.yaml"
    empty_site.write_text("site: ''\n" + GOLDEN_YAML, encoding="utf-8")
    with pytest.raises(GoldenFileError, match=r"line 1, site: expected non-empty text"):
        load_golden(empty_site)


def _settings_with(tmp_path: Path, golden_text: str, start_urls: list[str]):
    golden = tmp_path / "golden.yaml"
    golden.write_text(golden_text, encoding="utf-8")
    overrides = OVERRIDES | {
        "eval": OVERRIDES["eval"] | {"golden_path": str(golden)},
        "site": {"start_urls": start_urls},
    }
    return write_config(tmp_path, overrides)


@pytest.mark.parametrize(
    ("golden_text", "start_urls", "expected"),
    [
        ("site: data/sample_site\n" + GOLDEN_YAML, [], None),
        ("site: https://blog.example.com/\n" + GOLDEN_YAML, ["https://blog.example.com/"], None),
        ("site: data/sample_site\n" + GOLDEN_YAML, ["https://blog.example.com/"], "golden questions skipped"),
        (GOLDEN_YAML, [], "names no site"),
        ("questions: []\n", [], "expected a non-empty list of questions"),
    ],
    ids=["sample-folder", "same-host", "another-site", "no-site", "invalid"],
)
def test_golden_file_warning(tmp_path, golden_text, start_urls, expected):
    warning = golden_file_warning(load_settings(_settings_with(tmp_path, golden_text, start_urls)))
    assert warning is None if expected is None else expected in warning


@pytest.mark.full  # a `mebot` process (imports Dagster)
def test_check_config_warns_about_a_golden_file_of_another_site(tmp_path):
    config = _settings_with(tmp_path, "site: data/sample_site\n" + GOLDEN_YAML, ["https://blog.example.com/"])
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"start_urls"' in result.stdout
    assert "warning: eval.golden_path:" in result.stderr
    assert "names the site 'data/sample_site', but the crawl is of https://blog.example.com/" in result.stderr


# ------------------------------------------------------------------------------------------------ the assets


def _materialize_golden(tmp_path: Path, golden_text: str) -> dict[str, dg.ExecuteInProcessResult]:
    config = _settings_with(tmp_path, golden_text, [])
    data = tmp_path / "data"
    write_inputs(tmp_path, data)  # no index: a model asked anything would fail, so none may be asked
    assets = graph(load_settings(config))
    resources, instance = fake_resources(config, data), ephemeral_instance()
    defs = everything(assets)
    results = {
        "questions": dg.materialize(
            defs, selection=[assets["golden_questions"]], resources=resources, instance=instance
        )
    }
    results["rag"] = dg.materialize(
        defs,
        selection=[assets["golden_answers"], assets["golden_scores"]],
        partition_key=RAG,
        resources=resources,
        instance=instance,
    )
    results["summary"] = dg.materialize(
        defs, selection=[assets["golden_summary"]], resources=resources, instance=instance
    )
    return results


def _note(result: dg.ExecuteInProcessResult, name: str) -> str:
    (event,) = result.asset_materializations_for_node(name)
    return event.metadata["note"].value


def test_a_golden_file_of_another_site_is_skipped_with_a_note_and_no_model_is_asked(tmp_path):
    results = _materialize_golden(tmp_path, "site: https://other.example.org/\n" + GOLDEN_YAML)
    for run, name, columns in [
        ("questions", "golden_questions", QUESTION_COLUMNS),
        ("rag", "golden_answers", GOLDEN_ANSWER_COLUMNS),
        ("rag", "golden_scores", SCORE_COLUMNS),
        ("summary", "golden_summary", GOLDEN_SUMMARY_COLUMNS),
    ]:
        assert results[run].success
        frame = results[run].output_for_node(name)
        assert frame.empty and list(frame.columns) == columns, name
    note = _note(results["questions"], "golden_questions")
    assert "golden questions skipped" in note and "'https://other.example.org/'" in note
    assert "the local folder data/sample_site" in note and "eval.golden_path" in note


def test_a_golden_file_whose_source_pages_were_not_crawled_is_skipped_by_golden_answers(tmp_path):
    elsewhere = GOLDEN_YAML.replace("source: /posts/", "source: /elsewhere/")
    results = _materialize_golden(tmp_path, "site: data/sample_site\n" + elsewhere)
    assert len(results["questions"].output_for_node("golden_questions")) == 4  # the site matches
    assert results["rag"].success
    assert results["rag"].output_for_node("golden_answers").empty
    assert "none of its 3 source pages was crawled" in _note(results["rag"], "golden_answers")
    assert results["rag"].output_for_node("golden_scores").empty  # not scored as 4 wrong answers
    assert results["summary"].output_for_node("golden_summary").empty


# ---------------------------------------------------------------------------------------------- leaderboard


def test_the_leaderboard_has_golden_columns_only_with_golden_figures():
    scores = pd.DataFrame({"qa_id": ["q1", "q2"], "model": ["rag", "rag"], "answered": [True, True]})
    scores["rouge1_f1"] = [0.5, 0.7]
    without, _ = leaderboard_table(scores, EvalSettings(bootstrap_resamples=20), models=["rag"])
    assert not [c for c in without.columns if "golden" in c]
    figures = {column: 0.5 for column in GOLDEN_COLUMNS}
    with_golden, _ = leaderboard_table(
        scores, EvalSettings(bootstrap_resamples=20), models=["rag"], golden={"rag": figures}
    )
    assert set(GOLDEN_COLUMNS) <= set(with_golden.columns)
    assert with_golden.loc[0, "golden_fact_accuracy"] == 0.5
