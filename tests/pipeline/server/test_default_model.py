"""The served default (serve.default_model) chosen by measurement: `best` is the served model (rag, extractive,
fine-tuned) with the highest serve.default_metric, by the served release's golden figures or else the leaderboard;
/v1/models marks it and says why, /api without a model answers with it and names it, the page preselects it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest

from mebot.pipeline.server.models import ModelChoice, best_model, resolve_default
from mebot.resources.layout import DataLayout
from mebot.resources.settings import SettingsError, parse_settings
from tests.helpers import CHROMIUM, CHROMIUM_ARGS
from tests.pipeline.test_cli_extractive import data_dir  # noqa: F401  (a MiniLM index of two pages)

SERVED = ["rag", "extractive", "ft-e1-b2-lr0.5", "ft-e2-b2-lr1"]
QUESTION = "What is fact 1 about topic 2?"


def board(rows: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": model, **figures} for model, figures in rows.items()])


GOLDEN_BOARD = board(
    {
        "rag": {"golden_fact_accuracy": 0.45, "rougeL_f1": 0.30},
        "extractive": {"golden_fact_accuracy": 0.84, "rougeL_f1": 0.20},
        "e1-b2-lr0.5": {"golden_fact_accuracy": 0.10, "rougeL_f1": 0.25},
        "e2-b2-lr1": {"golden_fact_accuracy": None, "rougeL_f1": 0.40},
    }
)
TIED_BOARD = board(
    {
        "rag": {"golden_fact_accuracy": 0.5, "rougeL_f1": 0.2},
        "extractive": {"golden_fact_accuracy": 0.5, "rougeL_f1": 0.3},
        "e1-b2-lr0.5": {"golden_fact_accuracy": 0.5, "rougeL_f1": 0.3},
    }
)


@pytest.mark.parametrize(
    ("leaderboard", "release", "expected", "reason_has"),
    [
        # the highest golden fact accuracy among the served models, wherever it is in the table
        (GOLDEN_BOARD, None, "extractive", "the highest golden_fact_accuracy in the leaderboard (0.840; 3 of 4"),
        # a tie: the higher ROUGE-L F1, then the served order (extractive before the fine-tuned models)
        (TIED_BOARD, None, "extractive", "3 tied, the higher rougeL_f1 first, then the first served"),
        # the served release's golden figures beat the leaderboard's: they were measured with what is served
        (
            GOLDEN_BOARD,
            {"rag": {"golden_fact_accuracy": 0.9}, "extractive": {"golden_fact_accuracy": 0.8}},
            "rag",
            "in the served release r1's golden figures (0.900",
        ),
        (None, None, "rag", "no leaderboard yet: rag, the first served"),
        (board({"rag": {"rougeL_f1": 0.3}}), None, "rag", "the leaderboard has no golden_fact_accuracy yet: rag"),
        (
            board({"e9-b1-lr1": {"golden_fact_accuracy": 0.9}}),
            None,
            "rag",
            "no served model has a golden_fact_accuracy yet: rag",
        ),
    ],
)
def test_best_is_the_served_model_with_the_highest_metric(leaderboard, release, expected, reason_has):
    best = best_model(SERVED, "golden_fact_accuracy", leaderboard, release, release_id="r1")
    assert best is not None and best.model == expected
    assert reason_has in best.reason


def test_best_by_another_metric():
    assert best_model(SERVED, "rougeL_f1", GOLDEN_BOARD).model == "ft-e2-b2-lr1"


BEST = ModelChoice("extractive", "the highest golden_fact_accuracy in the leaderboard (0.840)")
BEST_FT = ModelChoice("ft-e2-b2-lr1", "the highest golden_fact_accuracy in the leaderboard (0.300)")


@pytest.mark.parametrize(
    ("setting", "best_finetune", "expected", "reason_has"),
    [
        ("best", BEST_FT, "extractive", "the highest golden_fact_accuracy"),
        ("rag", BEST_FT, "rag", "serve.default_model names it"),
        ("ft-e1-b2-lr0.5", BEST_FT, "ft-e1-b2-lr0.5", "serve.default_model names it"),
        ("finetune", BEST_FT, "ft-e2-b2-lr1", "serve.default_model is finetune: the highest"),
        # named but not served (yet): the best, saying so
        ("ft-e9-b1-lr1", BEST_FT, "extractive", "names ft-e9-b1-lr1, which is not served; instead the highest"),
        ("finetune", None, "extractive", "names finetune, which is not served"),
    ],
)
def test_the_default_is_the_named_model_or_the_best(setting, best_finetune, expected, reason_has):
    chosen = resolve_default(setting, SERVED, BEST, best_finetune)
    assert chosen.model == expected and reason_has in chosen.reason


@pytest.mark.parametrize("bad", ["gpt-5", "ft-", "best ", "ft-../etc"])
def test_a_default_model_that_is_not_a_model_is_a_settings_error_naming_it(bad):
    with pytest.raises(SettingsError, match=f"serve.default_model {bad!r} is not a model; write best"):
        parse_settings({"serve": {"default_model": bad}})


# ---------------------------------------------------------------- the server and the page (real index, fake models)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A served index of a small site (real crawl and FAISS, fake models) and a leaderboard on which extractive
    measures far better than rag on the golden questions."""
    from tests.pipeline.server.inprocess import build_index

    built = build_index(tmp_path_factory.mktemp("default-model"))
    GOLDEN_BOARD.iloc[:2].to_parquet(DataLayout(built.data).asset("leaderboard"))
    return built


@pytest.mark.full
def test_models_marks_the_default_api_answers_with_it_and_the_page_preselects_it(built):
    from playwright.sync_api import sync_playwright

    from tests.pipeline.server.inprocess import real_server

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium`")
    with real_server(built, {}) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        listed = http.get("/v1/models").raise_for_status().json()["data"]
        defaults = [entry for entry in listed if entry.get("default")]
        assert [entry["id"] for entry in defaults] == ["extractive"]
        assert "the highest golden_fact_accuracy in the leaderboard (0.840" in defaults[0]["default_chosen_by"]

        body = http.get("/api", params={"query": QUESTION}).raise_for_status().json()
        assert body["model"] == "extractive" and body["sourceDocuments"]  # the model that answered, named
        asked = {"model": "best", "messages": [{"role": "user", "content": QUESTION}]}
        completion = http.post("/v1/chat/completions", json=asked).raise_for_status().json()
        assert completion["model"] == "extractive"  # `best` resolved, never named as the answering model
        named = http.get("/api", params={"query": QUESTION, "model": "qa"}).raise_for_status().json()
        assert named["model"] == "rag"  # a named model still answers

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#model[data-loaded='true']", timeout=30_000)
            assert page.eval_on_selector("#model", "picker => picker.value") == "extractive"
            browser.close()


@pytest.mark.full
def test_the_served_release_figures_decide_over_the_leaderboard(built):
    from mebot.assets.owner.release import index_version_dir
    from mebot.resources.releases import promote, stage_release

    settings = built.settings()
    before = built.registry(settings)
    assert before.default.model == "extractive"  # the leaderboard alone: extractive 0.84, rag 0.45
    releases = DataLayout(built.data).releases_dir
    chunks = pd.read_parquet(DataLayout(built.data).asset("rag_chunks"))
    golden = {"rag": {"golden_fact_accuracy": 0.9}, "extractive": {"golden_fact_accuracy": 0.7}}
    record = {"models": sorted(golden), "golden": golden, "gate": {"passed": True}}
    staged = stage_release(releases, index_version_dir(built.resources["index_store"].index_dir), chunks, record)
    promote(releases, staged.id)
    after = built.registry(settings)
    assert after.default.model == "rag"
    assert f"the served release {staged.id}'s golden figures (0.900" in after.default.reason
    assert after.check("best") == "rag"


@pytest.mark.full
def test_mebot_ask_without_a_model_answers_with_the_served_default(data_dir):  # noqa: F811 (the fixture)
    import os
    import subprocess
    import sys

    GOLDEN_BOARD.iloc[:2].to_parquet(DataLayout(data_dir).asset("leaderboard"))
    env = {**os.environ, "MEBOT_DATA_DIR": str(data_dir), "MEBOT_DAGSTER_HOME": str(data_dir.parent / "home")}
    asked = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "ask", "What is your sourdough starter called?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert "answered by extractive: the highest golden_fact_accuracy in the leaderboard (0.840" in asked.stderr
    assert asked.stdout.startswith("“") and "Brenda" in asked.stdout  # the quote, not a generated answer
