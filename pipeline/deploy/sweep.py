"""`mebot sweep`: launch a job (`finetune` or `evaluate`) once per sweep partition, all at once, and wait
(`--local`: one after another in this process; `--from-failure RUN_ID`: a failed run's failed steps again).

A run's job is rebuilt in every process that touches it (run worker, Celery worker) by `deployed_job(job name,
settings file, data directory, local)`, so all of them read the same settings and write under the same data folder."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg

from mebot.pipeline.deploy import SWEEP_JOBS

MODULE = "mebot.pipeline.deploy.sweep"  # the job's origin (`__name__` is __main__ in a run worker)
PARTITION_TAG = "dagster/partition"
COMMAND_TAGS = {"mebot/command": "sweep"}


def budget_scope_tags() -> dict[str, str]:
    """The command's budget scope as a run tag: the steps of its runs (on Celery workers too) spend in it."""
    from mebot.resources.chat.base import BUDGET_SCOPE_TAG, budget_scope_from_env

    scope = budget_scope_from_env()
    return {BUDGET_SCOPE_TAG: scope} if scope else {}


@dataclass
class SweepRun:
    """One launched run: its partition, id, outcome and wall time (seconds, launch to end)."""

    partition: str
    run_id: str
    success: bool
    seconds: float
    error: str = ""


def deployed_job(job_name: str, config: str, data_dir: str, local: bool = False) -> dg.JobDefinition:
    """The job `job_name` of the definitions built from `config` and `data_dir`; `local`: on Dagster's
    in-process executor instead of the deployment's."""
    from mebot.pipeline.definitions import build_definitions

    job = build_definitions(config, data_dir).resolve_job_def(job_name)
    return job.with_executor_def(dg.in_process_executor) if local else job


def reconstructable_job(job_name: str, config: Path, data_dir: Path, local: bool) -> dg.ReconstructableJob:
    return dg.build_reconstructable_job(
        MODULE, "deployed_job", reconstructable_args=(job_name, str(config), str(data_dir), local)
    )


def run_partition(
    job_name: str, partition: str, config: Path, data_dir: Path, select: Sequence[str] = (), local: bool = False
) -> SweepRun:
    """One run of `job_name` for `partition`, in this process (the run worker); returns when it ended."""
    started = time.monotonic()
    job = reconstructable_job(job_name, config, data_dir, local)
    selection = [dg.AssetKey.from_user_string(key) for key in select] or None
    with dg.DagsterInstance.get() as instance:
        tags = {PARTITION_TAG: partition, **COMMAND_TAGS, **budget_scope_tags()}
        with dg.execute_job(job, instance, tags=tags, asset_selection=selection) as result:
            return SweepRun(partition, result.run_id, result.success, round(time.monotonic() - started, 1))


def reexecute_from_failure(run_id: str) -> SweepRun:
    """A new run of `run_id`'s job from its failed steps (the steps that succeeded are not run again), with its
    tags (partition) and asset selection, in this process."""
    from dagster._utils.hosted_user_process import recon_job_from_origin  # any run's job, UI-launched too

    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        parent = instance.get_run_by_id(run_id)
        if parent is None:
            raise ValueError(f"no run {run_id} in the instance at $DAGSTER_HOME")
        job = recon_job_from_origin(parent.job_code_origin)
        # the UI copies the parent's tags (its partition) into a re-execution; the Python API needs them given
        tags = {k: v for k, v in parent.tags.items() if not k.startswith("dagster/") or k == PARTITION_TAG}
        options = dg.ReexecutionOptions.from_failure(run_id, instance)
        with dg.execute_job(job, instance, tags=tags, reexecution_options=options) as result:
            partition = parent.tags.get(PARTITION_TAG, "")
            return SweepRun(partition, result.run_id, result.success, round(time.monotonic() - started, 1))


def _in_run_worker(arguments: list[str], result_file: Path) -> SweepRun:
    """Run `python -m mebot.pipeline.deploy.sweep <arguments>` (one run) in its own process; its SweepRun."""
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", MODULE, *arguments, "--result", str(result_file)])
    if result_file.is_file():
        return SweepRun(**json.loads(result_file.read_text(encoding="utf-8")))
    partition = arguments[arguments.index("--partition") + 1] if "--partition" in arguments else ""
    seconds = round(time.monotonic() - started, 1)
    return SweepRun(partition, "", False, seconds, f"the run worker exited with code {code} before its run ended")


def sweep(
    job_name: str,
    config: Path,
    data_dir: Path,
    partitions: Sequence[str],
    select: Sequence[str] = (),
    local: bool = False,
    max_parallel: int | None = None,
) -> list[SweepRun]:
    """Launch one run per partition (at most `max_parallel` at once; default all) and wait for all of them.
    `local`: the runs one after another in this process, steps in-process (each model loaded once)."""
    if local:
        return [run_partition(job_name, key, config, data_dir, select, local=True) for key in partitions]
    with tempfile.TemporaryDirectory(prefix="mebot-sweep-") as scratch:

        def launch(partition: str) -> SweepRun:
            arguments = ["run", job_name, "--partition", partition, "--config", str(config), "--data", str(data_dir)]
            arguments += [f"--select={key}" for key in select]
            return _in_run_worker(arguments, Path(scratch) / f"{partition}.json")

        with ThreadPoolExecutor(max_workers=max_parallel or len(partitions) or 1) as pool:
            return list(pool.map(launch, partitions))


def reexecute_in_run_worker(run_id: str) -> SweepRun:
    """`reexecute_from_failure(run_id)` in a run worker process of its own; waits for it."""
    with tempfile.TemporaryDirectory(prefix="mebot-sweep-") as scratch:
        return _in_run_worker(["reexecute", run_id], Path(scratch) / "run.json")


def main(argv: list[str] | None = None) -> int:
    """The run worker of one run (`run JOB --partition KEY ...` or `reexecute RUN_ID`): writes its SweepRun."""
    parser = argparse.ArgumentParser(prog="python -m mebot.pipeline.deploy.sweep")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("job", choices=SWEEP_JOBS)
    run.add_argument("--partition", required=True)
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--select", action="append", default=[])
    reexecute = commands.add_parser("reexecute")
    reexecute.add_argument("run_id")
    for command in (run, reexecute):
        command.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        outcome = run_partition(args.job, args.partition, args.config, args.data, args.select)
    else:
        outcome = reexecute_from_failure(args.run_id)
    args.result.write_text(json.dumps(asdict(outcome)), encoding="utf-8")
    return 0 if outcome.success else 1


if __name__ == "__main__":
    sys.exit(main())
