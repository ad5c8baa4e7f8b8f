"""The celery deployment end to end (MEBOT_DEPLOY=celery, pipeline/deploy/): the Dagster instance in a real
PostgreSQL, the steps of the `finetune` and `evaluate` jobs on two Celery workers (separate processes, `mebot
worker`) through a real Redis broker, the LLM call cache in the same PostgreSQL, the data directory a path all
of them share.

One scenario, run once (the `scenario` fixture), asserted by the tests below:
1. `mebot run` builds what the sweep reads (crawl, chunks, questions, training files, the judge's validity)
   into the shared data directory (the fine-tuned models answer without retrieval: no vector index);
2. two workers start; `mebot sweep finetune --select finetuned_models` trains both sweep points;
3. `mebot sweep evaluate` answers and scores with both models; in the middle of a `judge_scores` step (after
   its first LLM call is cached, before its last), the worker process running it is killed with SIGKILL;
4. `mebot sweep --from-failure RUN_ID` re-executes that run; the workers stop;
5. the same runs again with `--local` (one after another in one process, Dagster's in-process executor, no
   workers) on a copy of the data directory and the same PostgreSQL caches: the reference the workers' outputs
   must equal.
Sized to take a few minutes on 2 idle cores: 2 sweep points of 1 training step, 3 questions per model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mebot.pipeline.deploy import POSTGRES_URL_ENV_VAR
from tests.helpers import write_settings
from tests.system.deployment import (
    EVAL_ASSETS,
    PREPARE_SELECTION,
    SWEEP_POINTS,
    SWEEP_SETTINGS,
    Sweep,
    cache_rows,
    deployment_env,
    eval_selection,
    finish_sweep,
    mebot,
    pool_pids,
    start_sweep,
    start_worker,
    stop_workers,
    sweep,
    wait_ready,
)

pytestmark = pytest.mark.full

WORKERS = ("w1", "w2")
KILLED_STEP = "judge_scores"
# What may differ between two runs of the same step: timings, where the file was written, whether the answer
# came from the cache.
VARYING_COLUMNS = {"seconds", "seconds_per_step", "latency_s", "cached", "adapter_path"}


@dataclass
class Scenario:
    root: Path
    data: Path
    local_data: Path
    instance: dg.DagsterInstance
    worker_pids: dict[str, int] = field(default_factory=dict)  # name -> the worker's main process
    pool_pids: dict[str, set[int]] = field(default_factory=dict)  # name -> its pool processes, seen at any time
    finetune: Sweep | None = None
    evaluate: Sweep | None = None
    reexecution: Sweep | None = None
    local_finetune: Sweep | None = None
    local_evaluate: Sweep | None = None
    killed_run_id: str = ""
    killed_pid: int = 0
    calls_before_kill: set[str] = field(default_factory=set)  # written by the killed step before it died
    writes_before_reexecution: dict[str, int] = field(default_factory=dict)  # key -> writes
    files_before_reexecution: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    writes_after: dict[str, int] = field(default_factory=dict)
    workers_alive_at_end: list[int] = field(default_factory=list)


def _pid(entry: dg.EventLogEntry) -> int:
    """The process that sent a Dagster event (each event records its sender's pid)."""
    return entry.dagster_event.pid


def _step_starts(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return [
        entry
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        if entry.step_key is not None
    ]


def _kill_mid_step(scenario: Scenario, postgres_url: str, deadline_s: float = 300) -> None:
    """Wait for the first `judge_scores` step of the evaluate sweep to cache its first LLM call, then SIGKILL the
    process running it (a Celery pool process of one worker). Records what it had finished."""
    instance = scenario.instance
    host = socket.gethostname()
    deadline = time.monotonic() + deadline_s
    target: dg.EventLogEntry | None = None
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(job_name="evaluate", tags={"mebot/command": "sweep"}))
        if target is None:
            starts = [entry for run in runs for entry in _step_starts(instance, run.run_id)]
            target = next((entry for entry in starts if entry.step_key == KILLED_STEP), None)
        if target is not None:
            pid = _pid(target)
            rows = cache_rows(postgres_url).items()
            # its own calls: its process also ran the partition's model_answers before it
            mine = {k for k, r in rows if r.written_by == f"{host}:{pid}" and r.created_at >= target.timestamp}
            if mine:
                os.kill(pid, signal.SIGKILL)
                scenario.killed_run_id, scenario.killed_pid = target.run_id, pid
                scenario.calls_before_kill = mine
                return
        time.sleep(0.05)
    raise AssertionError(f"no {KILLED_STEP} step cached an LLM call within {deadline_s:.0f} s")


def _record_pools(scenario: Scenario) -> None:
    for name, pid in scenario.worker_pids.items():
        scenario.pool_pids.setdefault(name, set()).update(pool_pids(pid))


@pytest.fixture(scope="module")
def scenario(postgres, redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("celery_sweep")
    postgres = postgres.new_database("celery_sweep")  # its own: Dagster's tables and the LLM cache
    config = write_settings(root / "mebot.yaml", SWEEP_SETTINGS)
    data, local_data = root / "data", root / "data_local"
    env = deployment_env(root, config, data, postgres.sqlalchemy_url, redis_server.url)
    log = root / "mebot.log"
    previous = os.environ.get(POSTGRES_URL_ENV_VAR)
    os.environ[POSTGRES_URL_ENV_VAR] = postgres.sqlalchemy_url  # for this process's view of the instance
    instance = dg.DagsterInstance.from_config(str(root / "home"))
    scenario = Scenario(root=root, data=data, local_data=local_data, instance=instance)
    workers: dict[str, subprocess.Popen] = {}
    try:
        # two workers, each its own process group (its Celery pool processes included), starting meanwhile
        workers = {name: start_worker(name, env, root) for name in WORKERS}
        scenario.worker_pids = {name: process.pid for name, process in workers.items()}
        # 1. what the sweep reads, built by `mebot run` on this machine (instance and LLM cache in PostgreSQL)
        mebot("run", "--select", PREPARE_SELECTION, env=env, log=log)
        # 2. the sweep of finetune on the workers
        wait_ready(workers, root)
        _record_pools(scenario)
        scenario.finetune = sweep("finetune", "--select", "finetuned_models", env=env, log=log)
        # 3. the evaluation, with a worker process killed in the middle of a judge_scores step
        process, started = start_sweep("evaluate", *eval_selection(), env=env, log=log)
        try:
            _kill_mid_step(scenario, postgres.url)
        finally:
            scenario.evaluate = finish_sweep(process, started, log)
        # 4. re-execute the failed run from its failed step
        scenario.writes_before_reexecution = {key: row.writes for key, row in cache_rows(postgres.url).items()}
        scenario.files_before_reexecution = {
            str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(data.rglob("*.parquet"))
        }
        scenario.reexecution = sweep("--from-failure", scenario.killed_run_id, env=env, log=log)
        scenario.writes_after = {key: row.writes for key, row in cache_rows(postgres.url).items()}
        _record_pools(scenario)  # the pool process that replaced the killed one
        stop_workers(workers)
        scenario.workers_alive_at_end = [p.pid for p in workers.values() if p.poll() is None]
        # 5. the reference: the same runs, steps in each run's own process, on a copy of the data directory
        shutil.copytree(data, local_data)
        local_env = {**env, "MEBOT_DATA_DIR": str(local_data)}
        scenario.local_finetune = sweep("finetune", "--select", "finetuned_models", "--local", env=local_env, log=log)
        scenario.local_evaluate = sweep("evaluate", *eval_selection(), "--local", env=local_env, log=log)
        yield scenario
    finally:
        stop_workers(workers)
        instance.dispose()
        if previous is None:
            os.environ.pop(POSTGRES_URL_ENV_VAR, None)
        else:
            os.environ[POSTGRES_URL_ENV_VAR] = previous


def _events(instance: dg.DagsterInstance, run_ids: list[str]) -> list[dg.EventLogEntry]:
    return [entry for run_id in run_ids for entry in instance.all_logs(run_id)]


def _celery_runs(scenario: Scenario) -> list[str]:
    return scenario.finetune.run_ids + scenario.evaluate.run_ids + scenario.reexecution.run_ids


# ------------------------------------------------------------------------------------------------------ tests


def test_the_sweeps_ran_every_partition_and_only_the_killed_run_failed(scenario: Scenario) -> None:
    assert [run["partition"] for run in scenario.finetune.runs] == SWEEP_POINTS
    assert all(run["success"] for run in scenario.finetune.runs), scenario.finetune.runs
    outcomes = {run["run_id"]: run["success"] for run in scenario.evaluate.runs}
    assert outcomes.pop(scenario.killed_run_id) is False  # the run whose step died
    assert all(outcomes.values()), scenario.evaluate.runs  # the other partition's run was not disturbed
    assert [run["success"] for run in scenario.reexecution.runs] == [True]
    assert scenario.workers_alive_at_end == []


def test_steps_ran_in_the_worker_processes_not_in_the_launching_ones(scenario: Scenario) -> None:
    instance = scenario.instance
    workers_used = set()
    for run_id in _celery_runs(scenario):
        events = instance.all_logs(run_id)
        (launcher,) = {_pid(entry) for entry in events if entry.dagster_event_type == dg.DagsterEventType.RUN_START}
        # dagster-celery's "Executing steps ... in celery worker" event names the worker that took each step
        taken_by = {
            entry.step_key: entry.dagster_event.engine_event_data.metadata["Celery worker"].value.split("@")[0]
            for entry in events
            if entry.dagster_event_type == dg.DagsterEventType.ENGINE_EVENT
            and "Celery worker" in entry.dagster_event.engine_event_data.metadata
        }  # fmt: skip
        starts = _step_starts(instance, run_id)
        assert starts, f"run {run_id} started no step"
        for entry in starts:
            worker, pid = taken_by[entry.step_key], _pid(entry)
            # the step ran in a pool process of the worker that took it: not in the run's process (the one that
            # launched it), not in this test's, not in the worker's main process
            assert pid in scenario.pool_pids[worker], f"{entry.step_key} ran in {pid}, not in a process of {worker}"
            assert pid not in {launcher, os.getpid(), *scenario.worker_pids.values()}
            workers_used.add(worker)
    assert workers_used == set(WORKERS)  # both workers took steps


def test_outputs_equal_a_local_run_on_the_same_caches(scenario: Scenario) -> None:
    assert all(run["success"] for run in scenario.local_finetune.runs + scenario.local_evaluate.runs)
    for asset in ["finetuned_models", *EVAL_ASSETS]:
        for partition in SWEEP_POINTS:
            celery = pd.read_parquet(scenario.data / asset / f"{partition}.parquet")
            local = pd.read_parquet(scenario.local_data / asset / f"{partition}.parquet")
            columns = [c for c in celery.columns if c not in VARYING_COLUMNS]
            assert len(celery) > 0
            pd.testing.assert_frame_equal(celery[columns], local[columns], obj=f"{asset}[{partition}]")
    trained = pd.concat(pd.read_parquet(scenario.data / "finetuned_models" / f"{p}.parquet") for p in SWEEP_POINTS)
    assert trained["adapter_path"].map(lambda p: Path(p).is_relative_to(scenario.data)).all()


def test_a_worker_killed_mid_step_leaves_the_run_recoverable(scenario: Scenario) -> None:
    instance = scenario.instance
    assert scenario.calls_before_kill  # the killed step had finished some LLM calls...
    killed = instance.get_run_by_id(scenario.killed_run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    partition = killed.tags["dagster/partition"]
    succeeded = {entry.step_key for entry in instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
    assert KILLED_STEP not in succeeded and "model_answers" in succeeded  # ...but not all of them
    # the re-execution ran only what had not finished, in a new run of the same partition
    (rerun_id,) = scenario.reexecution.run_ids
    rerun = instance.get_run_by_id(rerun_id)
    assert rerun.parent_run_id == killed.run_id and rerun.tags["dagster/partition"] == partition
    rerun_steps = {entry.step_key for entry in _step_starts(instance, rerun_id)}
    assert KILLED_STEP in rerun_steps and "model_answers" not in rerun_steps
    # it repeated no finished LLM call: every call cached before it is still written once, and the killed step's
    # finished calls came back from the cache
    repeated = {k for k, w in scenario.writes_before_reexecution.items() if scenario.writes_after.get(k) != w}
    assert repeated == set()
    (judged,) = [
        entry.asset_materialization
        for entry in instance.all_logs(rerun_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization.asset_key == dg.AssetKey(KILLED_STEP)
    ]
    assert judged.partition == partition
    metadata = judged.metadata
    assert metadata["llm_cache_hits"].value >= len(scenario.calls_before_kill)
    assert metadata["llm_cache_misses"].value == len(scenario.writes_after) - len(scenario.writes_before_reexecution)
    # and lost no written partition: every Parquet file written before it is still there, unchanged unless the
    # re-execution wrote it (its own steps' partitions)
    rewritten = {str(scenario.data / step / f"{partition}.parquet") for step in rerun_steps}
    for path, (size, mtime) in scenario.files_before_reexecution.items():
        assert Path(path).is_file(), f"{path} was lost"
        if path not in rewritten:
            assert (Path(path).stat().st_size, Path(path).stat().st_mtime_ns) == (size, mtime), path
    # every partition of the sweep was materialized by the runs on the workers (the killed run's included)
    materialized = {
        (entry.asset_materialization.asset_key.to_user_string(), entry.asset_materialization.partition)
        for run_id in _celery_runs(scenario)
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
    assert materialized == {(asset, key) for asset in ["finetuned_models", *EVAL_ASSETS] for key in SWEEP_POINTS}
    assert ("model_answers", partition) in {
        (entry.asset_materialization.asset_key.to_user_string(), entry.asset_materialization.partition)
        for entry in instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
