"""`mebot release list|rollback` (and `mebot review`, below): the owner's commands, run through `mebot`'s main."""

import json

import numpy as np
import pandas as pd
import pytest

from mebot.pipeline.cli import main
from mebot.resources.layout import DATA_DIR_ENV_VAR, DataLayout
from mebot.resources.releases import promote, read_current_id, stage_release
from mebot.resources.vector_index import write_index


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
