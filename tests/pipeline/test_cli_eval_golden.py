"""`mebot eval FILE --golden [PATH]`: a bring-your-own answers file (question, model, answer; optional sources)
scored against golden questions without a judge: matched on the question text, unmatched rows counted and listed,
the golden figures per model printed as markdown or JSON; PATH defaults to eval.golden_path."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mebot.pipeline.cli import main

GOLDEN = """\
questions:
  - id: dental
    question: How much did Kepler's dental surgery set you back?
    source: /posts/2024-year-in-review/
    facts: {any_of: ["£640"]}
  - id: film
    question: What's your favourite film?
    source: /about/
    facts: [Apollo 13]
  - id: football
    question: Which football team do you support?
    unanswerable: true
"""
LINES = [
    # matched whatever the case and spacing; the fact in words and a currency word; the source page retrieved 2nd
    {"question": "  how much did KEPLER'S dental surgery   set you back?", "model": "mine"}
    | {"answer": "Six hundred and forty pounds.", "sources": ["https://toby.example/", "/posts/2024-year-in-review/"]},
    {"question": "What's your favourite film?", "model": "mine", "answer": "Apollo 13, every time."},
    {"question": "Which football team do you support?", "model": "mine", "answer": "I don't know, sorry."},
    {"question": "How much did Kepler's dental surgery set you back?", "model": "theirs", "answer": "£64."},
    {"question": "What's your favourite film?", "model": "theirs", "answer": "I am not programmed to answer that."},
    {"question": "Which football team do you support?", "model": "theirs", "answer": "Leeds United."},
    {"question": "What is your dog called?", "model": "theirs", "answer": "Rex."},  # not a golden question
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    golden = tmp_path / "golden.yaml"
    golden.write_text(GOLDEN, encoding="utf-8")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(line) for line in LINES) + "\n", encoding="utf-8")
    config = tmp_path / "mebot.yaml"
    config.write_text(yaml.safe_dump({"eval": {"golden_path": str(golden), "bootstrap_resamples": 200}}))
    return {"golden": golden, "answers": answers, "config": config}


def test_eval_golden_prints_the_figures_per_model_and_lists_the_unmatched_rows(files, capsys):
    argv = ["--config", str(files["config"]), "eval", str(files["answers"]), "--golden", str(files["golden"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Golden questions (2 answerable, 1 unanswerable;")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    header, mine, theirs = (table[0], table[1], table[2])
    assert "fact accuracy" in header and "refusal accuracy" in header and "source page hit@k" in header
    cells = [c.strip() for c in mine.strip("|").split("|")]
    assert cells[:4] == ["mine", "1.00", "1.00", "0.00"]  # both facts stated, the unanswerable one declined
    assert cells[4:6] == ["1.00", "0.50"]  # the source page 2nd; the answers without sources count for neither
    cells = [c.strip() for c in theirs.strip("|").split("|")]
    assert cells[1].startswith("0.00") and cells[2] == "0.00"  # £64 is not £640; Leeds United is not a refusal
    assert cells[3].startswith("0.50")  # declined the film question it could answer
    assert "6 answers matched 3 of the 3 golden questions" in out and "1 matched none" in out
    assert "line 7 (theirs): What is your dog called?" in out


def test_eval_golden_json_defaults_to_eval_golden_path(files, capsys):
    argv = ["--config", str(files["config"]), "eval", str(files["answers"]), "--golden", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["golden"] == str(files["golden"]) and report["matched"] == 6
    assert report["unmatched"] == [{"where": "line 7", "model": "theirs", "question": "What is your dog called?"}]
    mine, theirs = report["models"]["mine"], report["models"]["theirs"]
    assert mine["fact_accuracy"] == 1.0 and mine["refusal_accuracy"] == 1.0 and mine["mrr"] == 0.5
    assert theirs["fact_accuracy"] == 0.0 and theirs["false_refusal_rate"] == 0.5
    assert theirs["hit_at_k"] is None and theirs["latency_p50"] is None  # nothing retrieved, no latency: null
    low, high = theirs["intervals"]["false_refusal_rate"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_eval_golden_answers_only_the_golden_questions_the_file_asks(files, capsys):
    files["answers"].write_text(json.dumps(LINES[1]) + "\n", encoding="utf-8")  # one question of three
    assert main(["--config", str(files["config"]), "eval", str(files["answers"]), "--golden", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["questions_answered"] == 1 and report["golden_questions"] == 3
    assert report["models"]["mine"]["fact_accuracy"] == 1.0 and report["models"]["mine"]["n_answerable"] == 1


def test_eval_golden_errors_name_the_file_and_what_to_fix(files, capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhat's your favourite film?,Apollo 13\n", encoding="utf-8")
    assert main(["--config", str(files["config"]), "eval", str(bad), "--golden"]) == 1
    assert "missing column(s) model" in capsys.readouterr().err
    files["golden"].write_text(GOLDEN.replace("    source: /about/\n", ""), encoding="utf-8")
    assert main(["--config", str(files["config"]), "eval", str(files["answers"]), "--golden"]) == 1
    assert "line 6, questions[1].source" in capsys.readouterr().err
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join(json.dumps(LINES[1]) for _ in range(2)) + "\n", encoding="utf-8")
    files["golden"].write_text(GOLDEN, encoding="utf-8")
    assert main(["--config", str(files["config"]), "eval", str(twice), "--golden"]) == 1
    assert "model 'mine' answers 'film' 2 times" in capsys.readouterr().err
    files["config"].write_text(yaml.safe_dump({"eval": {"golden_path": ""}}))
    assert main(["--config", str(files["config"]), "eval", str(files["answers"]), "--golden"]) == 2
    assert "(eval.golden_path is empty); pass --golden PATH" in capsys.readouterr().err


def test_eval_golden_reads_csv_with_sources_as_json_text(files, capsys, tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text(
        "question,model,answer,sources\n"
        '"What\'s your favourite film?",csv-bot,Apollo 13,"[{""url"": ""https://toby.example/about/""}]"\n',
        encoding="utf-8",
    )
    assert main(["--config", str(files["config"]), "eval", str(answers), "--golden", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["models"]["csv-bot"]
    assert figures["fact_accuracy"] == 1.0 and figures["hit_at_k"] == 1.0 and figures["mrr"] == 1.0


def test_mebot_run_closes_with_the_golden_figures_before_the_judge_and_rouge_table(tmp_path, monkeypatch, capsys):
    from mebot.assets.evaluation.leaderboard import LEADERBOARD_COLUMNS
    from mebot.pipeline.cli import print_leaderboard

    board = pd.DataFrame([{"model": "rag", "backend": "rag"}, {"model": "e1-b2-lr2", "backend": "local_lora"}])
    board = board.reindex(columns=LEADERBOARD_COLUMNS)
    board[["golden_fact_accuracy", "golden_fact_accuracy_ci_low", "golden_fact_accuracy_ci_high"]] = [
        [0.25, 0.1, 0.4],
        [0.0, 0.0, 0.0],
    ]
    board[["golden_n_answerable", "golden_n_unanswerable", "rouge1_f1"]] = [[38, 6, 0.3], [38, 6, 0.2]]
    board.to_parquet(tmp_path / "leaderboard.parquet")
    monkeypatch.setenv("MEBOT_DATA_DIR", str(tmp_path))
    print_leaderboard()
    out = capsys.readouterr().out
    assert out.index("Golden questions (38 answerable, 6 unanswerable") < out.index("rouge1_f1")
    cells = [[c.strip() for c in line.split("|")[1:3]] for line in out.splitlines() if line.startswith("| ")]
    rows = dict(cells[1:3])  # the golden table's rows, after its header
    assert rows == {"rag": "0.25 [0.10, 0.40]", "e1-b2-lr2": "0.00"}
    # a leaderboard written before the golden questions existed prints the judge/ROUGE table alone
    board.drop(columns=[c for c in board.columns if c.startswith("golden_")]).to_parquet(
        tmp_path / "leaderboard.parquet"
    )
    print_leaderboard()
    out = capsys.readouterr().out
    assert "Golden questions" not in out and "rouge1_f1" in out
