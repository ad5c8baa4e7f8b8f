"""Jobs and schedules: what runs together, and what runs on its own.

Policy: the site is recrawled on `site.recrawl_cron` (the `ingest` job: crawl, chunks, embeddings, index). Every
asset returns a data version computed from its content, so a recrawl that finds nothing new leaves everything
after it fresh, and only changed chunks are re-embedded (the embedding cache). Fine-tuning never starts on its
own: it costs money or CPU hours, so it shows as stale and waits for a person.
"""

import dagster as dg

from pipeline.settings import Settings

# What `mebot run` / `make run` build by default: the RAG bot, crawl to vector index.
DEFAULT_RUN_SELECTION = dg.AssetSelection.groups("ingest", "index")

ingest_job = dg.define_asset_job(
    "ingest",
    selection=DEFAULT_RUN_SELECTION,
    description="Crawl the site, chunk it, embed the chunks and rebuild the vector index.",
)


def recrawl_schedule(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="recrawl",
        job=ingest_job,
        cron_schedule=settings.site.recrawl_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Recrawl the site ({settings.site.recrawl_cron}); unchanged pages change nothing downstream.",
    )
