"""docs/settings.md, generated from the settings model: every key of every section, its type, its default and its
help text (the field's `description=`). `python -m mebot.pipeline.settings_doc --write` (or `make settings-doc`)
rewrites the file; tests/pipeline/test_settings_doc.py fails when a field has no help text or the file is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from mebot.resources.settings import PROJECT_ROOT, Settings

SETTINGS_DOC = PROJECT_ROOT / "docs" / "settings.md"
LONG_DEFAULT_CHARS = 60  # longer defaults (prompts, selector lists) are shown in full below their table


@dataclass(frozen=True)
class SettingDoc:
    key: str  # dotted: rag.top_k; items of a list of sections: finetune.sweep.points[].n_epochs
    type: str
    default: str  # JSON; "(required)" for a key without a default
    help: str


def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The settings model a field holds: itself, a list's or a dict's items, or an optional one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


def _container_suffix(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        return "[]"
    if origin is dict:
        return ".<name>"
    return ""


def type_text(annotation: object) -> str:
    """A type as a person reads it: int, list[str], one of: hybrid, dense."""
    if typing.get_origin(annotation) is typing.Literal:
        return "one of: " + ", ".join(str(value) for value in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:\w+\.)+(?=\w)", "", str(annotation)).replace("Optional[", "optional[")


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


def walk(model: type[BaseModel], prefix: str = "") -> Iterator[SettingDoc]:
    """Every key of `model` and of the sections inside it, in declaration order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _nested_model(field.annotation)
        if nested is not None and field.annotation is not nested:  # a list, a table or an optional section
            yield SettingDoc(key, type_text(field.annotation), default_text(field), field.description or "")
            yield from walk(nested, f"{key}{_container_suffix(field.annotation)}.")
        elif nested is not None:
            yield from walk(nested, f"{key}.")
        else:
            yield SettingDoc(key, type_text(field.annotation), default_text(field), field.description or "")


def sections(model: type[BaseModel] = Settings) -> Iterator[tuple[str, str, type[BaseModel]]]:
    """(name, help text, model) of each top-level section."""
    for name, field in model.model_fields.items():
        yield name, field.description or "", _nested_model(field.annotation)


def missing_help(model: type[BaseModel] = Settings) -> list[str]:
    """Keys (and sections) without help text."""
    missing = [name for name, text, _ in sections(model) if not text.strip()]
    return list(dict.fromkeys(missing + [doc.key for doc in walk(model) if not doc.help.strip()]))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(model: type[BaseModel] = Settings) -> str:
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated from the settings model (resources/settings*.py) by `make settings-doc`; do not edit. -->",
        "",
        "Every key of the settings file (`mebot.yaml`, or the file `mebot --config PATH` names), with its default and",
        "what it does. A key left out keeps its default; an unknown key is an error. Which assets each section",
        "affects: [how settings make assets stale](settings-and-staleness.md).",
        "",
    ]
    for name, text, section_model in sections(model):
        lines += [f"## `{name}`", "", text, "", "| key | type | default | what it does |", "|---|---|---|---|"]
        long_defaults = []
        for doc in walk(section_model, f"{name}."):
            default = f"`{_cell(doc.default)}`"
            if len(doc.default) > LONG_DEFAULT_CHARS:
                long_defaults.append(doc)
                default = "below"
            lines.append(f"| `{doc.key}` | {_cell(doc.type)} | {default} | {_cell(doc.help)} |")
        for doc in long_defaults:
            value = json.loads(doc.default)
            shown = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
            lines += ["", f"Default of `{doc.key}`:", "", "```text", shown, "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {SETTINGS_DOC} (default: print it)")
    args = parser.parse_args(argv)
    missing = missing_help()
    if missing:
        print(f"settings without help text (add description=...): {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.write:
        SETTINGS_DOC.parent.mkdir(parents=True, exist_ok=True)
        Path(SETTINGS_DOC).write_text(render(), encoding="utf-8")
        print(f"wrote {SETTINGS_DOC}")
    else:
        print(render(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
