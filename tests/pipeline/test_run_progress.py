"""`mebot run` shows per running stage what it has done and about how long is left, read from what the stage
logs (tests/pipeline/test_run_graph.py covers the scheduling itself)."""

import re
import time
from pathlib import Path

import dagster as dg
import pytest

from mebot.pipeline.run_graph import DefinitionsRef, run_graph
from mebot.pipeline.run_progress import is_new_count
from mebot.pipeline.run_report import (
    PROGRESS_PATTERNS,
    StageProgress,
    duration_text,
    progress_line,
    progress_of_message,
    seconds_left,
)
from mebot.resources.settings import PROJECT_ROOT

STEPS = 6
STEP_S = 0.5


def progress_defs(marks_dir: str) -> dg.Definitions:
    """A crawl-like root (counts, no total) and a training-like asset (steps of a known total), both slow."""

    @dg.asset
    def crawled(context: dg.AssetExecutionContext) -> int:
        for pages in range(1, STEPS + 1):
            context.log.info(f"crawl: {pages} pages, 0 skipped, 0 errors http://127.0.0.1/p{pages}/")
            time.sleep(STEP_S)
        return STEPS

    @dg.asset
    def trained(context: dg.AssetExecutionContext, crawled: int) -> int:
        for step in range(1, STEPS + 1):
            time.sleep(STEP_S)
            context.log.info(f"e1-b2-lr0.5: step {step}/{STEPS} epoch 1 loss 1.0000 (0.50 s)")
        return crawled

    return dg.Definitions(
        assets=[crawled, trained], resources={"io_manager": dg.FilesystemIOManager(base_dir=str(Path(marks_dir)))}
    )


# Each stage's own words, as its source formats them: a stage that rewords its message loses its progress line.
STAGE_MESSAGES = [
    (
        "resources/crawler.py",
        "f\"crawl: {counts['pages']} pages, {counts['skipped']} skipped, \"",
        "crawl: 42 pages, 3 skipped, 0 errors https://x/",
        StageProgress(42, None, "pages crawled"),
    ),
    (
        "assets/index/embeddings.py",
        'f"{stats.windows} windows of {stats.chunks} chunks with',
        "812 windows of 240 chunks with minilm: 0 cached, 812 embedded, 9.1 s",
        StageProgress(812, None, "windows embedded"),
    ),
    (
        "assets/qa/questions.py",
        'f"question {k + 1}, attempt {attempt + 1}"',
        "question 2, attempt 1: 25/32",
        StageProgress(25, 32, "questions written (round 2)"),
    ),
    (
        "assets/finetune/local_lora.py",
        "f\"{key}: step {event['step']}/{event['total_steps']} epoch",
        "e1-b2-lr0.5: step 10/24 epoch 1 loss 2.1000 (8.00 s)",
        StageProgress(10, 24, "training steps"),
    ),
    (
        "assets/evaluation/answers.py",
        'f"{key}: {done}/{total} answered',
        "rag: 3/4 answered (61 s)",
        StageProgress(3, 4, "answers"),
    ),
    (
        "assets/evaluation/judge.py",
        'f"{key}: {done}/{total} judged"',
        "rag: 5/10 judged",
        StageProgress(5, 10, "answers judged"),
    ),
]


@pytest.mark.parametrize(("source", "fragment", "message", "expected"), STAGE_MESSAGES)
def test_each_stages_progress_message_is_read(source, fragment, message, expected):
    assert fragment in (PROJECT_ROOT / source).read_text(encoding="utf-8"), f"{source} no longer logs {fragment}"
    assert progress_of_message(message) == expected


def test_every_pattern_has_a_stage_message():
    assert len(PROGRESS_PATTERNS) == len(STAGE_MESSAGES)


@pytest.mark.parametrize("message", ["materialized raw_pages", "loaded 3 files", "question 1: why?", ""])
def test_other_messages_are_no_progress(message):
    assert progress_of_message(message) is None


@pytest.mark.parametrize(
    ("progress", "elapsed", "previous", "left"),
    [
        (StageProgress(10, 40, "answers"), 20.0, None, 60.0),  # the rate so far
        (StageProgress(10, 40, "answers"), 20.0, 500.0, 60.0),  # a known total beats the last run's time
        (StageProgress(10, None, "pages crawled"), 20.0, 50.0, 30.0),  # no total: the last run's time
        (None, 80.0, 50.0, 0.0),  # overrunning the last run: nothing known left
        (StageProgress(0, 40, "answers"), 5.0, None, None),
        (StageProgress(16, 16, "questions written"), 30.0, None, None),  # one round done; more may follow
        (StageProgress(16, 16, "questions written"), 30.0, 70.0, 40.0),
        (None, 5.0, None, None),
    ],
)
def test_seconds_left(progress, elapsed, previous, left):
    assert seconds_left(progress, elapsed, previous) == left


def test_the_rate_counts_from_when_the_current_count_began():
    second_round = StageProgress(4, 16, "questions written (round 2)")
    assert seconds_left(second_round, elapsed=160.0, previous=None, counted_for=8.0) == 24.0
    line = progress_line("synthetic_qa", second_round, 160.0, None, counted_for=8.0)
    assert line == "  … synthetic_qa: 4/16 questions written (round 2), 2m40s in, about 24s left"


@pytest.mark.parametrize(
    ("before", "now", "new"),
    [
        (None, StageProgress(1, 16, "questions written"), True),
        (StageProgress(3, 16, "questions written"), StageProgress(5, 16, "questions written"), False),
        (StageProgress(16, 16, "questions written"), StageProgress(2, 16, "questions written (round 2)"), True),
        (StageProgress(16, 16, "questions written"), StageProgress(3, 10, "questions written"), True),  # retries
        (StageProgress(8, 8, "training steps"), StageProgress(1, 8, "training steps"), True),  # counted again
    ],
)
def test_a_new_count_begins_with_another_step_total_or_round(before, now, new):
    assert is_new_count(before, now) is new


@pytest.mark.parametrize(("seconds", "text"), [(4.4, "4s"), (65, "1m05s"), (3725, "1h02m")])
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text


def test_progress_line_says_what_is_done_how_long_it_ran_and_what_is_left():
    line = progress_line("synthetic_qa", StageProgress(12, 32, "questions written"), 60.0, None)
    assert line == "  … synthetic_qa: 12/32 questions written, 1m00s in, about 1m40s left"
    line = progress_line("raw_pages", StageProgress(40, None, "pages crawled"), 10.0, 30.0)
    assert line == "  … raw_pages: 40 pages crawled, 10s in, about 20s left (the last run took 30s)"
    assert progress_line("vector_index", None, 10.0, None) == "  … vector_index: running, 10s in"


def _progress_lines(lines: list[str], label: str) -> list[str]:
    return [line for line in lines if line.startswith(f"  … {label}: ")]


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_mebot_run_prints_progress_and_an_estimate_while_each_stage_runs(tmp_path, max_parallel):
    ref = DefinitionsRef("tests.pipeline.test_run_progress:progress_defs", (str(tmp_path),))
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        first = run_graph(
            ref, dg.AssetSelection.all(), instance, max_parallel=max_parallel, out=lines.append, progress_interval_s=1
        )
        assert first.success, [o.errors for o in first.outcomes]
        training = _progress_lines(lines, "trained")
        assert any(re.match(r"  … trained: [1-5]/6 training steps, \S+ in, about \S+ left$", line) for line in training)
        assert any(
            re.match(r"  … crawled: \d pages crawled, \S+ in$", line) for line in _progress_lines(lines, "crawled")
        )
        assert "  trained: ok in" in next(line for line in lines if line.startswith("  trained: ok"))
        assert lines[-1].endswith("(2 of 2 finished)")

        again: list[str] = []
        second = run_graph(
            ref,
            dg.AssetSelection.all(),
            instance,
            max_parallel=max_parallel,
            out=again.append,
            force=True,
            progress_interval_s=1,
        )
        assert second.success
    # the crawl counts without a total: its estimate is the last run's time
    assert any("about" in line and "(the last run took" in line for line in _progress_lines(again, "crawled"))


@pytest.mark.parametrize(("total", "lines"), [(8, 8), (16, 16), (100, 20), (1000, 20)])
def test_question_writing_reports_about_twenty_times_a_round(total, lines):
    from mebot.assets.qa.questions import _progress_logger

    logged: list[str] = []
    report = _progress_logger(logged.append, "question 1, attempt 1")
    for done in range(1, total + 1):
        report(done, total)
    assert len(logged) == lines and logged[-1] == f"question 1, attempt 1: {total}/{total}"
    assert all(progress_of_message(line) is not None for line in logged)


@pytest.mark.parametrize(("total", "lines"), [(8, 8), (40, 21), (400, 41)])
def test_training_reports_its_steps_at_most_ten_apart_with_the_first_and_last(total, lines):
    from types import SimpleNamespace

    from mebot.assets.finetune.local_lora import _training_logger

    logged: list[str] = []
    on_log = _training_logger(SimpleNamespace(log=SimpleNamespace(info=logged.append)), "e1-b2-lr0.5")
    for step in range(1, total + 1):
        on_log({"event": "step", "step": step, "total_steps": total, "epoch": 1, "loss": 1.0, "seconds": 0.5})
    steps = [progress_of_message(line).done for line in logged]
    assert len(steps) == lines and steps[0] == 1 and steps[-1] == total
    assert max(b - a for a, b in zip(steps, steps[1:], strict=False)) <= 10
