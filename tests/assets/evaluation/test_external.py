"""Bring-your-own answers: the reader (.jsonl, .csv, .parquet; errors name the line) and `external_evaluation`
scoring every file in data/external/ into a leaderboard of its own."""

import json
import math
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mebot.assets.evaluation.external import (
    EXTERNAL_COLUMNS,
    EXTERNAL_SCORE_COLUMNS,
    ExternalAnswersError,
    external_evaluation,
    external_qa_id,
    read_external_answers,
)
from mebot.assets.evaluation.judge_reply import distribution_from_mapping
from tests.assets.evaluation.world import (
    OVERRIDES,
    eval_resources,
    write_config,
)

# ------------------------------------------------------------------------------------ bring-your-own answers

EXTERNAL_ROWS = [
    {
        "question": "Where do you live?",
        "reference": "I live in Sheffield.",
        "model": "gpt-x",
        "answer": "Sheffield, in the north of England.",
        "qa_id": "q-1",
        "judge_distribution": {"8": 0.5, "9": 0.25, "10": 0.25},
        "judge_direct_score": 9,
        "source_url": "https://example.org/about",
        "split": "test",
    },
    {
        "question": "What is your starter called?",
        "reference": "Brenda.",
        "model": "gpt-x",
        "answer": "",
        "qa_id": None,
        "judge_distribution": None,
        "judge_direct_score": None,
        "source_url": None,
        "split": None,
    },
]


def write_external(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    else:
        frame = pd.DataFrame(rows)
        if "judge_distribution" in frame and path.suffix == ".csv":
            frame["judge_distribution"] = [json.dumps(d) if d else "" for d in frame["judge_distribution"]]
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_external_answers_round_trip(tmp_path, suffix):
    frame = read_external_answers(write_external(tmp_path / f"answers{suffix}", EXTERNAL_ROWS))
    assert list(frame.columns) == EXTERNAL_COLUMNS
    first, second = frame.iloc[0], frame.iloc[1]
    assert (first.question, first.reference, first.model, first.answer) == (
        "Where do you live?",
        "I live in Sheffield.",
        "gpt-x",
        "Sheffield, in the north of England.",
    )
    assert first.qa_id == "q-1"
    assert distribution_from_mapping(json.loads(first.judge_distribution_json)).expected == pytest.approx(8.75)
    assert first.judge_direct_score == 9.0
    assert (first.source_url, first.split) == ("https://example.org/about", "test")
    assert second.answer == ""
    assert second.qa_id == external_qa_id("What is your starter called?", "Brenda.")
    assert second.judge_distribution_json is None and math.isnan(second.judge_direct_score)
    assert second.source_url is None and second.split is None


def test_external_answers_missing_columns_are_all_named(tmp_path):
    path = write_external(tmp_path / "answers.jsonl", [{"question": "Where?", "answer": "Here."}])
    with pytest.raises(ExternalAnswersError, match=r"answers\.jsonl: missing required column\(s\) reference, model"):
        read_external_answers(path)


@pytest.mark.parametrize(
    ("suffix", "where"),
    [(".jsonl", "line 2"), (".csv", "line 3"), (".parquet", "row 2")],
)
def test_external_answers_bad_distribution_key_names_the_line(tmp_path, suffix, where):
    rows = [dict(EXTERNAL_ROWS[0]), {**EXTERNAL_ROWS[0], "qa_id": "q-2", "judge_distribution": {"11": 1.0}}]
    path = write_external(tmp_path / f"answers{suffix}", rows)
    with pytest.raises(ExternalAnswersError, match=f"{where}: judge distribution key '11' is not a score"):
        read_external_answers(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"judge_direct_score": 11}, "judge_direct_score 11 is outside 0..10"),
        ({"judge_distribution": {"7": -1}}, "non-negative"),
        ({"model": ""}, "model is empty"),
        ({"qa_id": "q-1"}, "line 2: model 'gpt-x' already answered this question \\(line 1\\)"),
    ],
)
def test_external_answers_row_errors_name_the_line(tmp_path, change, message):
    rows = [dict(EXTERNAL_ROWS[0]), {**EXTERNAL_ROWS[0], "qa_id": "q-2", **change}]
    with pytest.raises(ExternalAnswersError, match=message):
        read_external_answers(write_external(tmp_path / "answers.jsonl", rows))


def test_external_answers_unknown_format_and_bad_json(tmp_path):
    with pytest.raises(ExternalAnswersError, match=r"\.xlsx is not read"):
        read_external_answers(tmp_path / "answers.xlsx")
    bad = tmp_path / "answers.jsonl"
    bad.write_text(json.dumps(EXTERNAL_ROWS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ExternalAnswersError, match="line 2: not valid JSON"):
        read_external_answers(bad)
    with pytest.raises(ExternalAnswersError, match="no such answers file"):
        read_external_answers(tmp_path / "absent.csv")


# ---------------------------------------------------------------------------------------- bring your own


EXTERNAL_LINES = [
    {
        "question": "What is your sourdough starter called?",
        "reference": "My sourdough starter is called Brenda.",
        "model": "gpt-4o",
        "answer": "My sourdough starter is called Brenda.",
        "judge_distribution": {"9": 0.25, "10": 0.75},
        "judge_direct_score": 10,
    },
    {
        "question": "What is your sourdough starter called?",
        "reference": "My sourdough starter is called Brenda.",
        "model": "my-bot",
        "answer": "I do not bake.",
        "judge_distribution": {"0": 0.5, "2": 0.5},
        "judge_direct_score": 1,
    },
    {
        "question": "Which telescope do you own?",
        "reference": "A Sky-Watcher 200P Dobsonian.",
        "model": "my-bot",
        "answer": "",
    },
]


def write_external_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "answers.jsonl").write_text("\n".join(json.dumps(line) for line in EXTERNAL_LINES[:2]) + "\n")
    pd.DataFrame([EXTERNAL_LINES[2]]).to_csv(directory / "more.csv", index=False)


@pytest.mark.full  # the real MiniLM
def test_external_evaluation_scores_every_file_and_writes_its_own_leaderboard(tmp_path):
    config, data = write_config(tmp_path, OVERRIDES), tmp_path / "data"
    resources = eval_resources(config, data)
    empty = dg.materialize([external_evaluation], resources=resources)
    assert empty.output_for_node("external_evaluation").empty  # no files: nothing to do, not an error
    note = empty.asset_materializations_for_node("external_evaluation")[0].metadata["note"].value
    assert "no answers files" in note and str(data / "external") in note
    assert not (data / "external_leaderboard.parquet").exists()

    write_external_files(data / "external")
    result = dg.materialize([external_evaluation], resources=resources)
    scores = result.output_for_node("external_evaluation")
    assert list(scores.columns) == EXTERNAL_SCORE_COLUMNS and len(scores) == 3
    assert sorted(scores["source_file"].unique()) == ["answers.jsonl", "more.csv"]
    by_model = scores.set_index(["model", "answered"])
    gpt = by_model.loc[("gpt-4o", True)]
    assert gpt["judge_expected"] == pytest.approx(9.75) and gpt["rouge1_f1"] == pytest.approx(1.0)
    board = pd.read_parquet(data / "external_leaderboard.parquet").set_index("model")
    assert pd.read_csv(data / "external_leaderboard.csv")["model"].tolist() == ["gpt-4o", "my-bot"]
    assert board.loc["my-bot", ["n_questions", "n_answered", "n_missing"]].tolist() == [2, 1, 1]
    assert board.loc["gpt-4o", "judge_expected_wins"] == 1 and board.loc["my-bot", "judge_direct_losses"] == 1
    assert (board["backend"] == "external").all()
    metadata = result.asset_materializations_for_node("external_evaluation")[0].metadata
    assert metadata["files"].value == ["answers.jsonl", "more.csv"] and metadata["answers_missing"].value == 1
