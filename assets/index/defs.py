"""The `index` group's assets."""

import dagster as dg

from mebot.assets.index.embeddings import chunk_embeddings, vector_index
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Nothing here is partitioned: the same definitions whatever the settings."""
    return [chunk_embeddings, vector_index]
