"""Jobs, schedules and automation: what runs together, and what runs on its own.

The recrawl schedule runs `ingest`; the RAG assets and the `rag` model's evaluation follow only where an input's
data version changed; what costs money or CPU hours (questions, fine-tuning, fine-tuned answers) waits for a
person. The policy in full: docs/operations.md."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from mebot.resources.run_lock import lock_holder
from mebot.resources.settings import Settings
from mebot.resources.visitor_log import VisitorLog

INGEST_SELECTION = dg.AssetSelection.groups("ingest", "index")
FINETUNE_SELECTION = dg.AssetSelection.groups("qa", "finetune")
# The evaluation assets land in this group; selecting by group keeps the job valid before and after they exist.
EVALUATION_SELECTION = dg.AssetSelection.groups("evaluation")

# What `mebot run` / `make run` build by default: everything — the RAG bot, questions, the fine-tuning sweep, the
# evaluation, its leaderboard and the release (fresh assets are skipped, so a re-run only redoes what changed) —
# but the visitors' days, which the visitor_log sensor refreshes as visitors ask (`--select group:visitors` too).
VISITOR_GROUP = "visitors"
DEFAULT_RUN_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.groups(VISITOR_GROUP)

# The one model partition of the evaluation assets that needs no fine-tuning.
RAG_PARTITION = "rag"
# Groups that refresh on their own when their inputs' data changed; every other group waits for a person.
AUTOMATED_GROUPS = ("ingest", "index", "evaluation")

ingest_job = dg.define_asset_job(
    "ingest",
    selection=INGEST_SELECTION,
    description="Crawl the site, chunk it, embed the chunks and rebuild the vector index.",
)


def parallel_executor(settings: Settings) -> dg.ExecutorDefinition:
    """Dagster's multiprocess executor, at most `run.max_parallel` steps at once (cores not oversubscribed)."""
    return dg.multiprocess_executor.configured(
        {"max_concurrent": settings.run.max_parallel}, name="multiprocess_run_max_parallel"
    )


def build_jobs(
    settings: Settings, executor_def: dg.ExecutorDefinition | None = None
) -> list[dg.UnresolvedAssetJobDefinition]:
    """`ingest`, `finetune` (questions → datasets → one run per sweep point) and `evaluate`. `executor_def` runs
    the steps of `finetune` and `evaluate` (default: `parallel_executor`; the celery deployment's executor sends
    them to workers, pipeline/deploy/)."""
    executor_def = executor_def or parallel_executor(settings)
    finetune_job = dg.define_asset_job(
        "finetune",
        selection=FINETUNE_SELECTION,
        executor_def=executor_def,
        description="Write questions, build the training files and fine-tune one sweep point per partition. "
        "Costs money (hosted) or CPU hours: never started automatically. Backfill all partitions to run the sweep.",
    )
    evaluate_job = dg.define_asset_job(
        "evaluate",
        selection=EVALUATION_SELECTION,
        executor_def=executor_def,
        description="Answer the held-out questions with a model (partition) and score the answers.",
    )
    return [ingest_job, finetune_job, evaluate_job, visitor_questions_job]


visitor_questions_job = dg.define_asset_job(
    "visitor_days",
    selection=dg.AssetSelection.assets("visitor_questions"),
    description="One day of the visitor log as a table (the visitor_log sensor starts it when a day changes).",
)


def visitor_log_sensor(log_path: str | Path, partitions_def: dg.PartitionsDefinition) -> dg.SensorDefinition:
    """Materializes the days of visitor_questions whose answers or feedback changed since its last look (the
    review_queue follows on its own); nothing while the log is unchanged."""

    @dg.sensor(
        name="visitor_log",
        job=visitor_questions_job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Refreshes visitor_questions for each day with new questions or feedback; review_queue follows.",
    )
    def visitor_log(context: dg.SensorEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        marks = VisitorLog(log_path).fingerprints()
        seen = json.loads(context.cursor) if context.cursor else {}
        valid = set(partitions_def.get_partition_keys())
        changed = [day for day, mark in marks.items() if seen.get(day) != mark and day in valid]
        if not changed:
            return dg.SkipReason("no new questions or feedback in the visitor log")
        context.update_cursor(json.dumps(marks))
        return [dg.RunRequest(run_key=f"{day}:{marks[day]}", partition_key=day) for day in changed]

    return visitor_log


def recrawl_schedule(settings: Settings, data_dir: str | Path | None = None) -> dg.ScheduleDefinition:
    """The weekly recrawl; a tick while a `mebot run` holds `data_dir` (resources/run_lock.py) is skipped,
    saying why, so the two never write the same assets at once."""

    @dg.schedule(
        name="recrawl",
        job=ingest_job,
        cron_schedule=settings.site.recrawl_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Recrawl the site ({settings.site.recrawl_cron}); unchanged pages change nothing downstream. "
        "Skipped while a `mebot run` is materializing into the same data folder.",
    )
    def recrawl(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        holder = lock_holder(data_dir) if data_dir else None
        if holder:
            return dg.SkipReason(f"{data_dir} is being materialized by {holder}; the recrawl waits for its next tick")
        return dg.RunRequest()

    return recrawl


class InPartitions(dg.AutomationCondition):
    """True for the given partition keys of a partitioned asset (never for an unpartitioned one)."""

    def __init__(self, keys: Iterable[str]):
        self.keys = frozenset(keys)

    @property
    def name(self) -> str:
        return f"in_partitions({', '.join(sorted(self.keys))})"

    @property
    def requires_cursor(self) -> bool:
        return False

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        return dg.AutomationResult(
            context, context.candidate_subset.compute_intersection_with_partition_keys(self.keys)
        )


def inputs_changed() -> dg.AutomationCondition:
    """`AutomationCondition.eager()`, except that an input counts as updated only when its data version changed:
    re-materializing an upstream asset that produced the same content (a recrawl with nothing new) starts
    nothing. Each step of a chain starts on the tick after its input finished, once its new version is known."""
    condition = dg.AutomationCondition
    return (
        condition.in_latest_time_window()
        & (
            condition.newly_missing()
            | condition.any_deps_match(condition.data_version_changed()).with_label("any_input_data_changed")
        ).since_last_handled()
        & ~condition.any_deps_missing()
        & ~condition.any_deps_in_progress()
        & ~condition.in_progress()
    ).with_label("inputs_changed")


def visitor_questions_updated() -> dg.AutomationCondition:
    """For `review_queue`: any day of visitor_questions re-materialized (the visitor_log sensor starts them);
    days never materialized are not waited for."""
    condition = dg.AutomationCondition
    return (
        (condition.newly_missing() | condition.any_deps_updated()).since_last_handled()
        & ~condition.any_deps_in_progress()
        & ~condition.in_progress()
    ).with_label("visitor_questions_updated")


def golden_summary_updated() -> dg.AutomationCondition:
    """For `release`: a new golden_summary, not a new index, starts it, so a release is always gated on figures
    measured with the index it ships (an index alone would be compared with the old figures and pass)."""
    condition = dg.AutomationCondition
    updated = condition.any_deps_match(condition.newly_updated()).allow(dg.AssetSelection.assets("golden_summary"))
    return (
        condition.in_latest_time_window()
        & (condition.newly_missing() | updated.with_label("golden_summary_updated")).since_last_handled()
        & ~condition.any_deps_missing()
        & ~condition.any_deps_in_progress()
        & ~condition.in_progress()
    ).with_label("golden_summary_updated")


def automation_condition_for(spec: dg.AssetSpec, partitioned: bool) -> dg.AutomationCondition | None:
    """The automation policy of one asset: None (a person starts it) or `inputs_changed`, limited to the `rag`
    partition for per-model assets; `release` follows the golden figures. Roots (the crawl) have no inputs: the
    schedule starts them."""
    if spec.key == dg.AssetKey("release"):
        return golden_summary_updated()
    if spec.key == dg.AssetKey("review_queue"):
        return visitor_questions_updated()
    if spec.group_name not in AUTOMATED_GROUPS or not spec.deps:
        return None
    if partitioned:
        return (inputs_changed() & InPartitions([RAG_PARTITION])).with_label(f"inputs_changed, {RAG_PARTITION} only")
    return inputs_changed()


def with_automation(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
    partitioned = assets_def.partitions_def is not None

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(automation_condition=automation_condition_for(spec, partitioned))

    return assets_def.map_asset_specs(apply)


with warnings.catch_warnings():
    # use_user_code_server is beta; custom conditions (InPartitions) need it: the daemon cannot import them.
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        use_user_code_server=True,
        minimum_interval_seconds=30,
        description="Updates the RAG assets and the rag model's evaluation when their inputs' data changed; "
        "never starts question writing or fine-tuning.",
    )
