"""OpenAI's fine-tuning API as recorded: `RecordedFineTuningAPI` answers with response bodies shaped as OpenAI returns
them (file objects, a job going validating_files → running → succeeded, event pages newest first, checkpoints with
metrics) and records every request; it plugs into the SDK as an `httpx.MockTransport`, and into a loopback HTTP
server for the asset-level test (tests/assets/finetune/test_openai_job.py)."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import dagster as dg
import httpx

BASE_URL = "https://api.openai.com/v1"
CREATED_AT = 1_730_000_000
ORG = "org-mebottest"
TOTAL_STEPS = 6
SECRET = "sk-proj-contract-test-0123456789abcdef"


# ------------------------------------------------------------------------------------- the recorded API


@dataclass
class Call:
    method: str
    path: str  # without the /v1 prefix
    query: dict[str, str]
    body: Any  # parsed JSON, or {"purpose", "filename", "content"} for a multipart upload, or None
    authorization: str


@dataclass
class RecordedFineTuningAPI:
    """OpenAI's fine-tuning endpoints as recorded. `script`: "succeed" (validating_files, validating_files,
    running, running, succeeded), "fail" (validating_files, then failed with an invalid-file error) or "forever"
    (stays running). `page_size` caps event pages (OpenAI pages at the requested limit; a small cap makes the
    client page). `interrupt_on_retrieve`: raise Dagster's interrupt from inside that retrieve request (1-based),
    as a terminated run's signal handler does wherever the step's thread happens to be."""

    script: str = "succeed"
    page_size: int = 100
    interrupt_on_retrieve: int | None = None
    fail_on_retrieve: int | None = None  # answer that retrieve with HTTP 400
    rate_limit_uploads: int = 0  # answer the first N uploads with HTTP 429 (retry-after-ms: 10)
    calls: list[Call] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    events: dict[str, list[dict]] = field(default_factory=dict)  # oldest first
    retrieves: dict[str, int] = field(default_factory=dict)
    uploaded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            return self._handle(request)

    # ------------------------------------------------------------------------------------------ queries

    def requests(self, method: str, path_prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def creates(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path == "/fine_tuning/jobs"]

    def chronological_event_ids(self, job_id: str) -> list[str]:
        return [e["id"] for e in self.events[job_id]]

    # ------------------------------------------------------------------------------------------ routing

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1")
        query = dict(
            parse_qsl(request.url.query.decode() if isinstance(request.url.query, bytes) else request.url.query)
        )
        body = self._body(request)
        self.calls.append(Call(request.method, path, query, body, request.headers.get("authorization", "")))
        parts = path.strip("/").split("/")
        if request.method == "POST" and parts == ["files"]:
            return self._upload(body)
        if request.method == "GET" and len(parts) == 2 and parts[0] == "files":
            return self._file(parts[1])
        if parts[:2] == ["fine_tuning", "jobs"]:
            if len(parts) == 2:
                return self._create(body) if request.method == "POST" else self._list_jobs(query)
            job_id = parts[2]
            if job_id not in self.jobs:
                return _error(404, f"No fine-tuning job found with id '{job_id}'", param="fine_tune_id")
            if len(parts) == 3:
                return self._retrieve(job_id)
            if parts[3] == "events":
                return self._events(job_id, query)
            if parts[3] == "checkpoints":
                return self._checkpoints(job_id)
            if parts[3] == "cancel" and request.method == "POST":
                return self._cancel(job_id)
        return _error(404, f"Invalid URL ({request.method} {request.url.path})")

    @staticmethod
    def _body(request: httpx.Request) -> Any:
        content = request.read()
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            message = email.message_from_bytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + content, policy=email.policy.HTTP
            )
            fields: dict[str, Any] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if part.get_filename():
                    fields["filename"] = part.get_filename()
                    fields["content"] = part.get_payload(decode=True)
                else:
                    fields[name] = part.get_payload(decode=True).decode()
            return fields
        return json.loads(content) if content else None

    # ---------------------------------------------------------------------------------------- endpoints

    def _upload(self, body: dict) -> httpx.Response:
        if self.rate_limit_uploads > 0:
            self.rate_limit_uploads -= 1
            return _error(429, "Rate limit reached for requests", headers={"retry-after-ms": "10"})
        self.uploaded += 1
        file_id = f"file-{self.uploaded:04d}TrainData"
        self.files[file_id] = {
            "object": "file",
            "id": file_id,
            "purpose": body["purpose"],
            "filename": body["filename"],
            "bytes": len(body["content"]),
            "created_at": CREATED_AT + self.uploaded,
            "expires_at": None,
            "status": "processed",
            "status_details": None,
        }
        return httpx.Response(200, json=self.files[file_id])

    def _file(self, file_id: str) -> httpx.Response:
        if file_id not in self.files:
            return _error(404, f"No such File object: {file_id}", param="id")
        return httpx.Response(200, json=self.files[file_id])

    def _create(self, body: dict) -> httpx.Response:
        job_id = f"ftjob-{len(self.jobs) + 1:04d}abcdefghijklmn"
        hyper = body["method"]["supervised"]["hyperparameters"]
        self.jobs[job_id] = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": body["model"],
            "created_at": CREATED_AT + 100,
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": ORG,
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": hyper,
            "trained_tokens": None,
            "error": None,
            "user_provided_suffix": body.get("suffix"),
            "seed": body.get("seed", 1234),
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": body["method"],
        }
        self.events[job_id] = []
        self.retrieves[job_id] = 0
        self._event(job_id, f"Created fine-tuning job: {job_id}")
        self._event(job_id, f"Validating training file: {body['training_file']}")
        return httpx.Response(200, json=self.jobs[job_id])

    def _list_jobs(self, query: dict[str, str]) -> httpx.Response:
        wanted = {k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[")}
        jobs = [
            job
            for job in sorted(self.jobs.values(), key=lambda j: j["id"], reverse=True)
            if all((job["metadata"] or {}).get(k) == v for k, v in wanted.items())
        ]
        return httpx.Response(200, json={"object": "list", "data": jobs, "has_more": False})

    def _retrieve(self, job_id: str) -> httpx.Response:
        self.retrieves[job_id] += 1
        n = self.retrieves[job_id]
        if self.interrupt_on_retrieve == n:
            raise dg.DagsterExecutionInterruptedError("Execution was interrupted")
        if self.fail_on_retrieve == n:
            return _error(400, "Something about this request is invalid")
        job = self.jobs[job_id]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return httpx.Response(200, json=job)
        if self.script == "fail" and n >= 2:
            job.update(
                status="failed",
                finished_at=CREATED_AT + 160,
                error={
                    "code": "invalid_training_file",
                    "message": "The job failed due to an invalid training file. Expected file to have JSONL format, "
                    "where every line is a valid JSON dictionary. Line 3 is not a dictionary.",
                    "param": "training_file",
                },
            )
            self._event(job_id, "Training file validation failed", level="error")
        elif self.script == "forever" and n >= 2:
            job["status"] = "running"
        elif self.script == "succeed" and n == 3:
            job["status"] = "running"
            self._event(job_id, "Files validated, moving job to queued state")
            self._event(job_id, "Fine-tuning job started", same_second=True)
            for step in range(1, 4):
                self._metrics(job_id, step)
        elif self.script == "succeed" and n == 4:
            for step in range(4, TOTAL_STEPS + 1):
                self._metrics(job_id, step)
        elif self.script == "succeed" and n >= 5:
            model = f"ft:{job['model']}:{ORG}:{job['user_provided_suffix']}:AbC123xY"
            self._event(job_id, f"Checkpoint created at step {TOTAL_STEPS // 2}")
            self._event(job_id, f"New fine-tuned model created: {model}")
            self._event(job_id, "The job has successfully completed")
            job.update(status="succeeded", fine_tuned_model=model, finished_at=CREATED_AT + 460, trained_tokens=5_040)
        return httpx.Response(200, json=job)

    def _events(self, job_id: str, query: dict[str, str]) -> httpx.Response:
        newest_first = list(reversed(self.events[job_id]))
        start = 0
        if "after" in query:
            start = next(i for i, e in enumerate(newest_first) if e["id"] == query["after"]) + 1
        limit = min(int(query.get("limit", 20)), self.page_size)
        page = newest_first[start : start + limit]
        return httpx.Response(200, json={"object": "list", "data": page, "has_more": start + limit < len(newest_first)})

    def _checkpoints(self, job_id: str) -> httpx.Response:
        job = self.jobs[job_id]
        data = []
        for step in (TOTAL_STEPS, TOTAL_STEPS // 2):  # newest first, as OpenAI lists them
            data.append(
                {
                    "object": "fine_tuning.job.checkpoint",
                    "id": f"ftckpt_{step:03d}zyxwvut",
                    "created_at": CREATED_AT + 200 + step,
                    "fine_tuned_model_checkpoint": f"ft:{job['model']}:{ORG}:mebot:AbC123xY:ckpt-step-{step}",
                    "fine_tuning_job_id": job_id,
                    "metrics": {
                        "step": float(step),
                        "train_loss": recorded_loss(step),
                        "train_mean_token_accuracy": 0.5 + step / 20,
                        "valid_loss": recorded_loss(step) + 0.2,
                        "valid_mean_token_accuracy": 0.45 + step / 20,
                        "full_valid_loss": recorded_loss(step) + 0.25 if step == TOTAL_STEPS else None,
                        "full_valid_mean_token_accuracy": 0.7 if step == TOTAL_STEPS else None,
                    },
                    "step_number": step,
                }
            )
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": data,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
                "has_more": False,
            },
        )

    def _cancel(self, job_id: str) -> httpx.Response:
        job = self.jobs[job_id]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return _error(400, f"Job {job_id} has already completed and cannot be cancelled")
        job.update(status="cancelled", finished_at=CREATED_AT + 300)
        self._event(job_id, "Fine-tuning job cancelled")
        return httpx.Response(200, json=job)

    # ------------------------------------------------------------------------------------------ helpers

    def _event(self, job_id: str, message: str, *, level: str = "info", data: Any = None, same_second: bool = False):
        events = self.events[job_id]
        n = sum(len(e) for e in self.events.values()) + 1
        previous = events[-1]["created_at"] if events else CREATED_AT + 100
        events.append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{n:04d}QrStUvWxYz",
                "created_at": previous if same_second else previous + 1,
                "level": level,
                "message": message,
                "data": data,
                "type": "metrics" if data else "message",
            }
        )

    def _metrics(self, job_id: str, step: int) -> None:
        data = {
            "step": step,
            "train_loss": recorded_loss(step),
            "total_steps": TOTAL_STEPS,
            "train_mean_token_accuracy": 0.5 + step / 20,
        }
        if step % 3 == 0:
            data["valid_loss"] = recorded_loss(step) + 0.2
            data["valid_mean_token_accuracy"] = 0.45 + step / 20
        if step == TOTAL_STEPS:
            data["full_valid_loss"] = recorded_loss(step) + 0.25
            data["full_valid_mean_token_accuracy"] = 0.7
        self._event(job_id, f"Step {step}/{TOTAL_STEPS}: training loss={recorded_loss(step):.4f}", data=data)


def recorded_loss(step: int) -> float:
    return round(2.4 - 0.3 * step, 4)


def _error(status: int, message: str, *, param: str | None = None, headers: dict | None = None) -> httpx.Response:
    kind = {429: "requests", 404: "invalid_request_error"}.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return httpx.Response(status, json=body, headers=headers)
