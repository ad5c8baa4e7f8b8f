"""docs/settings.md is generated from the settings model: every key has help text, and the file is current."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from mebot.pipeline.settings_doc import SETTINGS_DOC, missing_help, render, type_text, walk
from mebot.resources.settings import Settings


def test_every_setting_has_help_text():
    assert missing_help() == [], "add description=... to these settings, then run `make settings-doc`"


def test_docs_settings_md_is_the_generated_reference():
    assert SETTINGS_DOC.is_file(), f"{SETTINGS_DOC} is missing; run `make settings-doc`"
    assert SETTINGS_DOC.read_text(encoding="utf-8") == render(), f"{SETTINGS_DOC} is stale; run `make settings-doc`"


def test_the_reference_lists_every_key_of_the_default_settings_with_its_default():
    text = render()
    dumped = Settings().model_dump(mode="json")

    def leaves(value, prefix=""):
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and prefix.count(".") < 3:
            for key, inner in value.items():
                yield from leaves(inner, f"{prefix}{key}.")
        else:
            yield prefix.rstrip(".")

    for key in leaves(dumped):
        if not key.startswith("models.prices."):  # a user-named table: documented as models.prices.<name>
            assert f"| `{key}` |" in text, key
    assert "| `rag.top_k` | int | `4` |" in text


class _Inner(BaseModel):
    documented: int = Field(1, description="Has help.")
    bare: str = "x"


class _Outer(BaseModel):
    inner: _Inner = Field(default_factory=_Inner, description="A section.")
    items: list[_Inner] = Field(default_factory=list)


def test_missing_help_names_every_key_without_a_description():
    assert missing_help(_Outer) == ["items", "inner.bare", "items[].bare"]
    assert [doc.key for doc in walk(_Outer)] == [
        "inner.documented",
        "inner.bare",
        "items",
        "items[].documented",
        "items[].bare",
    ]


@pytest.mark.parametrize(
    ("annotation", "text"),
    [(int, "int"), (list[str], "list[str]"), (Literal["hybrid", "dense"], "one of: hybrid, dense")],
)
def test_types_read_as_a_person_writes_them(annotation, text):
    assert type_text(annotation) == text
