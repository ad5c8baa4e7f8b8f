from pipeline.definitions import build_definitions


def test_recrawl_schedule_runs_the_ingest_job_on_the_configured_cron(make_config):
    defs = build_definitions(make_config({"site": {"recrawl_cron": "15 4 * * 2"}}))
    schedule = defs.get_schedule_def("recrawl")
    assert schedule.cron_schedule == "15 4 * * 2"
    assert schedule.job_name == "ingest"


def test_ingest_job_covers_crawl_to_index_and_nothing_that_costs_money(make_config):
    defs = build_definitions(make_config())
    job = defs.resolve_job_def("ingest")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {"raw_pages", "rag_chunks", "chunk_embeddings", "vector_index"}
