"""notebooks/compare_sweeps.ipynb runs top to bottom in a real kernel (nbclient + ipykernel) against the
evaluation's Parquet files, here written by a fixture with the evaluation's own functions."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from mebot.assets.evaluation.answers import MODEL_ANSWER_COLUMNS, RAG_MODEL
from mebot.assets.evaluation.judge import JUDGE_SCORE_COLUMNS
from mebot.assets.evaluation.leaderboard import leaderboard_table
from mebot.assets.evaluation.rouge import rouge_and_similarity
from mebot.resources.settings import PROJECT_ROOT, EvalSettings, Settings

NOTEBOOK = PROJECT_ROOT / "notebooks" / "compare_sweeps.ipynb"
REFERENCES = {
    "q1": "My sourdough starter is called Brenda and lives in the fridge.",
    "q2": "I own a Sky-Watcher 200P Dobsonian telescope.",
    "q3": "The cloud sensor cost forty-two pounds.",
}


def _answers(model: str, answers: dict[str, str | None]) -> pd.DataFrame:
    rows = [
        {"qa_id": q, "model": model, "question": f"{q}?", "reference": REFERENCES[q], "answer": a}
        | {"sources": "[]", "source_url": "u", "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.1}
        | {"cached": False, "error": None if a else "ModelOutputError: empty"}
        for q, a in answers.items()
    ]
    return pd.DataFrame(rows, columns=MODEL_ANSWER_COLUMNS)


def _judge(answers: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for row in answers.itertuples(index=False):
        answered = row.error is None
        weights = rng.dirichlet(np.ones(11)) if answered else None
        expected = float((weights * np.arange(11)).sum()) if answered else None
        distribution = json.dumps({str(s): float(p) for s, p in enumerate(weights)}) if answered else None
        rows.append(
            {"qa_id": row.qa_id, "model": row.model, "answered": answered, "judge_expected": expected}
            | {"judge_distribution_json": distribution, "judge_valid_mass": 0.4 if answered else None}
            | {"judge_argmax": None, "judge_ten_resolved": True, "logprob_method": "logprob" if answered else None}
            | {"judge_direct": 7.0 if answered else None, "judge_direct_text": "7" if answered else None}
            | {"judge_error": None}
        )
    return pd.DataFrame(rows, columns=JUDGE_SCORE_COLUMNS)


@pytest.fixture(scope="module")
def evaluation_data(tmp_path_factory) -> Path:
    """leaderboard.parquet, rouge_scores/, judge_scores/ and finetuned_models/ in the IO manager's layout."""
    data = tmp_path_factory.mktemp("notebook") / "data"
    rng = np.random.default_rng(0)
    points = Settings().finetune.sweep_points()
    answers = {
        RAG_MODEL: _answers(
            RAG_MODEL, {"q1": "My starter is Brenda.", "q2": "A Dobsonian.", "q3": "Forty-two pounds."}
        ),
        points[0].key: _answers(points[0].key, {"q1": "Brenda.", "q2": "A telescope.", "q3": None}),
        points[1].key: _answers(points[1].key, {"q1": "I bake.", "q2": "Stars.", "q3": "A lot."}),
    }
    scores = []
    for model, frame in answers.items():
        rouge = rouge_and_similarity(frame, EvalSettings(), embedder=None, cache=None)
        rouge.loc[rouge["answered"], "similarity"] = rng.uniform(0.2, 0.9, int(rouge["answered"].sum()))
        judge = _judge(frame, rng)
        for asset, value in (("rouge_scores", rouge), ("judge_scores", judge)):
            (data / asset).mkdir(parents=True, exist_ok=True)
            value.to_parquet(data / asset / f"{model}.parquet")
        scores.append(rouge.merge(judge.drop(columns="answered"), on=["qa_id", "model"]))
    finetuned = []
    for i, point in enumerate(points):
        row = {"partition_key": point.key, "backend": "local_lora", **point.model_dump()}
        row |= {"val_loss_final": 2.0 - i * 0.3, "train_loss_final": 1.5 - i * 0.2, "steps": 4}
        (data / "finetuned_models").mkdir(exist_ok=True)
        pd.DataFrame([row]).to_parquet(data / "finetuned_models" / f"{point.key}.parquet")
        finetuned.append(row)
    validity = {"logprob": {"auc": 0.55, "passed": False}, "direct": {"auc": 0.5, "passed": False}}
    board, _ = leaderboard_table(
        pd.concat(scores, ignore_index=True),
        EvalSettings(bootstrap_resamples=100),
        models=list(answers),
        model_info=pd.DataFrame(finetuned),
        validity=validity,
    )
    board.to_parquet(data / "leaderboard.parquet")
    return data


@pytest.mark.full  # a real Jupyter kernel
def test_the_notebook_runs_top_to_bottom_and_shows_every_model(evaluation_data, monkeypatch):
    monkeypatch.setenv("MEBOT_DATA_DIR", str(evaluation_data))  # the kernel inherits it
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"data directory: {evaluation_data}" in text and "3 models" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # metrics vs lr, per-answer boxes, judge distributions, loss vs quality
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    leaderboard_html = tables[0]
    keys = [RAG_MODEL, *[p.key for p in Settings().finetune.sweep_points()]]
    assert all(f">{key}<" in leaderboard_html for key in keys)
    assert any("judge_logprob_validity_auc" in html for html in tables)  # Table 2 shows the judge's validity
