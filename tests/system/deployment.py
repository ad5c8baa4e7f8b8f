"""Driving the celery deployment from outside, as a person would: `mebot run`, `mebot worker` (each worker its
own process group) and `mebot sweep --json`, with the environment that selects the deployment. Used by the system
test and by bench/bench_celery_workers.py (the 1-vs-2-worker timing)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from mebot.pipeline.deploy import BROKER_ENV_VAR, CELERY_HOME, DEPLOY_ENV_VAR, POSTGRES_URL_ENV_VAR
from mebot.resources.llm_cache import POSTGRES_TABLE

COMMAND_TIMEOUT_S = 900
# What the sweep reads, built on the launching machine first: crawl, chunks, questions, training files and the
# judge's validity (judge_scores' check reads it); the fine-tuned models answer without retrieval: no index.
PREPARE_SELECTION = "group:ingest or group:qa or key:finetune_dataset or +key:judge_validity"
EVAL_ASSETS = ["model_answers", "rouge_scores", "judge_scores"]
SWEEP_POINTS = ["e1-b2-lr0.5", "e1-b2-lr2"]
# The sweep of the system test and of bench/bench_celery_workers.py, sized for 2 cores.
SWEEP_SETTINGS = {
    "site": {"download_delay": 0, "local_port": 0},
    # the training file check wants 10 train examples: 13 passages, one question each, every one trained on
    # and asked again in the test split (the original protocol), no quality gates (no rewrites, no embedding of
    # every passage): enough rows from few LLM calls
    "qa": {"max_passages": 13, "questions_per_chunk": 1, "split": "none", "gates": []},
    # one thread per model: two workers on two cores, and the same arithmetic in every process (the local
    # reference trains the same adapters, bit for bit)
    "models": {"chat": {"n_threads": 1}, "judge": {"n_threads": 1}},
    "finetune": {
        "sweep": {"learning_rate_multiplier": [0.5, 2.0]},
        "local": {"max_steps": 1, "max_seq_tokens": 128, "n_threads": 1},
    },
    # 3 questions per model: a judge_scores step makes 3 calls, so it can be killed between its first and last;
    # the judge's validity on 2 synthetic pairs, no golden questions
    "eval": {"max_questions": 3, "validity_sample": 2, "golden_path": ""},
}


@dataclass
class Sweep:
    """One `mebot sweep` command: its runs (partition, run_id, success, seconds, error) and its wall time."""

    runs: list[dict]
    seconds: float

    @property
    def run_ids(self) -> list[str]:
        return [run["run_id"] for run in self.runs]


def deployment_env(root: Path, config: Path, data: Path, postgres_url: str, broker_url: str) -> dict[str, str]:
    """The environment of every process of the deployment; its Dagster home is `root/home` with the deployment's
    own instance file copied in (so that nothing is written beside the repository's)."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(CELERY_HOME / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        DEPLOY_ENV_VAR: "celery",
        POSTGRES_URL_ENV_VAR: postgres_url,
        BROKER_ENV_VAR: broker_url,
        "MEBOT_CONFIG": str(config),
        "MEBOT_DATA_DIR": str(data),
        "MEBOT_DAGSTER_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
    }


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def mebot(*args: str, env: dict[str, str], log: Path, timeout: float = COMMAND_TIMEOUT_S) -> None:
    """`mebot ARGS`, output appended to `log`; raises naming the log's end unless it exits 0."""
    with open(log, "ab") as out:
        result = subprocess.run(
            [sys.executable, "-m", "mebot.pipeline.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=timeout, cwd=log.parent,
        )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"mebot {' '.join(args)} failed ({result.returncode}): {tail(log)}")


def start_sweep(*args: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, float]:
    """`mebot sweep ARGS --json` started (its log lines to `log`), in a process group of its own with its run
    workers; finish it with finish_sweep."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mebot.pipeline.cli", "sweep", *args, "--json"],
            env=env, stdout=subprocess.PIPE, stderr=out, cwd=log.parent, start_new_session=True,
        )  # fmt: skip
    return process, time.monotonic()


def finish_sweep(process: subprocess.Popen, started: float, log: Path) -> Sweep:
    """Wait for a started sweep; past COMMAND_TIMEOUT_S its whole group (run workers included) is killed."""
    try:
        stdout, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        raise
    seconds = time.monotonic() - started
    text = stdout.decode(errors="replace")
    with open(log, "a") as out:
        out.write(text)
    start = text.find("[")
    if start < 0:
        raise AssertionError(f"mebot sweep printed no runs ({process.returncode}): {text[-2000:]} {tail(log)}")
    return Sweep(runs=json.loads(text[start:]), seconds=round(seconds, 1))


def sweep(*args: str, env: dict[str, str], log: Path) -> Sweep:
    process, started = start_sweep(*args, env=env, log=log)
    return finish_sweep(process, started, log)


def eval_selection() -> list[str]:
    return [f"--select={asset}" for asset in EVAL_ASSETS]


def start_worker(name: str, env: dict[str, str], root: Path) -> subprocess.Popen:
    """`mebot worker --name NAME` in a process group of its own (the worker and its Celery pool processes)."""
    with open(root / f"worker-{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mebot.pipeline.cli", "worker", "--name", name],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        )  # fmt: skip


def wait_ready(workers: dict[str, subprocess.Popen], root: Path, timeout_s: float = 300) -> None:
    """Until every worker logged Celery's `NAME@host ready.`."""
    deadline = time.monotonic() + timeout_s
    pending = set(workers)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            log = root / f"worker-{name}.log"
            if workers[name].poll() is not None:
                raise AssertionError(f"worker {name} exited ({workers[name].returncode}): {tail(log)}")
            if " ready." in tail(log, 50_000):
                pending.discard(name)
        time.sleep(0.5)
    if pending:
        raise AssertionError(f"workers {sorted(pending)} not ready in {timeout_s:.0f} s")


def stop_workers(workers: dict[str, subprocess.Popen]) -> None:
    """SIGTERM to each worker's process group (Celery's warm shutdown), SIGKILL to what is left after 30 s."""
    for process in workers.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in workers.values():
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        try:  # pool processes left behind by a worker that died are still in its group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class CachedCall:
    writes: int  # how many times the call was computed and stored
    written_by: str  # host:pid of the last process that stored it
    created_at: float  # when (time.time())


def cache_rows(url: str) -> dict[str, CachedCall]:
    """key -> CachedCall for every LLM call cached in PostgreSQL (`url`: libpq's spelling)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT key, writes, written_by, created_at FROM {POSTGRES_TABLE}")
        return {key: CachedCall(writes, by, created_at) for key, writes, by, created_at in cursor.fetchall()}


def pool_pids(worker_pid: int) -> set[int]:
    """The Celery pool processes of a worker now: the children of its main process."""
    try:
        children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text()
    except OSError:
        return set()
    return {int(pid) for pid in children.split()}
