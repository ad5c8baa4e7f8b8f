"""The `ingest` group's assets and checks."""

import dagster as dg

from mebot.assets.ingest.chunks import rag_chunks, rag_chunks_within_token_limit
from mebot.assets.ingest.crawl import raw_pages
from mebot.resources.settings import Settings


def build(settings: Settings) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Nothing here is partitioned: the same definitions whatever the settings."""
    return [raw_pages, rag_chunks, rag_chunks_within_token_limit]
