"""What a finished Dagster run says to a person: one line per materialization and check, the user's own error."""

from __future__ import annotations


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
        lines.append(f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {status}")
    return lines


def user_error_message(error) -> str:
    """The innermost error of a failed step: the user's exception, not Dagster's wrapper around it."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()
