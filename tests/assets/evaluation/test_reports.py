"""The markdown tables of the evaluation."""

import pandas as pd
import pytest

from mebot.assets.evaluation.reports import leaderboard_markdown

# --------------------------------------------------------------------------------------------------- tables


def test_leaderboard_markdown_rounds_floats_and_keeps_every_row():
    frame = pd.DataFrame(
        {"model": [f"m{i}" for i in range(8)], "rouge1_f1": [i / 7 for i in range(8)], "unused": range(8)}
    )
    text = leaderboard_markdown(frame, ["model", "rouge1_f1"], digits=2)
    lines = text.splitlines()
    assert len(lines) == 2 + 8
    assert "unused" not in lines[0] and "rouge1_f1" in lines[0]
    assert "0.14" in lines[3] and "0.142" not in text
    with pytest.raises(ValueError, match="no column\\(s\\) judge"):
        leaderboard_markdown(frame, ["model", "judge"])
