"""What every settings section shares: strictness (unknown keys are errors) and the error a bad file raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SettingsError(ValueError):
    """A settings file that cannot be used; the message says which key, what value, what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
