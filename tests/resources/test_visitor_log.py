"""The visitor log: answers and feedback in SQLite (WAL), safe under concurrent writers and across restarts,
expiring after keep_days, and with no place for an address."""

import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from mebot.resources.visitor_log import ANSWER_COLUMNS, LoggedAnswer, VisitorLog

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


def entry(question: str = "What is your favourite film?", **changes) -> LoggedAnswer:
    fields = {"channel": "api", "question": question, "model": "rag", "answer": "Apollo 13.",
              "source_urls": ["https://me.test/about/"], "latency_s": 0.25} | changes  # fmt: skip
    return LoggedAnswer(**fields)


def test_an_answer_and_its_feedback_are_read_back_after_a_restart(tmp_path):
    path = tmp_path / "visitors" / "visitor_log.sqlite"
    answer_id = VisitorLog(path).log(entry(declined=False, grounded=True), now=NOW)
    assert VisitorLog(path).add_feedback(answer_id, "down", "wrong film", now=NOW)
    rows = VisitorLog(path).read()  # a new instance: what a restarted server or the review assets see
    assert rows.to_dict("records") == [
        {
            "id": answer_id, "asked_at": "2026-12-08T12:00:00+00:00", "day": "2026-12-08", "channel": "api",
            "question": "What is your favourite film?", "model": "rag", "answer": "Apollo 13.",
            "sources_json": '["https://me.test/about/"]', "latency_s": 0.25, "declined": 0, "grounded": 1,
            "weak_evidence": 0, "release_id": None, "rating": "down", "comment": "wrong film",
        }
    ]  # fmt: skip
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_no_column_could_hold_an_address_or_user_agent():
    assert not {"ip", "address", "client", "user_agent", "headers", "host"} & set(ANSWER_COLUMNS)


def test_concurrent_writers_lose_nothing(tmp_path):
    log = VisitorLog(tmp_path / "log.sqlite")
    ids: list[str] = []
    lock = threading.Lock()

    def write(worker: int) -> None:
        for n in range(40):
            answer_id = VisitorLog(log.path).log(entry(f"question {worker}-{n}"))
            if n % 2:
                assert log.add_feedback(answer_id, "up")
            with lock:
                ids.append(answer_id)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = log.read()
    assert len(rows) == 240 and sorted(rows["id"]) == sorted(ids) and rows["id"].is_unique
    assert (rows["rating"] == "up").sum() == 120


def test_entries_older_than_keep_days_expire_with_their_feedback(tmp_path):
    log = VisitorLog(tmp_path / "log.sqlite", keep_days=90)
    old = log.log(entry("old"), now=NOW - timedelta(days=91))
    log.add_feedback(old, "down", now=NOW - timedelta(days=91))
    recent = log.log(entry("recent"), now=NOW - timedelta(days=89))
    assert log.prune(now=NOW) == 1
    assert log.read()["id"].tolist() == [recent]
    assert not log.add_feedback(old, "up")  # gone: an unknown id


def test_feedback_needs_a_known_id_and_a_valid_rating(tmp_path):
    log = VisitorLog(tmp_path / "log.sqlite")
    assert log.add_feedback("0" * 32, "up") is False
    answer_id = log.log(entry())
    with pytest.raises(ValueError, match="rating must be one of up, down, not 'meh'"):
        log.add_feedback(answer_id, "meh")
    assert log.add_feedback(answer_id, "up") and log.add_feedback(answer_id, "down", "changed my mind")
    assert log.read()[["rating", "comment"]].to_dict("records") == [{"rating": "down", "comment": "changed my mind"}]


def test_read_by_day_and_days(tmp_path):
    log = VisitorLog(tmp_path / "log.sqlite")
    assert log.read().empty and log.days() == []
    log.log(entry("monday"), now=NOW)
    log.log(entry("tuesday"), now=NOW + timedelta(days=1))
    assert log.days() == ["2026-12-08", "2026-12-09"]
    assert log.read(day="2026-12-09")["question"].tolist() == ["tuesday"]
    assert log.read(since="2026-12-08")["question"].tolist() == ["monday", "tuesday"]


def test_answers_logged_by_a_server_killed_outright_are_all_there_after_it(tmp_path):
    """The server keeps its connections open (WAL, no fsync per answer): a SIGKILL loses nothing committed."""
    path = tmp_path / "log.sqlite"
    script = (
        "import os, signal\n"
        "from mebot.resources.visitor_log import LoggedAnswer, VisitorLog\n"
        f"log = VisitorLog({str(path)!r})\n"
        "ids = [log.log(LoggedAnswer('api', f'question {n}', 'rag', 'an answer')) for n in range(50)]\n"
        "log.add_feedback(ids[0], 'down')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], check=False)
    assert finished.returncode == -signal.SIGKILL
    rows = VisitorLog(path).read()
    assert rows["question"].tolist() == [f"question {n}" for n in range(50)]
    assert rows["rating"].tolist()[0] == "down"
