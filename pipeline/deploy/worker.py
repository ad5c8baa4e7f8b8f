"""The Celery app a worker of the celery deployment runs: dagster-celery's `execute_plan` task (one Dagster step
per task), with the broker, result backend and app settings the jobs' executor uses (pipeline/deploy/__init__.py).

Started by `mebot worker` as `python -m celery -A mebot.pipeline.deploy.worker worker -Q dagster -c 1 ...`
(the Celery CLI; dagster-celery's own `dagster-celery worker start` writes its config into DAGSTER_HOME, which
here is a source folder). A task rebuilds the step's job in the worker process from the job's origin (module,
function and arguments: the settings file and data directory travel with the run), opens the instance from the
run's instance reference (PostgreSQL, at $MEBOT_POSTGRES_URL as this machine's environment says) and runs the
step there. `app` is built when first asked for, so importing this module does nothing.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from mebot.pipeline.deploy import BROKER_ENV_VAR, CELERY_APP_SETTINGS, CELERY_QUEUE, active_deployment


def worker_command(name: str, concurrency: int = 1, loglevel: str = "INFO") -> list[str]:
    """The Celery CLI that runs one worker: `concurrency` pool processes, each one step at a time, on the queue
    the jobs' executor sends to; `name` identifies it (`name@host`) in the step logs."""
    import sys

    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        __name__,
        "worker",
        "-Q",
        CELERY_QUEUE,
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        loglevel,
    ]


@cache
def _app() -> Any:
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

    active_deployment().check_environment()
    broker = os.environ[BROKER_ENV_VAR]
    executor = CeleryExecutor.for_cli(broker=broker, backend=broker, config_source=dict(CELERY_APP_SETTINGS))
    app = make_app(executor.app_args())
    # the tasks dagster-celery's own app registers: a step, and (for its run launcher) a whole run
    create_task(app)
    create_execute_job_task(app)
    create_resume_job_task(app)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # what `celery -A mebot.pipeline.deploy.worker` looks up
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
