"""The README and docs/: the promises code can check (the two commands, the staleness table, working links), and a
front door that stays short."""

import re
from pathlib import Path

import pytest

from mebot.pipeline.definitions import build_definitions
from mebot.resources.settings import DEFAULT_CONFIG_PATH, PROJECT_ROOT, load_settings, sections_of

README_PATH = PROJECT_ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
STALENESS_DOC = PROJECT_ROOT / "docs" / "settings-and-staleness.md"
MARKDOWN_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _settings_table() -> dict[str, set[str]]:
    """Rows `| settings keys | assets |` of docs/settings-and-staleness.md: key → assets named for it."""
    table: dict[str, set[str]] = {}
    for line in STALENESS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        assets = set(re.findall(r"`(\w+)`", cells[1]))
        for key in re.findall(r"`([\w.]+)`", cells[0]):
            table.setdefault(key, set()).update(assets)
    return table


def test_staleness_table_matches_what_each_asset_reads():
    table = _settings_table()
    defs = build_definitions(DEFAULT_CONFIG_PATH)
    actual: dict[str, set[str]] = {}
    for assets_def in defs.assets:
        for spec in assets_def.specs:
            for key in sections_of(spec.metadata):
                actual.setdefault(key, set()).add(spec.key.to_user_string())
    for key, assets in actual.items():
        assert table.get(key) == assets, f"the docs say {key} affects {table.get(key)}, the code says {assets}"
    for key, assets in table.items():
        if assets:
            assert actual.get(key) == assets, f"the docs say {key} affects {assets}; no asset reads it"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = README.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"


def test_readme_is_a_front_door_of_about_120_lines():
    lines = README.splitlines()
    assert len(lines) <= 125, f"README.md has {len(lines)} lines; move detail into docs/"
    assert not [line for line in lines if len(line) > 200], "README lines over 200 characters"


def _documents() -> list[Path]:
    return [README_PATH, *DOCS]


@pytest.mark.parametrize("document", _documents(), ids=lambda p: p.name)
def test_every_link_and_image_resolves_inside_the_repository(document: Path):
    text = document.read_text(encoding="utf-8")
    for target in MARKDOWN_LINK.findall(text) + IMAGE_LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: outside links are allowed, but not files outside
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.is_relative_to(PROJECT_ROOT), f"{document.name} links outside the repository: {target}"
        assert resolved.exists(), f"{document.name} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), re.M)}
            assert anchor in headings, f"{document.name}: no heading #{anchor} in {path or document.name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_into_every_doc():
    linked = set(MARKDOWN_LINK.findall(README))
    missing = [doc.name for doc in DOCS if f"docs/{doc.name}" not in linked]
    assert missing == [], f"README.md does not link to {missing}"


@pytest.mark.parametrize("document", _documents(), ids=lambda p: p.name)
def test_docs_carry_no_history_and_one_persona_name(document: Path):
    text = document.read_text(encoding="utf-8")
    assert not re.search(r"(?<![\w-])20\d\d-\d\d-\d\d\b", text), "a dated figure: timings belong in bench/results.md"
    assert not re.search(r"\bthe original\b", text, re.I), "history: say what it does now"
    persona = load_settings(DEFAULT_CONFIG_PATH).persona.name
    assert "Toby" not in text, f"the sample site's person is {persona}"
