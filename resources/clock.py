"""The one clock every record's timestamp comes from."""

from datetime import UTC, datetime


def utc_now() -> str:
    """Now in UTC as ISO 8601 to the second, e.g. 2026-12-08T01:15:00+00:00."""
    return datetime.now(UTC).isoformat(timespec="seconds")
