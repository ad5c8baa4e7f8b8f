"""`mebot run`'s engine: materialize a selection run by run, each asset partition as soon as its inputs are done.

One Dagster run per asset partition into the given instance, up to `run.max_parallel` at once in long-lived
worker processes, the unit with the longest chain of work behind it first; fresh units are skipped, and the data
folder's run lock keeps one writer at a time. What a user sees of it: docs/operations.md."""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from mebot.pipeline.run_progress import DEFAULT_INTERVAL_S, PROGRESS_TAG, ProgressWatcher, new_progress_token
from mebot.pipeline.run_report import summary_lines, user_error_message
from mebot.pipeline.staleness import Freshness
from mebot.resources.cpu_share import THREADS_FILE_ENV, cpu_cores, write_threads_file
from mebot.resources.process_death import death_message, oom_kill_count
from mebot.resources.run_lock import DataFolderBusy, RunLock

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


@dataclass(frozen=True, order=True)
class Unit:
    """One asset partition (partition None: an unpartitioned asset); one Dagster run each."""

    name: str
    partition: str | None = None

    @property
    def key(self) -> dg.AssetKey:
        return dg.AssetKey.from_user_string(self.name)

    @property
    def label(self) -> str:
        return self.name + (f"[{self.partition}]" if self.partition is not None else "")


@dataclass
class Outcome:
    unit: Unit
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


@dataclass
class Plan:
    """The selected asset partitions in dependency order, what each reads, and how much work waits on each."""

    units: list[Unit]
    inputs: dict[Unit, list[Unit]]
    height: dict[Unit, int]  # the longest chain of units from this one to the end, itself included
    roots: set[Unit]


def check_inputs(defs: dg.Definitions) -> dict[dg.AssetKey, set[dg.AssetKey]]:
    """Assets read by the checks of each asset (an `additional_ins` of `@asset_check`): its run needs them too."""
    found: dict[dg.AssetKey, set[dg.AssetKey]] = {}
    for checks in defs.asset_checks or []:
        for spec in checks.check_specs:
            found.setdefault(spec.asset_key, set()).update(dep.asset_key for dep in spec.additional_deps)
    for assets_def in defs.assets or []:
        if isinstance(assets_def, dg.AssetsDefinition):
            for spec in assets_def.check_specs:
                found.setdefault(spec.asset_key, set()).update(dep.asset_key for dep in spec.additional_deps)
    return found


def plan_units(
    graph,
    keys: Iterable[dg.AssetKey],
    instance: dg.DagsterInstance,
    extra_inputs: dict[dg.AssetKey, set[dg.AssetKey]] | None = None,
) -> Plan:
    """The unit graph of the selected assets (see the module docstring)."""
    selected = set(keys)
    extra_inputs = extra_inputs or {}

    def partitions(key: dg.AssetKey) -> list[str | None]:
        partitions_def = graph.get(key).partitions_def
        if partitions_def is None:
            return [None]
        return list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))

    def parents(key: dg.AssetKey) -> list[dg.AssetKey]:
        found = set(graph.get(key).parent_keys) | extra_inputs.get(key, set())
        return sorted((parent for parent in found if graph.has(parent)), key=lambda k: k.to_user_string())

    selected_above: dict[dg.AssetKey, set[dg.AssetKey]] = {}

    def selected_ancestors(key: dg.AssetKey) -> set[dg.AssetKey]:
        """The nearest selected assets above `key`, reached through unselected ones."""
        if key not in selected_above:
            selected_above[key] = set()  # guards against cycles; asset graphs have none
            found: set[dg.AssetKey] = set()
            for parent in parents(key):
                found |= {parent} if parent in selected else selected_ancestors(parent)
            selected_above[key] = found
        return selected_above[key]

    def inputs_of(key: dg.AssetKey, partition: str | None) -> list[Unit]:
        found: set[Unit] = set()
        direct = set(graph.get(key).parent_keys)
        for parent in parents(key):
            if parent not in selected:
                for ancestor in selected_ancestors(parent):
                    found |= {Unit(ancestor.to_user_string(), p) for p in partitions(ancestor)}
            elif graph.get(parent).partitions_def is None:
                found.add(Unit(parent.to_user_string()))
            elif parent in direct and (partition is not None or graph.get(key).partitions_def is None):
                mapped = graph.get_parent_partition_keys_for_child(partition, parent, key)
                found |= {Unit(parent.to_user_string(), p) for p in mapped.partitions_subset.get_partition_keys()}
            else:  # a partitioned asset read by a check: all of it
                found |= {Unit(parent.to_user_string(), p) for p in partitions(parent)}
        return sorted(found)

    inputs = {Unit(key.to_user_string(), p): [] for key in selected for p in partitions(key)}
    for unit in inputs:
        inputs[unit] = inputs_of(unit.key, unit.partition)
    roots = {unit for unit in inputs if not any(graph.has(parent) for parent in graph.get(unit.key).parent_keys)}

    order: list[Unit] = []  # dependency order, alphabetical among equals
    placed: set[Unit] = set()
    while len(order) < len(inputs):
        ready = sorted(u for u in inputs if u not in placed and all(i in placed for i in inputs[u]))
        order += ready
        placed |= set(ready)
    height = {}
    for unit in reversed(order):
        readers = [other for other in order if unit in inputs[other]]
        height[unit] = 1 + max((height[reader] for reader in readers), default=0)
    return Plan(order, inputs, height, roots)


def materialize_unit(
    defs: dg.Definitions, instance: dg.DagsterInstance, unit: Unit, tags: dict[str, str] | None = None
) -> Outcome:
    """One Dagster run of `unit` in this process (`tags` added to the run's); never raises for a failure inside
    the run."""

    outcome = Outcome(unit, success=False, started_at=time.time())
    try:
        result = dg.materialize(
            [*(defs.assets or []), *(defs.asset_checks or [])],
            resources=defs.resources,
            instance=instance,
            selection=dg.AssetSelection.assets(unit.key),
            partition_key=unit.partition,
            raise_on_error=False,
            run_config=LOG_CONFIG,
            tags={**RUN_TAGS, **(tags or {})},
        )
    except Exception as exc:  # a run that could not even start (bad definitions, bad partition key)
        outcome.errors.append(f"{unit.label}: {type(exc).__name__}: {exc}")
        outcome.finished_at = time.time()
        return outcome
    outcome.finished_at = time.time()
    outcome.run_id = result.run_id
    outcome.success = result.success
    outcome.materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    if not result.success:  # an asset whose blocking check failed must not feed what reads it either
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                outcome.materialized.discard(evaluation.asset_key.to_user_string())
    outcome.summary = summary_lines(result)
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            outcome.errors.append(f"{event.step_key}: {user_error_message(event.step_failure_data.error)}")
    if not result.success and not outcome.errors:
        outcome.errors.append(f"{unit.label}: the run failed (run id {result.run_id}; see its logs in the UI)")
    return outcome


def _quiet_dagster_warnings() -> None:
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)


_WORKER_DEFS: dict[DefinitionsRef, dg.Definitions] = {}


def _init_worker(threads_file: str) -> None:
    """Worker initializer: on Linux, ask the kernel to SIGTERM this worker when `mebot run` dies (killed, timed
    out), so a stopped run leaves no orphaned worker holding GBs of model weights; and read the thread share."""
    os.environ[THREADS_FILE_ENV] = threads_file
    _quiet_dagster_warnings()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run_unit_in_worker(ref: DefinitionsRef, instance_ref, unit: Unit, tags: dict[str, str] | None = None) -> Outcome:
    """Entry point in a worker process: the definitions (built once per worker), the same instance, one run."""
    if ref not in _WORKER_DEFS:
        _WORKER_DEFS[ref] = ref.load()
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        return materialize_unit(_WORKER_DEFS[ref], instance, unit, tags)


class WorkerSlot:
    """One long-lived spawned worker process (fork is unsafe with the threads of torch and llama.cpp); a worker
    that dies (killed, out of memory) fails only its own run and is replaced for the next one."""

    def __init__(self, threads_file: Path):
        self.threads_file = str(threads_file)
        self.pool: ProcessPoolExecutor | None = None
        self.oom_kills_at_start: int | None = None

    def submit(self, ref: DefinitionsRef, instance_ref, unit: Unit, tags: dict[str, str] | None = None) -> Future:
        if self.pool is None:
            spawn = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(
                max_workers=1, mp_context=spawn, initializer=_init_worker, initargs=(self.threads_file,)
            )
            self.oom_kills_at_start = oom_kill_count()
        return self.pool.submit(run_unit_in_worker, ref, instance_ref, unit, tags)

    def result(self, future: Future, unit: Unit, started: float) -> Outcome:
        try:
            return future.result()
        except BrokenProcessPool:
            message = f"{unit.label}: the worker process {self.death()}"
            self.close()
        except Exception as exc:
            message = f"{unit.label}: {type(exc).__name__}: {exc}"
        return Outcome(unit, success=False, errors=[message], started_at=started, finished_at=time.time())

    def death(self) -> str:
        # The pool keeps its dead process object until shutdown (stdlib's `_processes`, stable since 3.2); its
        # exit code is the only record of the signal.
        # The pool's own thread reaps the dead process too: a join that loses that race returns before the exit
        # code is stored, so wait for the code itself.
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        deadline = time.monotonic() + 5
        for process in processes:
            process.join(timeout=5)
            while process.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.05)
        codes = [process.exitcode for process in processes if process.exitcode]
        reason = death_message(codes[0] if codes else None, self.oom_kills_at_start, oom_kill_count())
        return reason or "died (exit code unknown)"

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


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


PENDING, READY, RUNNING, DONE, FRESH, FAILED = "pending", "ready", "running", "done", "fresh", "failed"


class Scheduler:
    """The bookkeeping of one `run_graph` call: unit states, what to start next, the thread share."""

    def __init__(
        self,
        plan: Plan,
        graph,
        instance: dg.DagsterInstance,
        *,
        force: bool,
        out: Callable[[str], None],
        watcher: ProgressWatcher | None = None,
    ):
        self.plan, self.graph, self.instance, self.force, self.out = plan, graph, instance, force, out
        self.watcher = watcher or ProgressWatcher(instance, out)
        self.tokens: dict[Unit, str] = {}
        self.state = {unit: PENDING for unit in plan.units}
        self.report = RunReport(success=True, runs=0, outcomes=[], skipped_fresh=[], skipped_failed=[])

    def settle(self) -> None:
        """Move pending units whose inputs are all finished to ready, skipped-fresh or skipped-failed."""
        freshness = Freshness(self.instance, self.graph)
        for unit in self.plan.units:  # dependency order: a skipped unit settles what reads it in the same pass
            if self.state[unit] != PENDING:
                continue
            inputs = self.plan.inputs[unit]
            if any(self.state[i] in (PENDING, READY, RUNNING) for i in inputs):
                continue
            failed = next((i for i in inputs if self.state[i] == FAILED), None)
            if failed is not None:
                self.state[unit] = FAILED
                line = f"{unit.label}: skipped, its input {failed.label} failed"
                self.out(f"  {line}")
                self.report.skipped_failed.append(line)
                self.report.success = False
            elif not self.force and unit not in self.plan.roots and freshness.is_fresh(unit.key, unit.partition):
                self.state[unit] = FRESH
                self.report.skipped_fresh.append(unit.label)
                self.out(f"  fresh, skipped (--force rebuilds them): {unit.label}")
            else:
                self.state[unit] = READY

    def begin(self, unit: Unit) -> dict[str, str]:
        """Mark `unit` running and watch its progress; the tags its run carries so the watcher finds it."""
        self.state[unit] = RUNNING
        self.tokens[unit] = new_progress_token()
        self.watcher.started(unit.label, unit.name, self.tokens[unit])
        return {PROGRESS_TAG: self.tokens[unit]}

    def next_ready(self) -> Unit | None:
        ready = [unit for unit in self.plan.units if self.state[unit] == READY]
        return min(ready, key=lambda unit: (-self.plan.height[unit], unit)) if ready else None

    def finished(self, unit: Unit, outcome: Outcome) -> None:
        self.watcher.finished(self.tokens.pop(unit, ""))
        self.report.outcomes.append(outcome)
        self.report.runs += 1
        self.report.success &= outcome.success
        # an asset whose blocking check failed is not in `materialized`: it must not feed what reads it either
        self.state[unit] = DONE if unit.name in outcome.materialized else FAILED
        state = "ok" if outcome.success else "FAILED"
        settled = sum(s in (DONE, FRESH, FAILED) for s in self.state.values())
        self.out(f"  {outcome.unit.label}: {state} in {outcome.seconds:.1f}s ({settled} of {len(self.state)} finished)")
        for error in outcome.errors:
            print(f"\n{error}", file=sys.stderr, flush=True)

    def running(self) -> int:
        return sum(state == RUNNING for state in self.state.values())


IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def data_folder(defs: dg.Definitions) -> Path | None:
    """The folder the definitions materialize into (their IO manager's base_dir), if they say."""
    base_dir = getattr((defs.resources or {}).get("io_manager"), "base_dir", None)
    return Path(base_dir) if base_dir else None


def runs_in_the_way(instance: dg.DagsterInstance, keys: set[dg.AssetKey]) -> list[str]:
    """Runs of this instance in progress that were not started by a `mebot run` and materialize one of `keys`
    (a run without an asset selection counts: it may materialize anything)."""
    found = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        if run.tags.get("mebot/command") == RUN_TAGS["mebot/command"]:
            continue
        if run.asset_selection is None or run.asset_selection & keys:
            found.append(f"{run.job_name} (run {run.run_id[:8]}, {run.status.value.lower()})")
    return found


def claim_data_folder(
    defs: dg.Definitions, instance: dg.DagsterInstance, keys: set[dg.AssetKey]
) -> tuple[str | None, contextlib.AbstractContextManager]:
    """(None, the data folder's run lock, held) when this run may go ahead; (why not, None-context) otherwise."""
    folder = data_folder(defs)
    lock = RunLock(folder, "mebot run") if folder else contextlib.nullcontext()
    try:
        if isinstance(lock, RunLock):
            lock.acquire()
    except DataFolderBusy as exc:
        return str(exc), contextlib.nullcontext()
    if in_the_way := runs_in_the_way(instance, keys):
        lock.__exit__(None, None, None)
        return (
            f"another Dagster run materializes these assets now: {', '.join(in_the_way)}; wait for it to finish "
            "(or terminate it in the UI), then run again",
            contextlib.nullcontext(),
        )
    return None, lock


def _refusal(report_out: Callable[[str], None], message: str) -> RunReport:
    print(f"mebot: {message}", file=sys.stderr, flush=True)
    report_out(f"not started: {message}")
    return RunReport(success=False, runs=0, outcomes=[], skipped_fresh=[], skipped_failed=[])


def run_graph(
    ref: DefinitionsRef,
    selection: dg.AssetSelection,
    instance: dg.DagsterInstance,
    *,
    max_parallel: int,
    force: bool = False,
    out: Callable[[str], None] = print,
    progress_interval_s: float = DEFAULT_INTERVAL_S,
) -> RunReport:
    """Materialize `selection` (see the module docstring); progress goes to `out`: a line per start and end, and
    every `progress_interval_s` a line per running stage with what it has done and what is left."""
    _quiet_dagster_warnings()
    defs = ref.load()
    graph = defs.resolve_asset_graph()
    keys = resolve_selection(selection, graph)
    refusal, lock = claim_data_folder(defs, instance, keys)  # released when the `with` below ends
    if refusal:
        return _refusal(out, refusal)
    plan = plan_units(graph, keys, instance, check_inputs(defs))
    watcher = ProgressWatcher(instance, out, progress_interval_s)
    scheduler = Scheduler(plan, graph, instance, force=force, out=out, watcher=watcher)
    cores = cpu_cores()
    out(f"{len(plan.units)} asset partition(s); up to {max_parallel} run(s) at once on {cores} core(s)")
    with lock, tempfile.TemporaryDirectory(prefix="mebot-run-") as scratch, watcher:
        threads_file = Path(scratch) / "threads"
        if max_parallel <= 1:
            _run_here(scheduler, defs, instance, threads_file, cores)
        else:
            _run_in_workers(scheduler, ref, instance, threads_file, cores, max_parallel)
    return scheduler.report


def _run_here(scheduler: Scheduler, defs: dg.Definitions, instance, threads_file: Path, cores: int) -> None:
    """One run at a time in this process, with every core."""
    write_threads_file(threads_file, cores)
    previous = os.environ.get(THREADS_FILE_ENV)
    os.environ[THREADS_FILE_ENV] = str(threads_file)
    try:
        while True:
            scheduler.settle()
            unit = scheduler.next_ready()
            if unit is None:
                return
            tags = scheduler.begin(unit)
            scheduler.out(f"start {unit.label}")
            scheduler.finished(unit, materialize_unit(defs, instance, unit, tags))
    finally:
        if previous is None:
            os.environ.pop(THREADS_FILE_ENV, None)
        else:
            os.environ[THREADS_FILE_ENV] = previous


def _run_in_workers(
    scheduler: Scheduler, ref: DefinitionsRef, instance, threads_file: Path, cores: int, max_parallel: int
) -> None:
    instance_ref = instance.get_ref()
    slots = [WorkerSlot(threads_file) for _ in range(max_parallel)]
    free = list(slots)
    in_flight: dict[Future, tuple[Unit, WorkerSlot, float]] = {}
    published = 0
    try:
        while True:
            scheduler.settle()
            starting = []
            while free and (unit := scheduler.next_ready()) is not None:
                starting.append((unit, free.pop(0), scheduler.begin(unit)))
            # The share is published before the new runs start, and grows only when one run is left alone with
            # nothing ready: then nothing else can start until it ends, so the cores are never oversubscribed.
            share = max(1, cores // max(1, scheduler.running()))
            write_threads_file(threads_file, share)
            if share != published and not starting and in_flight:
                runs = len(in_flight)
                scheduler.out(f"  {share} threads for " + ("the run left" if runs == 1 else f"each of {runs} runs"))
            published = share
            for unit, slot, tags in starting:
                scheduler.out(f"start {unit.label}" + (f" ({share} threads)" if share > 1 else ""))
                in_flight[slot.submit(ref, instance_ref, unit, tags)] = (unit, slot, time.time())
            if not in_flight:
                return
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: in_flight[f][0]):
                unit, slot, started = in_flight.pop(future)
                scheduler.finished(unit, slot.result(future, unit, started))
                free.append(slot)
    finally:
        for slot in slots:
            slot.close()
