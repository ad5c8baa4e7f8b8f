"""The `qa` group's assets."""

import dagster as dg

from mebot.assets.qa.passages import qa_chunks
from mebot.assets.qa.questions import synthetic_qa
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Nothing here is partitioned: the same definitions whatever the settings."""
    return [qa_chunks, synthetic_qa]
