"""visitor_questions (a day of the visitor log) and review_queue (the questions worth the owner's time: declined,
thumbs-down, ungrounded, weak evidence; near-duplicates merged by embedding similarity; most asked first), through
`dg.materialize` over a real SQLite log, and the visitor_log sensor that keeps them fresh. Embeddings: the fake
embedder of tests/fakes.py (bag of words: the same words in another order embed the same)."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mebot.assets.owner.review_queue import QUEUE_COLUMNS, build_queue, group_near_duplicates, review_queue
from mebot.assets.owner.visitor import VISITOR_PARTITIONS, visitor_questions
from mebot.pipeline.jobs import visitor_log_sensor
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import SettingsResource
from mebot.resources.visitor_log import LoggedAnswer, VisitorLog, VisitorLogResource
from tests.fakes import FakeEmbedder, FakeEmbedderResource

DAY = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
FILM, FILM_AGAIN = "What is your favourite film?", "Your favourite film is what?"
RIDE = "How far did you ride in 2022?"
CAT = "What is your cat called?"


def ask(log: VisitorLog, question: str, minutes: int = 0, **flags) -> str:
    answer = "I am not programmed to answer that." if flags.get("declined") else "An answer."
    entry = LoggedAnswer("api", question, "rag", answer, ["https://me.test/"], 0.1, **flags)
    return log.log(entry, now=DAY + timedelta(minutes=minutes))


@pytest.fixture
def log(tmp_path) -> VisitorLog:
    log = VisitorLog(tmp_path / "visitors" / "visitor_log.sqlite")
    ask(log, FILM, 1, declined=True)
    ask(log, FILM_AGAIN, 2, declined=True)
    ask(log, FILM, 3, grounded=True)
    down = ask(log, RIDE, 4, grounded=True)
    log.add_feedback(down, "down", "it was 6,412 km", now=DAY + timedelta(minutes=5))
    ask(log, CAT, 6, grounded=True)  # answered well, nobody complained: not worth a look
    ask(log, "Where do you live?", 7, grounded=False)
    return log


def test_the_queue_merges_near_duplicates_ranks_by_how_often_asked_and_leaves_out_good_answers(log):
    queue = build_queue(log.read(), FakeEmbedder().embed, decided=set())
    assert list(queue.columns) == QUEUE_COLUMNS
    assert queue["question"].tolist() == [FILM, RIDE, "Where do you live?"]
    film = queue.iloc[0]
    assert film["asked"] == 3 and film["declined"] == 2 and film["reasons"] == "declined"
    assert set(json.loads(film["wordings_json"])) == {"what is your favourite film?", "your favourite film is what?"}
    ride = queue.iloc[1]
    assert ride["thumbs_down"] == 1 and json.loads(ride["comments_json"]) == ["it was 6,412 km"]
    assert queue.iloc[2]["reasons"] == "ungrounded"
    assert queue["id"].is_unique


def test_decided_wordings_leave_the_queue(log):
    queue = build_queue(log.read(), FakeEmbedder().embed, decided={"your favourite film is what?"})
    assert FILM not in queue["question"].tolist()


@pytest.mark.parametrize(
    ("vectors", "groups"),
    [
        ([[1, 0], [0.99, 0.1], [0, 1]], [0, 0, 1]),
        ([[1, 0], [0.5, 0.5], [0, 1]], [0, 1, 2]),  # cosine 0.71: apart
        ([[0, 0], [1, 0]], [0, 1]),  # an empty vector joins nothing
    ],
)
def test_group_near_duplicates(vectors, groups):
    assert group_near_duplicates(["question"] * len(vectors), np.array(vectors, float), 0.85) == groups


def test_questions_naming_different_numbers_stay_apart_however_similar():
    questions = ["How far did you ride in 2022?", "How far did you ride in 2024?", "how far did you ride in 2022"]
    assert group_near_duplicates(questions, np.ones((3, 4)), 0.85) == [0, 1, 0]


def test_visitor_questions_and_review_queue_materialize_from_the_log(log, tmp_path, make_config):
    resources = {
        "settings": SettingsResource(config_path=str(make_config())),
        "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
        "visitor_log": VisitorLogResource(path=str(log.path)),
        "embedder": FakeEmbedderResource(cache_dir=str(tmp_path / "cache")),
    }
    day = dg.materialize([visitor_questions], resources=resources, partition_key="2026-12-07")
    (event,) = day.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["questions"].value == 6 and metadata["declined"].value == 2
    assert metadata["decline_rate"].value == round(2 / 6, 4)
    assert metadata["thumbs_down_rate"].value == 1.0
    assert RIDE in metadata["questions_table"].value
    assert day.output_for_node("visitor_questions")["comment"].dropna().tolist() == ["it was 6,412 km"]
    queued = dg.materialize([visitor_questions.to_source_asset(), review_queue], resources=resources)
    frame = queued.output_for_node("review_queue")
    assert frame["question"].tolist() == [FILM, RIDE, "Where do you live?"]


def test_the_visitor_log_sensor_refreshes_changed_days_only(log):
    sensor = visitor_log_sensor(log.path, VISITOR_PARTITIONS)
    first = sensor(dg.build_sensor_context(cursor=None))
    assert [r.partition_key for r in first] == ["2026-12-07"]
    cursor = json.dumps(VisitorLog(log.path).fingerprints())
    assert isinstance(sensor(dg.build_sensor_context(cursor=cursor)), dg.SkipReason)
    answer_id = log.read()["id"].iloc[-1]
    log.add_feedback(answer_id, "down")  # feedback on an old answer refreshes that answer's day
    again = sensor(dg.build_sensor_context(cursor=cursor))
    assert [r.partition_key for r in again] == ["2026-12-07"]


def test_an_empty_log_makes_an_empty_queue():
    assert build_queue(pd.DataFrame(), FakeEmbedder().embed, set()).empty
