"""OpenAI fine-tuning jobs through the official `openai` SDK: resumable, budget-guarded, cancelled with the run.

`OpenAIFinetuner.run()` takes one sweep point from its training files to a fine-tuned model id without ever paying
twice for the same spec. The API key travels only in the Authorization header and is redacted from every message
this module writes. What a job is asked for and its cost: `openai_finetune_inputs.py`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import openai

from mebot.resources.clock import utc_now
from mebot.resources.endpoints import PLACEHOLDER_API_KEY
from mebot.resources.files import write_json_atomically
from mebot.resources.hashing import json_hash
from mebot.resources.layout import OPENAI_FILES_REGISTRY, OPENAI_JOB_FILE
from mebot.resources.openai_finetune_inputs import (
    CostEstimate,
    FinetuneJobFailed,
    JobSpec,
    OpenAIFinetuneError,
    TrainingFile,
    check_budget,
    endpoint_url,
    estimate_training_cost,
    openai_client,
)

__all__ = [
    "FILES_REGISTRY_FILE",
    "RECORD_FILE",
    "CostEstimate",
    "FinetuneJobFailed",
    "FinetuneOutcome",
    "JobSpec",
    "OpenAIFinetuneError",
    "OpenAIFinetuner",
    "TrainingFile",
    "check_budget",
    "endpoint_url",
    "estimate_training_cost",
    "openai_client",
]

RECORD_FILE = OPENAI_JOB_FILE
FILES_REGISTRY_FILE = OPENAI_FILES_REGISTRY
RECORD_VERSION = 1
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
EVENTS_PAGE_SIZE = 100
SPEC_METADATA_KEY = "mebot_spec"
PARTITION_METADATA_KEY = "mebot_partition"
METRIC_KEYS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
# What a terminated Dagster run raises in the step's thread (SIGINT/SIGTERM through Dagster's handlers).
INTERRUPTS = (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)


# --------------------------------------------------------------------------------------------------- outcome


@dataclass
class FinetuneOutcome:
    """A succeeded job: its record (as saved), and what this run did to get it."""

    record: dict[str, Any]
    record_path: Path
    resumed: bool  # an existing job was returned or polled; no job was created by this run
    events: list[dict[str, Any]] = field(default_factory=list)  # the events this run received, oldest first

    @property
    def job_id(self) -> str:
        return self.record["job_id"]

    @property
    def fine_tuned_model(self) -> str:
        return self.record["fine_tuned_model"]

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return self.record.get("checkpoints") or []

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Per training step (from the metrics events): step, train_loss, and the validation losses when given."""
        return self.record.get("metrics") or []


# ------------------------------------------------------------------------------------------------ finetuner


class OpenAIFinetuner:
    """Runs the fine-tuning job of one sweep point; its record lives at `<model_dir>/openai_job.json`."""

    def __init__(
        self,
        client: openai.OpenAI,
        model_dir: Path,
        *,
        poll_interval_s: float,
        files_registry: Path | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.client = client
        self.endpoint = str(client.base_url).rstrip("/")
        self.record_path = Path(model_dir) / RECORD_FILE
        self.files_registry = files_registry or Path(model_dir).parent / FILES_REGISTRY_FILE
        self.poll_interval_s = poll_interval_s
        self._log = log or (lambda _message: None)

    # ------------------------------------------------------------------------------------------- public

    def run(
        self,
        spec: JobSpec,
        train: TrainingFile,
        validation: TrainingFile | None,
        *,
        estimate: CostEstimate,
        budget_usd: float,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> FinetuneOutcome:
        """The sweep point's fine-tuned model: from its record, an existing job, or a new one.

        A record (`openai_job.json`) for the same spec (endpoint, base model, suffix, seed, hyperparameters, the
        files' sha256) is resumed; without one, a job tagged with the spec id (metadata `mebot_spec`) is looked up,
        so a record lost between the create call and its write starts no second job. The budget guard runs before
        anything is uploaded; a file already uploaded with the same sha256 (registry `openai_files.json`) is
        reused; the record is written atomically right after the create call, before polling, and follows every
        status change; events go to `on_event`, deduplicated, oldest first. Retries are the SDK's (`max_retries`).
        Raises BudgetExceeded before creating a job over budget, FinetuneJobFailed when the job fails or is
        cancelled, OpenAIFinetuneError when the API refuses; an interrupt while polling cancels the job."""
        spec_id = self.spec_id(spec, train, validation)
        record = self.load_record()
        previous_jobs: list[str] = []
        if record is not None and record.get("job_id"):
            same = record.get("spec_id") == spec_id
            if same and record.get("status") == "succeeded" and record.get("fine_tuned_model"):
                self.log(
                    f"job {record['job_id']} already succeeded: {record['fine_tuned_model']} (from {self.record_path})"
                )
                return FinetuneOutcome(record, self.record_path, resumed=True)
            if same and record.get("status") not in TERMINAL_STATUSES:
                self.log(f"resuming job {record['job_id']} (status {record.get('status')}); no new job is created")
                return self._follow(record, resumed=True, on_event=on_event)
            if not same and record.get("status") not in TERMINAL_STATUSES:
                self._refuse_if_other_job_active(record)
            previous_jobs = [*record.get("previous_job_ids", []), record["job_id"]]
            if same:
                self.log(f"job {record['job_id']} ended {record.get('status')}; starting a new one")

        tagged = self._find_tagged_job(spec_id, exclude=set(previous_jobs))
        if tagged is not None:
            self.log(f"found job {tagged.id} ({tagged.status}) for these inputs on {self.endpoint}; resuming it")
            record = self._new_record(spec, spec_id, estimate, self._file_entries(tagged, train, validation))
            record["previous_job_ids"] = previous_jobs
            self._update_from_job(record, tagged)
            self.save_record(record)
            return self._follow(record, resumed=True, on_event=on_event)

        check_budget(estimate, budget_usd)
        files = {"train": self.upload(train)}
        if validation is not None:
            files["validation"] = self.upload(validation)
        job = self._call(
            "creating the fine-tuning job",
            self.client.fine_tuning.jobs.create,
            model=spec.base_model,
            training_file=files["train"]["id"],
            validation_file=files["validation"]["id"] if "validation" in files else openai.omit,
            suffix=spec.suffix or openai.omit,
            seed=spec.seed,
            method=spec.method(),
            metadata={PARTITION_METADATA_KEY: spec.partition_key, SPEC_METADATA_KEY: spec_id},
        )
        record = self._new_record(spec, spec_id, estimate, files)
        record["previous_job_ids"] = previous_jobs
        self._update_from_job(record, job)
        self.save_record(record)  # before polling: from here on a rerun resumes this job
        self.log(f"created job {job.id} ({job.status}) for {spec.base_model}; record {self.record_path}")
        return self._follow(record, resumed=False, on_event=on_event)

    def spec_id(self, spec: JobSpec, train: TrainingFile, validation: TrainingFile | None) -> str:
        """16 hex digits naming everything that makes the job what it is (the endpoint included)."""
        payload = {
            "endpoint": self.endpoint,
            "base_model": spec.base_model,
            "suffix": spec.suffix,
            "seed": spec.seed,
            "hyperparameters": spec.hyperparameters(),
            "train_sha256": train.sha256,
            "validation_sha256": validation.sha256 if validation is not None else None,
        }
        return json_hash(payload, length=16)

    def upload(self, file: TrainingFile) -> dict[str, Any]:
        """Upload with purpose "fine-tune", or reuse the file uploaded earlier with the same sha256."""
        sha = file.sha256
        registry = self._read_registry()
        known = registry.get(self.endpoint, {}).get(sha)
        if known:
            try:
                found = self.client.files.retrieve(known["id"])
            except openai.NotFoundError:
                found = None  # deleted since: upload again
            except openai.APIError as exc:
                raise self._error(f"checking uploaded file {known['id']}", exc) from None
            if found is not None and found.purpose == "fine-tune" and found.bytes == len(file.content):
                self.log(f"{file.name}: reusing uploaded file {found.id} (same sha256)")
                return {"id": found.id, "sha256": sha, "bytes": found.bytes, "examples": file.examples, "reused": True}
        uploaded = self._call(
            f"uploading {file.name}",
            self.client.files.create,
            file=(file.name, file.content, "application/jsonl"),
            purpose="fine-tune",
        )
        # Re-read just before writing: another sweep point may have added its upload meanwhile. A lost update
        # only costs a second upload later, never a wrong file (entries are keyed by content).
        registry = self._read_registry()
        registry.setdefault(self.endpoint, {})[sha] = {
            "id": uploaded.id,
            "bytes": uploaded.bytes,
            "filename": file.name,
            "uploaded_at": utc_now(),
        }
        write_json_atomically(self.files_registry, registry)
        self.log(f"{file.name}: uploaded as {uploaded.id} ({uploaded.bytes} bytes, {file.examples} examples)")
        return {"id": uploaded.id, "sha256": sha, "bytes": uploaded.bytes, "examples": file.examples, "reused": False}

    def new_events(self, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        """The job's events not in `seen` (which this updates), oldest first. OpenAI lists them newest first,
        so pages are read until an event already seen."""
        fresh: list[Any] = []
        after: Any = openai.omit
        while True:
            page = self._call(
                "listing the job's events",
                self.client.fine_tuning.jobs.list_events,
                job_id,
                limit=EVENTS_PAGE_SIZE,
                after=after,
            )
            reached_seen = False
            for event in page.data:
                if event.id in seen:
                    reached_seen = True
                    break
                fresh.append(event)
            if reached_seen or not page.data or not page.has_more:
                break
            after = page.data[-1].id
        events: list[dict[str, Any]] = []
        for event in reversed(fresh):
            if event.id in seen:  # a page boundary that moved while new events arrived
                continue
            seen.add(event.id)
            events.append(event.model_dump(mode="json"))
        events.sort(key=lambda e: e["created_at"])  # stable: same-second events keep OpenAI's order
        return events

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's checkpoints, by step: id, step, model (a usable checkpoint model id) and the metrics."""
        page = self._call(
            "listing the job's checkpoints", self.client.fine_tuning.jobs.checkpoints.list, job_id, limit=100
        )
        rows = []
        for checkpoint in page.data:
            metrics = checkpoint.metrics.model_dump() if checkpoint.metrics is not None else {}
            rows.append(
                {
                    "id": checkpoint.id,
                    "step": checkpoint.step_number,
                    "model": checkpoint.fine_tuned_model_checkpoint,
                    **{k: metrics[k] for k in METRIC_KEYS if metrics.get(k) is not None},
                }
            )
        return sorted(rows, key=lambda row: row["step"])

    def cancel(self, job_id: str) -> str:
        """Cancel the job; returns the status OpenAI reports afterwards."""
        return self._call("cancelling the job", self.client.fine_tuning.jobs.cancel, job_id).status

    # ------------------------------------------------------------------------------------------ record

    def load_record(self) -> dict[str, Any] | None:
        if not self.record_path.is_file():
            return None
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OpenAIFinetuneError(
                f"{self.record_path} cannot be read ({exc}); it names this sweep point's OpenAI job: restore it, "
                "or move it away to let a new job start"
            ) from None
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            raise OpenAIFinetuneError(
                f"{self.record_path} is not a version {RECORD_VERSION} job record; move it away to let a new job start"
            )
        return record

    def save_record(self, record: dict[str, Any]) -> None:
        record["updated_at"] = utc_now()
        write_json_atomically(self.record_path, record)

    # ----------------------------------------------------------------------------------------- polling

    def _follow(
        self, record: dict[str, Any], *, resumed: bool, on_event: Callable[[dict[str, Any]], None] | None
    ) -> FinetuneOutcome:
        """Poll the record's job to its end, passing new events on; cancel it when the run is interrupted."""
        job_id = record["job_id"]
        seen: set[str] = set()
        steps = {int(m["step"]): m for m in record.get("metrics") or []}
        received: list[dict[str, Any]] = []
        try:
            while True:
                job = self._call("checking the job's status", self.client.fine_tuning.jobs.retrieve, job_id)
                for event in self.new_events(job_id, seen):
                    received.append(event)
                    metric = _metric_of(event)
                    if metric is not None:
                        steps[metric["step"]] = metric
                    if on_event is not None:
                        on_event(event)
                status_changed = job.status != record.get("status")
                self._update_from_job(record, job)
                record["metrics"] = [steps[s] for s in sorted(steps)]
                if status_changed:
                    self.save_record(record)
                    self.log(f"job {job_id}: {job.status}")
                if job.status in TERMINAL_STATUSES:
                    break
                time.sleep(self.poll_interval_s)
        except INTERRUPTS:
            self._cancel_after_interrupt(record)
            raise
        if record["status"] != "succeeded":
            self.save_record(record)
            raise self._failure(record)
        self._finish(record)
        return FinetuneOutcome(record, self.record_path, resumed=resumed, events=received)

    def _finish(self, record: dict[str, Any]) -> None:
        record["checkpoints"] = self.checkpoints(record["job_id"])
        if not record.get("metrics"):  # an endpoint without metrics events: the checkpoints' metrics stand in
            record["metrics"] = [
                {k: v for k, v in c.items() if k not in ("id", "model")} for c in record["checkpoints"]
            ]
        self.save_record(record)

    def _cancel_after_interrupt(self, record: dict[str, Any]) -> None:
        job_id = record["job_id"]
        try:
            status = self.cancel(job_id)
        except (OpenAIFinetuneError, openai.APIError) as exc:
            self.log(
                f"the run was interrupted and cancelling job {job_id} failed ({self._redact(str(exc))}); it may "
                "still be running and billed: cancel it in OpenAI's dashboard, or run again to resume it"
            )
            return
        record["status"] = status
        record["cancelled_because"] = "the Dagster run was interrupted"
        self.save_record(record)
        self.log(f"the run was interrupted: cancelled job {job_id} (status {status})")

    def _failure(self, record: dict[str, Any]) -> FinetuneJobFailed:
        job_id, status = record["job_id"], record["status"]
        error = record.get("error") or {}
        if status == "failed":
            detail = ": ".join(str(error[k]) for k in ("code", "message") if error.get(k)) or "no error given"
            if error.get("param"):
                detail += f" (parameter {error['param']})"
            return FinetuneJobFailed(
                self._redact(
                    f"OpenAI fine-tuning job {job_id} failed: {detail}. Its record is {self.record_path}; run again "
                    "to start a new job once the cause is fixed"
                )
            )
        return FinetuneJobFailed(
            f"OpenAI fine-tuning job {job_id} was cancelled; run again to start a new job ({self.record_path})"
        )

    # ----------------------------------------------------------------------------------------- helpers

    def log(self, message: str) -> None:
        self._log(self._redact(message))

    def _refuse_if_other_job_active(self, record: dict[str, Any]) -> None:
        """The record's job was made for other inputs; starting another job while it runs would pay for two."""
        job_id = record["job_id"]
        if record.get("endpoint") == self.endpoint:
            try:
                status = self.client.fine_tuning.jobs.retrieve(job_id).status
            except openai.NotFoundError:
                return
            except openai.APIError as exc:
                raise self._error(f"checking the earlier job {job_id}", exc) from None
            if status in TERMINAL_STATUSES:
                return
        else:
            status = record.get("status")
        raise OpenAIFinetuneError(
            f"job {job_id} of sweep point {record.get('partition_key')} is still {status} on {record.get('endpoint')}, "
            "made for other inputs (training files, hyperparameters, model or endpoint changed since). Refusing to "
            "start a second paid job: wait for it to end or cancel it (OpenAI's dashboard), then run again; or move "
            f"{self.record_path} away to start a new job anyway"
        )

    def _find_tagged_job(self, spec_id: str, exclude: set[str]) -> Any:
        """The newest job on the endpoint tagged with this spec id that has not failed or been cancelled."""
        page = self._call(
            "looking up earlier jobs",
            self.client.fine_tuning.jobs.list,
            metadata={SPEC_METADATA_KEY: spec_id},
            limit=20,
        )
        # The filter is checked here as well: a server that ignores it lists every job.
        usable = [
            job
            for job in page.data
            if (job.metadata or {}).get(SPEC_METADATA_KEY) == spec_id
            and job.status not in ("failed", "cancelled")
            and job.id not in exclude
        ]
        return max(usable, key=lambda job: job.created_at) if usable else None

    def _new_record(
        self, spec: JobSpec, spec_id: str, estimate: CostEstimate, files: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "partition_key": spec.partition_key,
            "point": spec.hyperparameters(),
            "base_model": spec.base_model,
            "suffix": spec.suffix,
            "seed": spec.seed,
            "spec_id": spec_id,
            "endpoint": self.endpoint,
            "files": files,
            "estimated_training_tokens": estimate.billed_tokens,
            "estimated_cost_usd": estimate.usd,
            "job_id": None,
            "status": None,
            "fine_tuned_model": None,
            "created_at": None,
            "finished_at": None,
            "trained_tokens": None,
            "error": None,
            "checkpoints": [],
            "metrics": [],
        }

    @staticmethod
    def _file_entries(job: Any, train: TrainingFile, validation: TrainingFile | None) -> dict[str, dict[str, Any]]:
        files = {"train": {"id": job.training_file, "sha256": train.sha256, "examples": train.examples}}
        if validation is not None and job.validation_file:
            files["validation"] = {
                "id": job.validation_file,
                "sha256": validation.sha256,
                "examples": validation.examples,
            }
        return files

    @staticmethod
    def _update_from_job(record: dict[str, Any], job: Any) -> None:
        record["job_id"] = job.id
        record["status"] = job.status
        record["fine_tuned_model"] = job.fine_tuned_model
        record["created_at"] = job.created_at
        record["finished_at"] = job.finished_at
        record["trained_tokens"] = job.trained_tokens
        error = job.error
        record["error"] = (
            {"code": error.code, "message": error.message, "param": error.param}
            if error is not None and (getattr(error, "message", None) or getattr(error, "code", None))
            else None
        )

    def _read_registry(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            registry = json.loads(self.files_registry.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # only a cache of uploads: unreadable means upload again
        return registry if isinstance(registry, dict) else {}

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except openai.APIError as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: openai.APIError) -> OpenAIFinetuneError:
        record_note = (
            f" The job record {self.record_path} is kept: run again to resume." if self.record_path.is_file() else ""
        )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            hint = ""
            if status in (401, 403):
                hint = " (the API key was refused: check the variable named by models.chat.api_key_env)"
            elif status == 404:
                hint = f" (does {self.endpoint} offer OpenAI's fine-tuning API? it is models.chat.base_url)"
            message = f"{what} at {self.endpoint} was refused: HTTP {status}: {exc.message}{hint}.{record_note}"
        else:
            message = (
                f"{what}: {self.endpoint} could not be reached after {self.client.max_retries} retries "
                f"({type(exc).__name__}: {exc}).{record_note}"
            )
        return OpenAIFinetuneError(self._redact(message))

    def _redact(self, text: str) -> str:
        key = self.client.api_key
        if key and key != PLACEHOLDER_API_KEY and len(key) >= 8:
            text = text.replace(key, "***")
        return text


def _metric_of(event: dict[str, Any]) -> dict[str, Any] | None:
    """The training metrics of a `metrics` event ({"step": ..., "train_loss": ...}), or None."""
    data = event.get("data")
    if event.get("type") != "metrics" or not isinstance(data, dict) or data.get("step") is None:
        return None
    metric = {"step": int(data["step"])}
    metric.update({k: float(data[k]) for k in METRIC_KEYS if isinstance(data.get(k), int | float)})
    return metric
