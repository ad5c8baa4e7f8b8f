"""The Celery app a worker of the celery deployment runs: dagster-celery's `execute_plan` task, one Dagster step per
task, started by `mebot worker` through the Celery CLI (dagster-celery's own CLI would write its config into
DAGSTER_HOME, here a source folder). A task rebuilds the step's job from its origin and opens the run's instance;
`app` is built when first asked for, so importing this module does nothing."""

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
