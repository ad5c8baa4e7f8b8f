"""Contract tests: OpenAIFinetuner through the official `openai` SDK against a recorded exchange with OpenAI's
fine-tuning API (no offline fine-tuning server exists). `RecordedFineTuningAPI` answers with response bodies
shaped as OpenAI returns them (file objects, a job going validating_files → running → succeeded, event pages
newest first, checkpoints with metrics) and records every request; it plugs into the SDK as an
`httpx.MockTransport`, and into a loopback HTTP server for the asset-level test."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import openai
import pytest

from mebot.resources.chat import BudgetExceeded
from mebot.resources.openai_finetune import (
    FILES_REGISTRY_FILE,
    RECORD_FILE,
    CostEstimate,
    FinetuneJobFailed,
    JobSpec,
    OpenAIFinetuneError,
    OpenAIFinetuner,
    TrainingFile,
    estimate_training_cost,
    openai_client,
)
from mebot.resources.settings import ChatModelSettings
from tests.resources.openai_finetune_api import (
    BASE_URL,
    CREATED_AT,
    ORG,
    SECRET,
    TOTAL_STEPS,
    RecordedFineTuningAPI,
    recorded_loss,
)

# ------------------------------------------------------------------------------------------------ fixtures

TRAIN = TrainingFile("train.chat.jsonl", b'{"messages": [{"role": "user", "content": "q"}]}\n' * 12, 12)
VALIDATION = TrainingFile("validation.chat.jsonl", b'{"messages": [{"role": "user", "content": "v"}]}\n' * 2, 2)
SPEC = JobSpec(
    partition_key="e2-b4-lr0.5",
    base_model="gpt-4o-mini-2024-07-18",
    suffix="mebot",
    seed=42,
    n_epochs=2,
    batch_size=4,
    learning_rate_multiplier=0.5,
)
CHEAP = estimate_training_cost(1_000, 2, SPEC.base_model, 3.0)  # $0.006


def sdk_client(api: RecordedFineTuningAPI, api_key: str = "test", max_retries: int = 2) -> openai.OpenAI:
    transport = httpx.MockTransport(api)
    return openai.OpenAI(
        base_url=BASE_URL, api_key=api_key, max_retries=max_retries, http_client=httpx.Client(transport=transport)
    )


@dataclass
class Harness:
    api: RecordedFineTuningAPI
    model_dir: Path
    logs: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def finetuner(self, client: openai.OpenAI | None = None, poll_interval_s: float = 0.001) -> OpenAIFinetuner:
        return OpenAIFinetuner(
            client or sdk_client(self.api), self.model_dir, poll_interval_s=poll_interval_s, log=self.logs.append
        )

    def run(self, spec: JobSpec = SPEC, estimate: CostEstimate = CHEAP, budget: float = 5.0, **kwargs: Any):
        finetuner = kwargs.pop("finetuner", None) or self.finetuner()
        return finetuner.run(
            spec, TRAIN, VALIDATION, estimate=estimate, budget_usd=budget, on_event=self.events.append, **kwargs
        )

    def record(self) -> dict:
        return json.loads((self.model_dir / RECORD_FILE).read_text())


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(RecordedFineTuningAPI(), tmp_path / "models" / SPEC.partition_key)


# ---------------------------------------------------------------------------------------------------- tests


def test_contract_new_job_uploads_both_files_creates_the_job_and_polls_to_the_model(harness: Harness):
    outcome = harness.run()
    api = harness.api

    lookups = api.requests("GET", "/fine_tuning/jobs")
    assert lookups[0].path == "/fine_tuning/jobs" and lookups[0].query["metadata[mebot_spec]"]
    uploads = api.requests("POST", "/files")
    assert [(u.body["purpose"], u.body["filename"], u.body["content"]) for u in uploads] == [
        ("fine-tune", "train.chat.jsonl", TRAIN.content),
        ("fine-tune", "validation.chat.jsonl", VALIDATION.content),
    ]
    (create,) = api.creates()
    assert create.body == {
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-0001TrainData",
        "validation_file": "file-0002TrainData",
        "suffix": "mebot",
        "seed": 42,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}},
        },
        "metadata": {"mebot_partition": "e2-b4-lr0.5", "mebot_spec": lookups[0].query["metadata[mebot_spec]"]},
    }
    # the order of the whole exchange: look up, upload, create, then poll until succeeded, then checkpoints
    order = [(c.method, c.path) for c in api.calls]
    first_poll = order.index(("GET", "/fine_tuning/jobs/ftjob-0001abcdefghijklmn"))
    assert order[:first_poll] == [
        ("GET", "/fine_tuning/jobs"),
        ("POST", "/files"),
        ("POST", "/files"),
        ("POST", "/fine_tuning/jobs"),
    ]
    assert api.retrieves["ftjob-0001abcdefghijklmn"] == 5  # validating, validating, running, running, succeeded
    assert order[-1] == ("GET", "/fine_tuning/jobs/ftjob-0001abcdefghijklmn/checkpoints")

    assert outcome.job_id == "ftjob-0001abcdefghijklmn" and not outcome.resumed
    assert outcome.fine_tuned_model == f"ft:gpt-4o-mini-2024-07-18:{ORG}:mebot:AbC123xY"
    assert [c["step"] for c in outcome.checkpoints] == [3, 6]
    assert outcome.checkpoints[-1]["model"].endswith("ckpt-step-6")
    assert outcome.checkpoints[-1]["full_valid_loss"] == pytest.approx(recorded_loss(6) + 0.25)
    assert "full_valid_loss" not in outcome.checkpoints[0]  # null metrics are left out
    assert [m["step"] for m in outcome.metrics] == list(range(1, TOTAL_STEPS + 1))
    assert [m["train_loss"] for m in outcome.metrics] == [recorded_loss(s) for s in range(1, TOTAL_STEPS + 1)]

    record = harness.record()
    assert record["job_id"] == outcome.job_id and record["status"] == "succeeded"
    assert record["fine_tuned_model"] == outcome.fine_tuned_model and record["trained_tokens"] == 5_040
    assert record["files"]["train"]["id"] == "file-0001TrainData"
    assert record["files"]["train"]["sha256"] == TRAIN.sha256
    assert record["files"]["validation"]["id"] == "file-0002TrainData"
    assert record["point"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert record["created_at"] == CREATED_AT + 100 and record["finished_at"] == CREATED_AT + 460
    assert record["estimated_cost_usd"] == pytest.approx(0.006)


def test_contract_events_reach_the_callback_oldest_first_exactly_once(harness: Harness):
    harness.api.page_size = 2  # several pages per poll, and the pages shift as new events arrive
    outcome = harness.run()
    ids = [e["id"] for e in harness.events]
    assert ids == harness.api.chronological_event_ids(outcome.job_id)
    assert len(ids) == len(set(ids)) == 13
    assert harness.events[0]["message"] == f"Created fine-tuning job: {outcome.job_id}"
    assert harness.events[-1]["message"] == "The job has successfully completed"
    created = [e["created_at"] for e in harness.events]
    assert created == sorted(created)
    paged = [c for c in harness.api.requests("GET", f"/fine_tuning/jobs/{outcome.job_id}/events") if "after" in c.query]
    assert paged, "the client followed OpenAI's `after` cursor"
    assert outcome.events == harness.events


def test_contract_a_rerun_resumes_the_recorded_job_and_creates_none(harness: Harness):
    harness.api.fail_on_retrieve = 2  # the first run stops polling with an API error while the job runs on
    with pytest.raises(OpenAIFinetuneError, match="HTTP 400.*record .* is kept: run again to resume"):
        harness.run()
    assert harness.record()["status"] == "validating_files"
    job_id = harness.record()["job_id"]
    uploads_before = len(harness.api.requests("POST", "/files"))

    outcome = harness.run()
    assert outcome.resumed and outcome.job_id == job_id and outcome.fine_tuned_model
    assert len(harness.api.creates()) == 1
    assert len(harness.api.requests("POST", "/files")) == uploads_before
    assert any("resuming job" in line for line in harness.logs)

    calls_before = len(harness.api.calls)
    again = harness.run()  # succeeded on record: returned without a single request
    assert again.resumed and again.fine_tuned_model == outcome.fine_tuned_model
    assert len(harness.api.calls) == calls_before


def test_contract_a_lost_record_finds_the_job_by_its_metadata_tag(harness: Harness):
    first = harness.run()
    (harness.model_dir / RECORD_FILE).unlink()
    outcome = harness.run()
    assert outcome.resumed and outcome.job_id == first.job_id
    assert len(harness.api.creates()) == 1
    assert harness.record()["job_id"] == first.job_id


def test_contract_a_job_for_other_inputs_still_running_is_not_doubled(harness: Harness):
    harness.api.script = "forever"
    harness.api.fail_on_retrieve = 3
    with pytest.raises(OpenAIFinetuneError):
        harness.run()
    job_id = harness.record()["job_id"]
    other = JobSpec(**{**SPEC.__dict__, "seed": 7})
    with pytest.raises(OpenAIFinetuneError, match=f"job {job_id} .* still running .*Refusing to start a second"):
        harness.run(spec=other)
    assert len(harness.api.creates()) == 1


def test_contract_sigint_while_polling_cancels_the_job_and_reraises(harness: Harness):
    harness.api.script = "forever"
    finetuner = harness.finetuner(poll_interval_s=0.05)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            harness.run(finetuner=finetuner)
    finally:
        timer.cancel()
    (cancel,) = harness.api.requests("POST", "/fine_tuning/jobs/ftjob-0001abcdefghijklmn/cancel")
    assert cancel.body is None
    assert harness.record()["status"] == "cancelled"
    assert harness.record()["cancelled_because"] == "the Dagster run was interrupted"
    assert harness.api.retrieves["ftjob-0001abcdefghijklmn"] >= 2


def test_contract_dagster_interrupt_during_a_request_cancels_the_job(harness: Harness):
    harness.api.script = "forever"
    harness.api.interrupt_on_retrieve = 3
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        harness.run()
    assert len(harness.api.requests("POST", "/fine_tuning/jobs/ftjob-0001abcdefghijklmn/cancel")) == 1
    assert harness.record()["status"] == "cancelled"
    # the cancelled job is not resumed: the next run starts a new one
    harness.api.script, harness.api.interrupt_on_retrieve = "succeed", None
    outcome = harness.run()
    assert outcome.job_id == "ftjob-0002abcdefghijklmn" and len(harness.api.creates()) == 2
    assert harness.record()["previous_job_ids"] == ["ftjob-0001abcdefghijklmn"]


def test_contract_budget_guard_refuses_before_any_upload_or_create(harness: Harness):
    expensive = estimate_training_cost(2_000_000, 3, SPEC.base_model, 3.0)  # $18
    with pytest.raises(BudgetExceeded, match=r"estimated at \$18\.0000 .* over budget\.max_usd \(\$5\.00\)"):
        harness.run(estimate=expensive, budget=5.0)
    unknown = estimate_training_cost(1_000, 2, "my-custom-base", None)
    with pytest.raises(
        BudgetExceeded, match="no training price .*my-custom-base.*finetune.openai.training_price_per_1m"
    ):
        harness.run(estimate=unknown)
    assert [c for c in harness.api.calls if c.method == "POST"] == []
    assert not (harness.model_dir / RECORD_FILE).exists()


def test_contract_a_failed_job_raises_naming_the_job_id_and_openai_error(harness: Harness):
    harness.api.script = "fail"
    with pytest.raises(FinetuneJobFailed) as info:
        harness.run()
    message = str(info.value)
    assert "ftjob-0001abcdefghijklmn failed" in message
    assert "invalid_training_file" in message and "Line 3 is not a dictionary" in message
    record = harness.record()
    assert record["status"] == "failed" and record["error"]["code"] == "invalid_training_file"
    assert harness.events[-1]["level"] == "error"


def test_contract_same_content_is_uploaded_once_across_sweep_points(tmp_path: Path):
    api = RecordedFineTuningAPI()
    first = Harness(api, tmp_path / "models" / "e2-b4-lr0.5")
    second = Harness(api, tmp_path / "models" / "e2-b4-lr2")
    first.run()
    outcome = second.run(
        spec=JobSpec(**{**SPEC.__dict__, "partition_key": "e2-b4-lr2", "learning_rate_multiplier": 2.0})
    )
    assert len(api.requests("POST", "/files")) == 2  # train and validation, once
    assert [c.path for c in api.requests("GET", "/files/")] == [
        "/files/file-0001TrainData",
        "/files/file-0002TrainData",
    ]
    assert outcome.record["files"]["train"] == {**first.record()["files"]["train"], "reused": True}
    registry = json.loads((tmp_path / "models" / FILES_REGISTRY_FILE).read_text())
    assert registry[BASE_URL][TRAIN.sha256]["id"] == "file-0001TrainData"

    del api.files["file-0001TrainData"]  # deleted on OpenAI's side: uploaded again
    third = Harness(api, tmp_path / "models" / "e3-b4-lr2")
    third.run(spec=JobSpec(**{**SPEC.__dict__, "partition_key": "e3-b4-lr2", "n_epochs": 3}))
    assert [u.body["filename"] for u in api.requests("POST", "/files")][2:] == ["train.chat.jsonl"]


def test_contract_rate_limited_upload_is_retried_by_the_sdk(harness: Harness):
    harness.api.rate_limit_uploads = 2
    outcome = harness.finetuner(client=sdk_client(harness.api, max_retries=2)).upload(TRAIN)
    assert outcome["id"] == "file-0001TrainData"
    assert len(harness.api.requests("POST", "/files")) == 3


def test_contract_api_key_is_sent_but_never_logged_or_recorded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("MEBOT_TEST_OPENAI_KEY", SECRET)
    chat = ChatModelSettings(provider="openai", base_url=BASE_URL, api_key_env="MEBOT_TEST_OPENAI_KEY", max_retries=1)
    client = openai_client(chat, http_client=httpx.Client(transport=httpx.MockTransport(harness.api)))
    errors = []
    with caplog.at_level(logging.DEBUG):
        outcome = harness.run(finetuner=harness.finetuner(client=client))
        harness.api.script = "fail"
        other = JobSpec(**{**SPEC.__dict__, "seed": 9})
        with pytest.raises(FinetuneJobFailed) as info:
            harness.run(spec=other, finetuner=harness.finetuner(client=client))
        errors.append(str(info.value))
    assert outcome.fine_tuned_model
    assert {c.authorization for c in harness.api.calls} == {f"Bearer {SECRET}"}  # the key went where it belongs
    assert caplog.records, "the SDK and httpx logged at DEBUG"
    texts = [
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        *harness.logs,
        *(json.dumps(e) for e in harness.events),
        *errors,
        (harness.model_dir / RECORD_FILE).read_text(),
        (harness.model_dir.parent / FILES_REGISTRY_FILE).read_text(),
    ]
    assert not [text for text in texts if SECRET in text]


def test_a_missing_api_key_is_named_before_any_request(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MEBOT_TEST_UNSET_KEY", raising=False)
    chat = ChatModelSettings(provider="openai", base_url=BASE_URL, api_key_env="MEBOT_TEST_UNSET_KEY")
    with pytest.raises(
        OpenAIFinetuneError, match="needs an API key: set the environment variable MEBOT_TEST_UNSET_KEY"
    ):
        openai_client(chat)
