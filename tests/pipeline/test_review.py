"""`mebot release list|rollback` (and `mebot review`, below): the owner's commands, run through `mebot`'s main."""

import json

import numpy as np
import pandas as pd
import pytest

from mebot.pipeline.cli import main
from mebot.resources.layout import DATA_DIR_ENV_VAR, DataLayout
from mebot.resources.releases import promote, read_current_id, stage_release
from mebot.resources.settings import load_settings
from mebot.resources.vector_index import write_index
from tests.helpers import ephemeral_instance


@pytest.fixture
def data(tmp_path, monkeypatch):
    layout = DataLayout(tmp_path / "data")
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(layout.root))
    return layout


def make_releases(data: DataLayout):
    summary = write_index(data.index_dir, np.eye(1, 4, dtype=np.float32), ["a"], "test:4", 10_000, 8)
    version = data.index_dir / summary["version"]
    chunks = pd.DataFrame([{"chunk_id": "a", "text": "x"}])
    good = {"gate": {"passed": True, "failures": []}, "golden": {"rag": {"golden_fact_accuracy": 0.8}}}
    bad = {"gate": {"passed": False, "failures": ["rag fact_accuracy fell 0.700"]}, "golden": {}}
    first = stage_release(data.releases_dir, version, chunks, good)
    second = stage_release(data.releases_dir, version, chunks, good)
    refused = stage_release(data.releases_dir, version, chunks, bad)
    promote(data.releases_dir, first.id)
    promote(data.releases_dir, second.id)
    return first, second, refused


def test_release_list_marks_the_served_one_and_shows_why_one_was_refused(data, capsys):
    first, second, refused = make_releases(data)
    assert main(["release", "list"]) == 0
    out = capsys.readouterr().out
    served = [line for line in out.splitlines() if line.startswith("*")]
    assert len(served) == 1 and second.id in served[0] and "rag 0.80/-" in served[0]
    assert "REFUSED" in next(line for line in out.splitlines() if refused.id in line)
    assert "rag fact_accuracy fell 0.700" in out
    assert main(["release", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["current"], r["passed"]) for r in rows] == [
        (first.id, False, True),
        (second.id, True, True),
        (refused.id, False, False),
    ]


def test_release_rollback_switches_current_and_refuses_bad_ids(data, capsys):
    first, second, refused = make_releases(data)
    assert main(["release", "rollback", first.id]) == 0
    assert read_current_id(data.releases_dir) == first.id
    assert main(["release", "rollback", refused.id]) == 1
    assert "failed golden_no_regression" in capsys.readouterr().err
    assert main(["release", "rollback", "20990101T000000.000000Z-abcdef"]) == 1
    assert read_current_id(data.releases_dir) == first.id


# -------------------------------------------------------------------------------------------- mebot review

GOLDEN = """# My golden questions: comments and order must survive an append.
site: SITE

questions:
  # --- the posts
  - id: fact-one
    question: What is fact 1 about topic 0?
    source: /posts/post-0/
    facts: {any_of: ["fact 1"]}   # kept as written
"""
ASKED = "What is fact 3 about topic 2?"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A served index of a small site (real crawl and FAISS, fake models), a settings file naming a golden file."""
    from tests.helpers import write_settings
    from tests.pipeline.server.inprocess import build_index

    root = tmp_path_factory.mktemp("review")
    built = build_index(root)
    site = load_settings(built.config).site.local_dir
    golden = root / "golden.yaml"
    golden.write_text(GOLDEN.replace("SITE", site), encoding="utf-8")
    config = write_settings(
        root / "review.yaml",
        {"site": load_settings(built.config).site.model_dump(), "eval": {"golden_path": str(golden)}},
    )
    return built, config, golden


def test_a_thumbs_down_becomes_a_golden_question_and_the_golden_assets_go_stale(world, monkeypatch, capsys):
    import dagster as dg
    from starlette.testclient import TestClient

    from mebot.assets.evaluation.golden import load_golden
    from mebot.pipeline.definitions import build_definitions
    from mebot.pipeline.server.app import create_app
    from mebot.pipeline.staleness import Freshness
    from mebot.resources.visitor_log import VisitorLog
    from tests.fakes import with_fake_models

    built, config, golden = world
    monkeypatch.setenv(DATA_DIR_ENV_VAR, str(built.data))
    layout = DataLayout(built.data)
    settings = built.settings({"rate_limit_per_minute": 6000, "rate_limit_burst": 1000})
    # ask -> logged, no address
    with TestClient(create_app(settings, built.registry(settings)), client=("198.51.100.23", 5000)) as http:
        answer_id = http.get("/api", params={"query": ASKED}).json()["id"]
        # thumbs down
        rated = http.post("/api/feedback", json={"id": answer_id, "rating": "down", "comment": "no, it is fact 3"})
        assert rated.status_code == 200
    logged = VisitorLog(layout.visitor_log).read()
    assert logged["id"].tolist() == [answer_id] and logged["rating"].tolist() == ["down"]
    assert b"198.51.100.23" not in layout.visitor_log.read_bytes()
    # -> in review_queue (the day's visitor_questions, then the queue, as the sensor and automation run them)
    defs = build_definitions(config, data_dir=built.data)
    resources = with_fake_models(defs.resources)
    instance = ephemeral_instance()
    day = logged["day"].iloc[0]
    everything = [*defs.assets, *(defs.asset_checks or [])]
    assert dg.materialize(everything, selection=["visitor_questions"], partition_key=day, resources=resources).success
    assert dg.materialize(everything, selection=["review_queue", "golden_questions"], resources=resources,
                          instance=instance).success  # fmt: skip
    assert main(["--config", str(config), "review", "--json"]) == 0
    (item,) = [i for i in json.loads(capsys.readouterr().out) if i["question"] == ASKED]
    assert item["thumbs_down"] == 1 and "thumbs_down" in item["reasons"]
    assert Freshness(instance, defs.resolve_asset_graph()).is_fresh(dg.AssetKey("golden_questions"))
    # -> accepted -> in the golden file, comments and order kept
    before = golden.read_text(encoding="utf-8")
    accept = ["--config", str(config), "review", "accept", item["id"], "--fact", "fact 3", "--source", "/posts/post-2/"]
    assert main(accept) == 0
    assert "now stale" in capsys.readouterr().out
    after = golden.read_text(encoding="utf-8")
    assert after.startswith(before)  # nothing above the new question moved or lost its comment
    questions = load_golden(golden).questions
    assert [q.id for q in questions] == ["fact-one", "what-is-fact-3-about-topic"]
    assert questions[-1].question == ASKED and questions[-1].source == "/posts/post-2/"
    # -> the golden assets are stale
    rebuilt = build_definitions(config, data_dir=built.data)
    freshness = Freshness(instance, rebuilt.resolve_asset_graph())
    assert not freshness.is_fresh(dg.AssetKey("golden_questions"))
    # and the item left the queue
    assert main(["--config", str(config), "review", "--json"]) == 0
    assert ASKED not in [i["question"] for i in json.loads(capsys.readouterr().out)]


def queue_with(data: DataLayout, *questions: str) -> None:
    from mebot.assets.owner.review_queue import build_queue
    from mebot.resources.visitor_log import LoggedAnswer, VisitorLog
    from tests.fakes import FakeEmbedder

    log = VisitorLog(data.visitor_log)
    for question in questions:
        log.log(LoggedAnswer("api", question, "rag", "I am not programmed to answer that.", [], 0.1, declined=True))
    build_queue(log.read(), FakeEmbedder().embed, set()).to_parquet(data.asset("review_queue"), index=False)


def test_unanswerable_and_dismiss(data, tmp_path, make_config, capsys):
    from mebot.assets.evaluation.golden import load_golden

    golden = tmp_path / "golden.yaml"
    golden.write_text(GOLDEN.replace("SITE", "data/sample_site"), encoding="utf-8")
    config = make_config({"eval": {"golden_path": str(golden)}})
    queue_with(data, "What is your salary?", "Do you like cats?")
    assert main(["--config", str(config), "review"]) == 0
    listing = capsys.readouterr().out
    assert "What is your salary?" in listing and "[declined]" in listing
    assert main(["--config", str(config), "review", "--json"]) == 0
    items = {i["question"]: i["id"] for i in json.loads(capsys.readouterr().out)}
    assert main(["--config", str(config), "review", "unanswerable", items["What is your salary?"]]) == 0
    assert main(["--config", str(config), "review", "dismiss", items["Do you like cats?"]]) == 0
    assert "dismissed" in capsys.readouterr().out
    last = load_golden(golden).questions[-1]
    assert last.question == "What is your salary?" and not last.answerable
    assert main(["--config", str(config), "review", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["--config", str(config), "review", "dismiss", items["Do you like cats?"]]) == 1
    assert "no review item" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fact", "x", "--source", "not a path"], "expected a site-relative path"),
        (["--fact", "yes", "--source", "/a/", "--golden-id", "fact-one"], "already has a golden question 'fact-one'"),
        (["--fact", "x", "--source", "/a/", "--golden-id", "bad id!"], "letters, digits"),
    ],
    ids=["bad-source", "taken-id", "bad-id"],
)
def test_an_invalid_golden_question_is_refused_and_the_file_left_as_it_was(data, tmp_path, make_config, capsys,
                                                                          args, message):  # fmt: skip
    golden = tmp_path / "golden.yaml"
    golden.write_text(GOLDEN.replace("SITE", "data/sample_site"), encoding="utf-8")
    config = make_config({"eval": {"golden_path": str(golden)}})
    queue_with(data, "What is your salary?")
    assert main(["--config", str(config), "review", "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert main(["--config", str(config), "review", "accept", item["id"], *args]) == 1
    assert message in capsys.readouterr().err
    assert golden.read_text(encoding="utf-8") == GOLDEN.replace("SITE", "data/sample_site")


def test_review_without_a_queue_says_how_to_make_one(data, capsys):
    assert main(["review"]) == 1
    assert "no review queue yet" in capsys.readouterr().err
