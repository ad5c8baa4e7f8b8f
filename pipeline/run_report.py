"""What a Dagster run says to a person: while it runs, its progress and what is left (from what its stage logs);
when it is done, one line per materialization and check, and the user's own error."""

from __future__ import annotations

import re
from dataclasses import dataclass


def _is_short_scalar(value: object) -> bool:
    if isinstance(value, bool | int | float):
        return True
    if isinstance(value, dict):
        return len(str(value)) <= 120
    return isinstance(value, str) and len(value) <= 40 and "\n" not in value


def summary_lines(result) -> list[str]:
    lines = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata = materialization.metadata
        rows = metadata.get("dagster/row_count")
        partition = f" [{materialization.partition}]" if materialization.partition else ""
        extras = [
            f"{key}={round(value.value, 3) if isinstance(value.value, float) else value.value}"
            for key, value in metadata.items()
            if not key.startswith("dagster/") and key != "path" and _is_short_scalar(value.value)
        ]
        row_text = f"{rows.value} rows" if rows is not None else ""
        lines.append(f"  {materialization.asset_key.to_user_string()}{partition}: {row_text}  {'  '.join(extras)}")
    for evaluation in result.get_asset_check_evaluations():
        status = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        if not evaluation.passed:  # why, in the check's own short words (golden_no_regression: each model's drop)
            status += "".join(
                f"  {key}={value.value}"
                for key, value in evaluation.metadata.items()
                if isinstance(value.value, str) and "\n" not in value.value and len(value.value) <= 400
            )
        lines.append(f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {status}")
    return lines


def user_error_message(error) -> str:
    """The innermost error of a failed step: the user's exception, not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


# What each stage logs as it goes (its own words, read back from the run's event log): a pattern with `done` and
# optionally `total`, and what is counted. tests/pipeline/test_run_progress.py checks each stage still says it.
PROGRESS_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^crawl: (?P<done>\d+) pages, \d+ skipped"), "pages crawled"),
    (re.compile(r"^(?P<done>\d+) windows of \d+ chunks"), "windows embedded"),
    (re.compile(r"^question (?P<round>\d+), attempt \d+: (?P<done>\d+)/(?P<total>\d+)"), "questions written"),
    (re.compile(r": step (?P<done>\d+)/(?P<total>\d+) epoch"), "training steps"),
    (re.compile(r": (?P<done>\d+)/(?P<total>\d+) answered"), "answers"),
    (re.compile(r": (?P<done>\d+)/(?P<total>\d+) judged"), "answers judged"),
)


@dataclass(frozen=True)
class StageProgress:
    done: int
    total: int | None
    what: str  # "pages crawled"


def progress_of_message(message: str) -> StageProgress | None:
    """The progress a stage's log message reports, or None when it reports none."""
    for pattern, what in PROGRESS_PATTERNS:
        match = pattern.search(message)
        if match:
            total = match.groupdict().get("total")
            if match.groupdict().get("round") and match["round"] != "1":
                what = f"{what} (round {match['round']})"
            return StageProgress(int(match["done"]), int(total) if total else None, what)
    return None


def seconds_left(
    progress: StageProgress | None, elapsed: float, previous: float | None, counted_for: float | None = None
) -> float | None:
    """What is left of a stage: at its rate so far while it counts towards a known total (`counted_for`: the
    seconds since this count began, e.g. a second round of questions; default `elapsed`), else (a count that has
    reached its total may be one round of several) what the last run of the same asset took minus the time spent;
    None when neither is known."""
    if progress is not None and progress.total and 0 < progress.done < progress.total:
        counting = elapsed if counted_for is None else counted_for
        return counting * max(0, progress.total - progress.done) / progress.done
    if previous is not None:
        return max(0.0, previous - elapsed)
    return None


def duration_text(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(
    label: str,
    progress: StageProgress | None,
    elapsed: float,
    previous: float | None,
    counted_for: float | None = None,
) -> str:
    """One line a person reads while `label` runs: what it has done, how long it has run, what is left."""
    if progress is None:
        done = "running"
    elif progress.total:
        done = f"{progress.done}/{progress.total} {progress.what}"
    else:
        done = f"{progress.done} {progress.what}"
    parts = [f"  … {label}: {done}", f"{duration_text(elapsed)} in"]
    left = seconds_left(progress, elapsed, previous, counted_for)
    if left is not None:
        counting = progress is not None and progress.total and progress.done < progress.total
        basis = "" if counting else f" (the last run took {duration_text(previous)})"
        parts.append(f"about {duration_text(left)} left{basis}")
    return ", ".join(parts)
