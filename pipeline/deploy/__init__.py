"""Deployments: where a run's Dagster instance, its steps and its shared state live, picked by ONE variable.

`MEBOT_DEPLOY` unset (or `local`): the embedded default (dagster.yaml at the project root, the multiprocess
executor, SQLite caches). `MEBOT_DEPLOY=celery`: the instance and the LLM call cache in PostgreSQL, the `finetune`
and `evaluate` steps on Celery workers; the variables every machine needs: docs/scale-out.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # dagster is imported where it is used: `mebot` builds its parser from this package
    import dagster as dg

DEPLOY_ENV_VAR = "MEBOT_DEPLOY"
POSTGRES_URL_ENV_VAR = "MEBOT_POSTGRES_URL"
BROKER_ENV_VAR = "MEBOT_CELERY_BROKER"
# The scheme of MEBOT_POSTGRES_URL: SQLAlchemy's name for PostgreSQL through psycopg2, the driver dagster-postgres
# works with (a plain postgresql:// URL gets psycopg 3 from SQLAlchemy 2.1, under which its NOTIFY fails). The LLM
# cache reads the same URL (resources/llm_cache.py takes the driver name out for libpq).
POSTGRES_SCHEME = "postgresql+psycopg2"

# the jobs `mebot sweep` runs once per sweep partition
SWEEP_JOBS = ("finetune", "evaluate")

LOCAL = "local"
CELERY = "celery"
DEPLOYMENTS = (LOCAL, CELERY)

CELERY_HOME = Path(__file__).resolve().parent / "celery"  # DAGSTER_HOME of the celery deployment
# The Celery queue the jobs' steps go to and the workers listen on (dagster-celery's default queue).
CELERY_QUEUE = "dagster"
# Celery app settings shared by the executor (the run's side) and the workers (worker.py).
# - One step per worker process at a time, and a step is taken only by a free process: acknowledged when it ends
#   (acks_late), so a busy worker holds no second step back from an idle one (prefetch 1).
# - A worker process that dies in a step (SIGKILL, the OOM killer, a crash in native code) fails that step
#   (Celery's WorkerLostError; reject_on_worker_lost stays off, so a step that kills its process is not retried
#   forever): the run fails, and re-executing it from failure repeats no finished LLM call (the shared cache).
# - A whole worker gone (its machine) leaves its step unacknowledged: Redis hands it to another worker after the
#   visibility timeout, which must be longer than the longest step (12 h: a CPU fine-tune), or a step still
#   running would be handed out twice.
CELERY_APP_SETTINGS = {
    "worker_prefetch_multiplier": 1,
    "task_acks_late": True,
    "task_reject_on_worker_lost": False,
    "broker_connection_retry_on_startup": True,
    # dagster-celery's connection retries, and the visibility timeout
    "broker_transport_options": {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
        "visibility_timeout": 12 * 3600,
    },
    "result_expires": 7 * 24 * 3600,
}


class DeploymentError(RuntimeError):
    """MEBOT_DEPLOY names no deployment, or one of the variables the chosen one needs is missing."""


def celery_executor_config() -> dict:
    """The celery executor's config: broker and backend read from the environment of the process that runs the
    run (Dagster resolves `env` when the run starts), the shared app settings."""
    return {
        "broker": {"env": BROKER_ENV_VAR},
        "backend": {"env": BROKER_ENV_VAR},
        "config_source": dict(CELERY_APP_SETTINGS),
    }


@dataclass(frozen=True)
class Deployment:
    name: str

    @property
    def is_celery(self) -> bool:
        return self.name == CELERY

    @property
    def dagster_home(self) -> Path | None:
        """The DAGSTER_HOME this deployment's instance file lives in (None: the embedded default's)."""
        return CELERY_HOME if self.is_celery else None

    def executor_def(self) -> dg.ExecutorDefinition | None:
        """The executor of the `finetune` and `evaluate` jobs (None: the embedded default's)."""
        if not self.is_celery:
            return None
        from dagster_celery import celery_executor  # the `scale` extra; only this deployment needs it

        return celery_executor.configured(celery_executor_config(), name="celery_mebot")

    def llm_cache_url(self) -> str | dg.EnvVar:
        """Where the chat resource keeps the LLM call cache: "" (SQLite under the data directory) or the
        PostgreSQL URL, read from the environment of each process that opens the cache."""
        import dagster as dg

        return dg.EnvVar(POSTGRES_URL_ENV_VAR) if self.is_celery else ""

    def check_environment(self) -> None:
        """Raise DeploymentError naming every variable this deployment needs and lacks."""
        if not self.is_celery:
            return
        missing = [name for name in (POSTGRES_URL_ENV_VAR, BROKER_ENV_VAR) if not os.environ.get(name)]
        if missing:
            raise DeploymentError(
                f"{DEPLOY_ENV_VAR}=celery needs {' and '.join(missing)}: e.g. "
                f"{POSTGRES_URL_ENV_VAR}={POSTGRES_SCHEME}://mebot:PASSWORD@db-host:5432/mebot and "
                f"{BROKER_ENV_VAR}=redis://broker-host:6379/0 (docs/scale-out.md)"
            )
        url = os.environ[POSTGRES_URL_ENV_VAR]
        if not url.startswith(f"{POSTGRES_SCHEME}://"):
            scheme = url.split("://", 1)[0] if "://" in url else "(none)"
            raise DeploymentError(
                f"{POSTGRES_URL_ENV_VAR} must start with {POSTGRES_SCHEME}:// (it starts with {scheme}://): "
                "dagster-postgres works with the psycopg2 driver, and SQLAlchemy picks psycopg 3 for other schemes"
            )


def active_deployment() -> Deployment:
    """The deployment `$MEBOT_DEPLOY` names (unset or empty: local, the embedded default)."""
    name = (os.environ.get(DEPLOY_ENV_VAR) or LOCAL).strip().lower()
    if name not in DEPLOYMENTS:
        raise DeploymentError(f"{DEPLOY_ENV_VAR}={name!r} is not a deployment; use one of: {', '.join(DEPLOYMENTS)}")
    return Deployment(name)
