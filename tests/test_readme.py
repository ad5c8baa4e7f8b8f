"""The README's promises that code can check."""

import re

from mebot.pipeline.definitions import build_definitions
from mebot.resources.settings import DEFAULT_CONFIG_PATH, PROJECT_ROOT, sections_of

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def _settings_table() -> dict[str, set[str]]:
    """README rows `| settings keys | assets |` under "Settings and staleness": key → assets named for it."""
    section = README.split("## Settings and staleness", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        assets = set(re.findall(r"`(\w+)`", cells[1]))
        for key in re.findall(r"`([\w.]+)`", cells[0]):
            table.setdefault(key, set()).update(assets)
    return table


def test_readme_settings_table_matches_what_each_asset_reads():
    table = _settings_table()
    defs = build_definitions(DEFAULT_CONFIG_PATH)
    actual: dict[str, set[str]] = {}
    for assets_def in defs.assets:
        for spec in assets_def.specs:
            for key in sections_of(spec.metadata):
                actual.setdefault(key, set()).add(spec.key.to_user_string())
    for key, assets in actual.items():
        assert table.get(key) == assets, f"README says {key} affects {table.get(key)}, the code says {assets}"
    for key, assets in table.items():
        if assets:
            assert actual.get(key) == assets, f"README says {key} affects {assets}; no asset reads it"


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"
