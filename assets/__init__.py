"""mebot's assets, one subpackage per asset group (ingest, index, qa, finetune, evaluation): pure functions beside
the thin Dagster assets that call them. Each group's `defs.build(settings)` returns its assets and checks, with
the partitions that the settings given define; `mebot.pipeline.definitions` wires them together."""
