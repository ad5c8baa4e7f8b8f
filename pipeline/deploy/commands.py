"""The deployment's `mebot` commands: `mebot worker` (a Celery worker) and `mebot sweep` (a job per sweep
partition, all at once). pipeline/cli.py registers them with `add_commands` and runs them with `run_command`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from mebot.pipeline.deploy import CELERY, DEPLOY_ENV_VAR, SWEEP_JOBS, DeploymentError, active_deployment


def add_commands(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser(
        "worker",
        help=f"run a Celery worker ({DEPLOY_ENV_VAR}=celery): it executes steps of the finetune and evaluate runs",
    )
    worker.add_argument("--name", default="mebot", help="the worker's name in step logs: NAME@host (default mebot)")
    worker.add_argument(
        "--concurrency", type=int, default=1, help="steps at once, one process each (default 1: a step uses the cores)"
    )
    worker.add_argument("--loglevel", default="INFO")
    sweep = commands.add_parser(
        "sweep",
        help="run the finetune or evaluate job once per sweep partition, all at once, and wait "
        f"(steps on Celery workers with {DEPLOY_ENV_VAR}=celery)",
    )
    sweep.add_argument("job", nargs="?", choices=SWEEP_JOBS, help="finetune or evaluate")
    sweep.add_argument("--partitions", default="", help="comma-separated partition keys (default: every sweep point)")
    sweep.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="ASSET",
        help="run only these assets of the job (repeat), e.g. --select finetuned_models once the training files exist",
    )
    sweep.add_argument(
        "--local", action="store_true", help="the runs one after another in this process (same instance and caches)"
    )
    sweep.add_argument(
        "--from-failure", metavar="RUN_ID", default=None, help="re-execute a failed run from its failed steps"
    )
    sweep.add_argument("--json", action="store_true", help="print the runs as JSON")


def deployment_home() -> Path | None:
    """DAGSTER_HOME of the deployment $MEBOT_DEPLOY names (None: the embedded default's); exits on a bad name."""
    try:
        return active_deployment().dagster_home
    except DeploymentError as exc:
        print(f"mebot: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_command(args: argparse.Namespace, config: Path, settings) -> int | None:
    """Run `args.command` if it is one of these commands (its exit code); None otherwise."""
    if args.command == "worker":
        return cmd_worker(args.name, args.concurrency, args.loglevel)
    if args.command == "sweep":
        return cmd_sweep(args, config, settings)
    return None


def cmd_worker(name: str, concurrency: int, loglevel: str) -> int:
    from mebot.pipeline.deploy.worker import worker_command

    deployment = active_deployment()
    if deployment.name != CELERY:
        print(f"mebot worker: workers serve the celery deployment; set {DEPLOY_ENV_VAR}=celery", file=sys.stderr)
        return 2
    try:
        deployment.check_environment()
    except DeploymentError as exc:
        print(f"mebot worker: {exc}", file=sys.stderr)
        return 2
    command = worker_command(name, concurrency, loglevel)
    print(f"mebot worker: {' '.join(command)}", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


def cmd_sweep(args: argparse.Namespace, config: Path, settings) -> int:
    from mebot.assets.finetune.dataset import sweep_partitions
    from mebot.pipeline.deploy.sweep import reexecute_in_run_worker, sweep
    from mebot.resources.layout import data_dir_from_env

    deployment = active_deployment()
    if args.from_failure:
        runs = [reexecute_in_run_worker(args.from_failure)]
    elif not args.job:
        print("mebot sweep: name the job (finetune or evaluate), or give --from-failure RUN_ID", file=sys.stderr)
        return 2
    else:
        known = sweep_partitions(settings).get_partition_keys()
        partitions = [key.strip() for key in args.partitions.split(",") if key.strip()] or known
        unknown = sorted(set(partitions) - set(known))
        if unknown:
            known_keys = ", ".join(known)
            print(f"mebot sweep: not sweep partitions: {', '.join(unknown)} (known: {known_keys})", file=sys.stderr)
            return 2
        # Celery runs only orchestrate (workers bound the CPU): all at once; runs whose steps run on this machine
        # go run.max_parallel at a time, as `mebot run` does (--local: one after another).
        at_once = None if deployment.is_celery else settings.run.max_parallel
        print(
            f"mebot sweep: {args.job} for {', '.join(partitions)} ({deployment.name} deployment"
            + (", one run after another in this process" if args.local else "")
            + ")",
            flush=True,
        )
        runs = sweep(args.job, config, data_dir_from_env(), partitions, args.select, args.local, at_once)
    if args.json:
        print(json.dumps([asdict(run) for run in runs], indent=2))
    else:
        for run in runs:
            outcome = "succeeded" if run.success else f"FAILED {run.error}".rstrip()
            print(f"{run.partition or '-'}: run {run.run_id or '-'} {outcome} in {run.seconds:.1f}s")
        failed = [run.run_id for run in runs if not run.success and run.run_id]
        for run_id in failed:
            print(f"re-execute from failure: mebot sweep --from-failure {run_id}")
    return 0 if runs and all(run.success for run in runs) else 1
