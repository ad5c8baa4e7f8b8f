"""What every settings section shares: strictness (unknown keys are errors) and the error a bad file raises."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class SettingsError(ValueError):
    """A settings file that cannot be used; the message says which key, what value, what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def valid_patterns(patterns: list[str]) -> list[str]:
    """`patterns` unchanged, when every one is a regular expression; else a ValueError naming the bad one."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
    return patterns


def distinct(values: list, what: str = "values") -> list:
    """`values` unchanged, when none repeats; else a ValueError showing them ("`what` repeat: …")."""
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeat: {values}")
    return values
