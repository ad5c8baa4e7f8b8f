"""finetuned_models with backend openai, materialized for real by Dagster against the recorded OpenAI fine-tuning
exchange (a contract test: no offline fine-tuning server exists) served over HTTP on 127.0.0.1, so the
production client, key handling and settings are used unchanged."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest

from mebot.assets.finetune.formats import chat_example
from mebot.assets.finetune.results import FINETUNED_MODEL_COLUMNS
from mebot.assets.finetune.training import finetuned_models_asset
from mebot.resources.openai_finetune import RECORD_FILE
from mebot.resources.settings import Settings, load_settings
from tests.assets.finetune.helpers import fake_upstream, resources
from tests.helpers import ephemeral_instance
from tests.resources.openai_finetune_api import ORG, TOTAL_STEPS, RecordedFineTuningAPI, recorded_loss

SECRET = "sk-proj-asset-test-fedcba9876543210"
SPLITS = ["train"] * 12 + ["validation"] * 2 + ["test"]


def contract_dataset(settings: Settings) -> pd.DataFrame:
    """15 examples (12 train: OpenAI's minimum is 10), shaped like `finetune_dataset`'s output."""
    rows = []
    for i, split in enumerate(SPLITS):
        messages = chat_example(settings, f"What is fact number {i} about you?", f"Fact {i}: I bake on Sundays.")
        rows.append(
            {
                "qa_id": f"q{i}",
                "split": split,
                "messages_json": json.dumps(messages),
                "prompt": f"QUESTION: fact {i}\n\n###\n\n",
                "completion": f" Fact {i} END",
                "n_tokens": 50,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def recorded_api() -> Iterator[tuple[RecordedFineTuningAPI, str]]:
    """The recorded exchange behind a real HTTP server on loopback: (api, base_url)."""
    api = RecordedFineTuningAPI()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            host, port = self.server.server_address[:2]
            request = httpx.Request(
                self.command, f"http://{host}:{port}{self.path}", headers=dict(self.headers), content=body
            )
            response = api(request)
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_partition_trains_logs_events_and_resumes_on_rematerialize(
    recorded_api: tuple[RecordedFineTuningAPI, str], make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    api, base_url = recorded_api
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = make_config(
        {
            "finetune": {"backend": "openai", "openai": {"poll_interval_s": 0.01}},
            "models": {"chat": {"base_url": base_url}},
        }
    )
    settings = load_settings(config)
    finetuned_models = finetuned_models_asset(settings)
    key = finetuned_models.partitions_def.get_partition_keys()[0]
    data = tmp_path / "data"
    upstream = fake_upstream(contract_dataset(settings))
    instance = ephemeral_instance()
    assert dg.materialize([upstream], resources=resources(config, data), instance=instance).success

    def materialize() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [finetuned_models, upstream],
            selection=[finetuned_models],
            partition_key=key,
            resources=resources(config, data),
            instance=instance,
        )

    result = materialize()
    assert result.success
    frame = result.output_for_node("finetuned_models")
    assert list(frame.columns) == FINETUNED_MODEL_COLUMNS and len(frame) == 1
    row = frame.iloc[0]
    point = settings.finetune.sweep_points()[0]
    assert row["backend"] == "openai" and row["partition_key"] == key
    assert row["model_id"] == f"ft:gpt-4o-mini-2024-07-18:{ORG}:mebot:AbC123xY"
    assert row["job_id"] == "ftjob-0001abcdefghijklmn" and row["adapter_path"] == ""
    assert (row["n_epochs"], row["batch_size"]) == (point.n_epochs, point.batch_size)
    assert row["n_train"] == 12 and row["n_validation"] == 2 and row["steps"] == TOTAL_STEPS
    assert row["train_loss_final"] == pytest.approx(recorded_loss(TOTAL_STEPS))
    assert row["val_loss_final"] == pytest.approx(recorded_loss(TOTAL_STEPS) + 0.25)
    assert json.loads(row["train_losses_json"]) == [recorded_loss(s) for s in range(1, TOTAL_STEPS + 1)]
    assert row["seconds"] == 360

    (create,) = api.creates()
    assert create.body["model"] == "gpt-4o-mini-2024-07-18" and create.body["seed"] == 42
    assert create.body["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": point.n_epochs,
        "batch_size": point.batch_size,
        "learning_rate_multiplier": point.learning_rate_multiplier,
    }
    (train_upload, validation_upload) = api.requests("POST", "/files")
    assert train_upload.body["content"].decode().count("\n") == 12  # the train split, one example per line
    assert validation_upload.body["content"].decode().count("\n") == 2

    (materialization,) = result.asset_materializations_for_node("finetuned_models")
    metadata = materialization.metadata
    assert metadata["job_id"].value == row["job_id"] and metadata["status"].value == "succeeded"
    assert metadata["model_id"].value == row["model_id"] and metadata["resumed"].value is False
    assert metadata["trained_tokens"].value == 5_040
    assert metadata["estimated_cost_usd"].value == pytest.approx(12 * 50 * point.n_epochs * 3.0 / 1e6, abs=1e-4)
    assert "ckpt-step-6" in metadata["checkpoints"].value
    assert metadata["loss_plot"].value.startswith("![loss curves](data:image/png;base64,")
    record = json.loads((data / "models" / key / RECORD_FILE).read_text())
    assert record["job_id"] == row["job_id"] and record["fine_tuned_model"] == row["model_id"]

    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    openai_lines = [line for line in logs if "[OpenAI]" in line]
    assert [line.split("[OpenAI] ", 1)[1] for line in openai_lines] == [
        e["message"] for e in api.events["ftjob-0001abcdefghijklmn"]
    ]
    assert not [line for line in logs if SECRET in line]
    assert SECRET not in json.dumps({name: str(value.value) for name, value in metadata.items()})
    assert SECRET not in (data / "models" / key / RECORD_FILE).read_text()
    assert {c.authorization for c in api.calls} == {f"Bearer {SECRET}"}

    calls = len(api.calls)
    again = materialize()
    assert again.success
    assert again.output_for_node("finetuned_models").iloc[0]["model_id"] == row["model_id"]
    (rematerialization,) = again.asset_materializations_for_node("finetuned_models")
    assert rematerialization.metadata["resumed"].value is True
    assert len(api.calls) == calls and len(api.creates()) == 1  # from the record: no request, no second job
