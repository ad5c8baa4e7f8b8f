"""`mebot eval FILE`: a bring-your-own answers file scored with the evaluation's functions (real ROUGE, the real
embedding model; judge results from the file), printed as markdown or JSON, written only with --out."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mebot.pipeline.cli import main

LINES = [
    {
        "question": "What is your sourdough starter called?",
        "reference": "My sourdough starter is called Brenda.",
        "model": "gpt-4o-mini",
        "answer": "My sourdough starter is called Brenda.",
        "judge_distribution": {"9": 0.3, "10": 0.7},
        "judge_direct_score": 10,
    },
    {
        "question": "What is your sourdough starter called?",
        "reference": "My sourdough starter is called Brenda.",
        "model": "my-bot",
        "answer": "I don't bake.",
        "judge_distribution": {"0": 0.8, "3": 0.2},
        "judge_direct_score": 0,
    },
    {
        "question": "Which telescope do you own?",
        "reference": "A Sky-Watcher 200P Dobsonian.",
        "model": "gpt-4o-mini",
        "answer": "A Dobsonian, the Sky-Watcher 200P.",
        "judge_direct_score": 8,
    },
    {"question": "Which telescope do you own?", "reference": "A Sky-Watcher 200P Dobsonian.", "model": "my-bot"}
    | {"answer": ""},
]


@pytest.fixture
def answers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in LINES) + "\n", encoding="utf-8")
    return path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.full  # the real MiniLM
def test_eval_prints_the_leaderboard_and_pairwise_tables_and_writes_nothing(answers_file, capsys):
    root = answers_file.parent
    before = _files(root)  # the cwd and the file's folder
    assert main(["eval", str(answers_file)]) == 0
    out = capsys.readouterr().out
    header, _rule, first, second = out.split("\n\n")[0].splitlines()
    assert "rouge1_f1" in header and "judge_expected" in header and "n_missing" in header
    assert first.startswith("| gpt-4o-mini") and second.startswith("| my-bot")
    cells = [c.strip() for c in second.strip("|").split("|")]
    assert cells[2:4] == ["1", "1"]  # my-bot: one answered, one missing
    assert "Pairwise by judge_expected (tie within 0.5)" in out and "Pairwise by judge_direct" in out
    assert _files(root) == before  # nothing written


@pytest.mark.full  # the real MiniLM
def test_eval_json_gives_the_same_numbers_and_out_writes_the_files(answers_file, capsys, tmp_path):
    out_dir = tmp_path / "out"
    assert main(["eval", str(answers_file), "--json", "--out", str(out_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    board = {row["model"]: row for row in report["leaderboard"]}
    assert board["gpt-4o-mini"]["n_answered"] == 2 and board["my-bot"]["n_missing"] == 1
    assert board["gpt-4o-mini"]["judge_expected"] == pytest.approx(9.7)  # the one row with a distribution
    assert board["gpt-4o-mini"]["judge_direct"] == pytest.approx(9.0)
    assert board["my-bot"]["judge_expected"] == pytest.approx(0.6)
    assert board["gpt-4o-mini"]["rouge1_f1"] > board["my-bot"]["rouge1_f1"]
    assert board["gpt-4o-mini"]["similarity"] > board["my-bot"]["similarity"]
    (pair,) = report["pairwise"]["judge_expected"]
    assert (pair["model_a"], pair["wins_a"], pair["n"]) == ("gpt-4o-mini", 1, 1)
    assert sorted(Path(p).name for p in report["written"]) == [
        "external_leaderboard.csv",
        "external_leaderboard.parquet",
        "external_scores.parquet",
    ]
    written = pd.read_parquet(out_dir / "external_leaderboard.parquet")
    assert written["model"].tolist() == ["gpt-4o-mini", "my-bot"]
    assert pd.read_csv(out_dir / "external_leaderboard.csv")["n_missing"].tolist() == [0, 1]
    assert len(pd.read_parquet(out_dir / "external_scores.parquet")) == 4


def test_a_file_without_required_columns_fails_naming_them(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"question": ["Q?"], "model": ["m"], "answer": ["A"]}).to_csv(bad, index=False)
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "eval", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "bad.csv: missing required column(s) reference" in result.stderr and result.stdout == ""
