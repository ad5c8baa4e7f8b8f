"""`mebot run`'s engine: materialize a selection wave by wave, the partition runs of a wave in parallel processes.

A wave is one generation of the selection's dependency graph: every selected asset whose selected ancestors are
done. In a wave the unpartitioned assets form one run and each partition key of the partitioned ones (per
partitions definition: `finetuned_models` has the sweep keys, per-model assets `rag` plus those) its own run.
The runs of a wave go to at most `run.max_parallel` spawned processes at once, each one `dg.materialize` into
the same Dagster instance, so every run shows in the UI as if launched there.

Before each wave the stale status is read from the instance, as the UI computes it: fresh assets (same code
version, same input data versions) are skipped unless forced. Roots of the asset graph (the crawl) always run:
they read the outside world, and running them is how changes are found. A failed run does not stop the other
runs of its wave; what depends on a failed asset (partition) is skipped and says so.
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

RUN_TAGS = {"mebot/command": "run"}
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass(frozen=True)
class DefinitionsRef:
    """How a worker process rebuilds the same definitions: `module:function` called with `args`."""

    target: str
    args: tuple = ()

    def load(self) -> dg.Definitions:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)(*self.args)


@dataclass(frozen=True)
class Task:
    """One Dagster run: these assets, for this partition key (None: unpartitioned)."""

    keys: tuple[str, ...]
    partition: str | None = None

    @property
    def label(self) -> str:
        suffix = f"[{self.partition}]" if self.partition is not None else ""
        return ", ".join(f"{key}{suffix}" for key in self.keys)


@dataclass
class Outcome:
    task: Task
    success: bool
    materialized: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    run_id: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


@dataclass
class RunReport:
    success: bool
    runs: int
    outcomes: list[Outcome]
    skipped_fresh: list[str]
    skipped_failed: list[str]


def asset_label(key: dg.AssetKey, partition: str | None) -> str:
    return key.to_user_string() + (f"[{partition}]" if partition is not None else "")


def plan_waves(graph, keys: Iterable[dg.AssetKey]) -> list[list[dg.AssetKey]]:
    """Generations of the selected assets: an asset comes after every selected asset upstream of it, even one
    reached through assets that are not selected."""
    selected = set(keys)
    ancestors: dict[dg.AssetKey, set[dg.AssetKey]] = {}

    def upstream(key: dg.AssetKey) -> set[dg.AssetKey]:
        if key not in ancestors:
            ancestors[key] = set()  # guards against cycles; asset graphs have none
            found = set()
            for parent in graph.get(key).parent_keys:
                if graph.has(parent):
                    found |= {parent} | upstream(parent)
            ancestors[key] = found
        return ancestors[key]

    waves, remaining = [], set(selected)
    while remaining:
        ready = sorted((k for k in remaining if not upstream(k) & remaining), key=lambda k: k.to_user_string())
        waves.append(ready)
        remaining -= set(ready)
    return waves


def stale_status_resolver(instance: dg.DagsterInstance, graph) -> CachingStaleStatusResolver:
    """The resolver behind the UI's "Unsynced" (stale) status; one per wave, since each wave changes it."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def failed_input(graph, key: dg.AssetKey, partition: str | None, failed: set) -> str | None:
    """The first failed (or skipped) asset partition that `key[partition]` reads, if any."""
    for parent in sorted(graph.get(key).parent_keys, key=lambda k: k.to_user_string()):
        if not graph.has(parent):
            continue
        if graph.get(parent).partitions_def is None:
            candidates = [None]
        else:
            mapped = graph.get_parent_partition_keys_for_child(partition, parent, key)
            candidates = list(mapped.partitions_subset.get_partition_keys())
        for candidate in candidates:
            if (parent, candidate) in failed:
                return asset_label(parent, candidate)
    return None


def plan_tasks(
    wave: list[dg.AssetKey],
    graph,
    resolver: CachingStaleStatusResolver,
    *,
    force: bool,
    failed: set,
    instance: dg.DagsterInstance,
) -> tuple[list[Task], list[str], list[str]]:
    """(runs to start, asset partitions skipped as fresh, lines for those skipped because an input failed)."""
    plain: list[str] = []
    partitioned: dict[tuple[str, str], list[str]] = {}
    fresh: list[str] = []
    blocked: list[str] = []
    for key in wave:
        node = graph.get(key)
        partitions_def = node.partitions_def
        if partitions_def is None:
            partitions = [None]
        else:
            partitions = list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
        is_root = not any(graph.has(parent) for parent in node.parent_keys)
        for partition in partitions:
            label = asset_label(key, partition)
            cause = failed_input(graph, key, partition, failed)
            if cause is not None:
                failed.add((key, partition))
                blocked.append(f"{label}: skipped, its input {cause} failed")
                continue
            if not force and not is_root and resolver.get_status(key, partition) == StaleStatus.FRESH:
                fresh.append(label)
                continue
            if partition is None:
                plain.append(key.to_user_string())
            else:
                group = (partitions_def.get_serializable_unique_identifier(), partition)
                partitioned.setdefault(group, []).append(key.to_user_string())
    tasks = [Task(tuple(plain))] if plain else []
    tasks += [Task(tuple(keys), partition) for (_, partition), keys in partitioned.items()]
    return tasks, fresh, blocked


def materialize_task(defs: dg.Definitions, instance: dg.DagsterInstance, task: Task) -> Outcome:
    """One Dagster run of `task` in this process; never raises for a failure inside the run."""
    from pipeline.cli import _summary_lines, user_error_message

    outcome = Outcome(task, success=False, started_at=time.time())
    try:
        result = dg.materialize(
            [*(defs.assets or []), *(defs.asset_checks or [])],
            resources=defs.resources,
            instance=instance,
            selection=dg.AssetSelection.assets(*task.keys),
            partition_key=task.partition,
            raise_on_error=False,
            run_config=LOG_CONFIG,
            tags=RUN_TAGS,
        )
    except Exception as exc:  # a run that could not even start (bad definitions, bad partition key)
        outcome.errors.append(f"{task.label}: {type(exc).__name__}: {exc}")
        outcome.finished_at = time.time()
        return outcome
    outcome.finished_at = time.time()
    outcome.run_id = result.run_id
    outcome.success = result.success
    outcome.materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    if not result.success:  # an asset whose blocking check failed must not feed the next waves either
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                outcome.materialized.discard(evaluation.asset_key.to_user_string())
    outcome.summary = _summary_lines(result)
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            outcome.errors.append(f"{event.step_key}: {user_error_message(event.step_failure_data.error)}")
    if not result.success and not outcome.errors:
        outcome.errors.append(f"{task.label}: the run failed (run id {result.run_id}; see its logs in the UI)")
    return outcome


def _quiet_dagster_warnings() -> None:
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def run_task_in_worker(ref: DefinitionsRef, instance_ref, task: Task) -> Outcome:
    """Entry point of a spawned worker process: rebuild the definitions, attach to the same instance, run."""
    _quiet_dagster_warnings()
    defs = ref.load()
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        return materialize_task(defs, instance, task)


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to SIGTERM this worker when `mebot run` dies (killed, timed
    out), so a stopped run leaves no orphaned worker holding GBs of model weights."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _run_in_own_process(ref: DefinitionsRef, instance_ref, task: Task) -> Outcome:
    # One pool per run: a worker that dies (killed, out of memory) fails only its own run.
    started = time.time()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_die_with_parent) as pool:
        try:
            return pool.submit(run_task_in_worker, ref, instance_ref, task).result()
        except BrokenProcessPool:
            message = f"{task.label}: the worker process died (killed, or out of memory)"
        except Exception as exc:
            message = f"{task.label}: {type(exc).__name__}: {exc}"
    return Outcome(task, success=False, errors=[message], started_at=started, finished_at=time.time())


def execute_tasks(
    tasks: list[Task],
    defs: dg.Definitions,
    ref: DefinitionsRef,
    instance: dg.DagsterInstance,
    max_parallel: int,
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Run the tasks of one wave: in this process one after another when only one may run at a time, else in
    up to `max_parallel` spawned processes (fork is unsafe with the threads of torch and llama.cpp)."""
    outcomes = []
    if min(max_parallel, len(tasks)) <= 1:
        for task in tasks:
            outcomes.append(materialize_task(defs, instance, task))
            on_done(outcomes[-1])
        return outcomes
    instance_ref = instance.get_ref()
    with ThreadPoolExecutor(max_workers=max_parallel) as threads:
        futures = [threads.submit(_run_in_own_process, ref, instance_ref, task) for task in tasks]
        for future in as_completed(futures):
            outcomes.append(future.result())
            on_done(outcomes[-1])
    return outcomes


class SelectionError(ValueError):
    """A selection that names no asset; the message lists the assets there are."""


def resolve_selection(selection: dg.AssetSelection, graph) -> set[dg.AssetKey]:
    names = ", ".join(sorted(key.to_user_string() for key in graph.get_all_asset_keys()))
    try:
        keys = selection.resolve(graph)
    except dg.DagsterInvalidSubsetError as exc:
        raise SelectionError(f"{exc.args[0].split('. ')[0]}; the assets are: {names}") from None
    if not keys:
        raise SelectionError(f"the selection {selection} matches no asset; the assets are: {names}")
    return keys


def run_waves(
    ref: DefinitionsRef,
    selection: dg.AssetSelection,
    instance: dg.DagsterInstance,
    *,
    max_parallel: int,
    force: bool = False,
    out: Callable[[str], None] = print,
) -> RunReport:
    """Materialize `selection` wave by wave (see the module docstring); progress goes to `out`."""
    _quiet_dagster_warnings()
    defs = ref.load()
    graph = defs.resolve_asset_graph()
    waves = plan_waves(graph, resolve_selection(selection, graph))
    failed: set = set()
    report = RunReport(success=True, runs=0, outcomes=[], skipped_fresh=[], skipped_failed=[])

    def done(outcome: Outcome) -> None:
        state = "ok" if outcome.success else "FAILED"
        out(f"  {outcome.task.label}: {state} in {outcome.seconds:.1f}s")
        for error in outcome.errors:
            print(f"\n{error}", file=sys.stderr, flush=True)

    for number, wave in enumerate(waves, start=1):
        resolver = stale_status_resolver(instance, graph)
        tasks, fresh, blocked = plan_tasks(wave, graph, resolver, force=force, failed=failed, instance=instance)
        names = ", ".join(key.to_user_string() for key in wave)
        parallel = min(max_parallel, len(tasks))
        out(f"wave {number}/{len(waves)}: {names} - {len(tasks)} run(s)" + (f", {parallel} at once" * (parallel > 1)))
        if fresh:
            out(f"  fresh, skipped (--force rebuilds them): {', '.join(fresh)}")
        for line in blocked:
            out(f"  {line}")
        report.skipped_fresh += fresh
        report.skipped_failed += blocked
        report.success &= not blocked
        for outcome in execute_tasks(tasks, defs, ref, instance, max_parallel, done):
            report.outcomes.append(outcome)
            report.runs += 1
            report.success &= outcome.success
            if not outcome.success:
                for name in set(outcome.task.keys) - outcome.materialized:
                    failed.add((dg.AssetKey.from_user_string(name), outcome.task.partition))
    return report
