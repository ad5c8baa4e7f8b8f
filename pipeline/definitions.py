"""The code location: every asset, check, resource, job and schedule of mebot, built from mebot.yaml."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mebot.assets.evaluation import defs as evaluation
from mebot.assets.evaluation.reports import EvalReports
from mebot.assets.finetune import defs as finetune
from mebot.assets.finetune.dataset import FinetuneFiles
from mebot.assets.index import defs as index
from mebot.assets.ingest import defs as ingest
from mebot.assets.owner import defs as owner
from mebot.assets.owner.visitor import VISITOR_PARTITIONS
from mebot.assets.qa import defs as qa
from mebot.pipeline.deploy import active_deployment
from mebot.pipeline.jobs import (
    automation_sensor,
    build_jobs,
    recrawl_schedule,
    visitor_log_sensor,
    with_automation,
)
from mebot.resources.chat import ChatModelResource
from mebot.resources.crawler import ScrapyCrawler
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.layout import DataLayout, data_dir_from_env
from mebot.resources.lora import ModelStore
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.releases import ReleaseStore
from mebot.resources.settings import (
    Settings,
    SettingsResource,
    config_path_from_env,
    load_settings,
    sections_of,
    stamped_code_version,
)
from mebot.resources.vector_index import VectorIndexResource
from mebot.resources.visitor_log import VisitorLogResource

# The asset groups; each builds its assets and checks from the settings (partitions included).
ASSET_GROUPS = [ingest, index, qa, finetune, evaluation, owner]

__all__ = [
    "ASSET_GROUPS",
    "build_assets",
    "build_definitions",
    "data_dir_from_env",  # the data directory ($MEBOT_DATA_DIR or data/), for the CLI and the server
    "defs",
    "with_settings_code_version",
]


def with_settings_code_version(assets_def: dg.AssetsDefinition, settings: Settings) -> dg.AssetsDefinition:
    """Fold the settings sections an asset reads into its code_version, so editing them makes it stale."""

    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        sections = sections_of(spec.metadata)
        return spec.replace_attributes(code_version=stamped_code_version(spec.code_version or "0", settings, sections))

    return assets_def.map_asset_specs(stamp)


def build_assets(settings: Settings) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """Every group's assets (code versions stamped with the settings they read, automation applied) and checks,
    partitioned as `settings` says."""
    built = [definition for group in ASSET_GROUPS for definition in group.build(settings)]
    checks = [d for d in built if isinstance(d, dg.AssetChecksDefinition)]
    assets = [d for d in built if not isinstance(d, dg.AssetChecksDefinition)]
    assets = [with_automation(with_settings_code_version(a, settings)) for a in assets]  # policy: pipeline/jobs.py
    return assets, checks


def build_definitions(config_path: str | Path | None = None, data_dir: str | Path | None = None) -> dg.Definitions:
    config = Path(config_path).resolve() if config_path else config_path_from_env()
    settings = load_settings(config)
    assets, checks = build_assets(settings)
    data = DataLayout(Path(data_dir).resolve()) if data_dir else DataLayout.from_env()
    deployment = active_deployment()  # $MEBOT_DEPLOY: the executor of finetune/evaluate, the LLM cache's home
    deployment.check_environment()
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=build_jobs(settings, deployment.executor_def()),
        schedules=[recrawl_schedule(settings, data.root)],
        sensors=[automation_sensor, visitor_log_sensor(data.visitor_log, VISITOR_PARTITIONS)],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(data.root)),
            "crawler": ScrapyCrawler(),
            "embedder": EmbedderResource(cache_dir=str(data.cache_dir)),
            "index_store": VectorIndexResource(index_dir=str(data.index_dir)),
            "chat_model": ChatModelResource(cache_dir=str(data.cache_dir), cache_url=deployment.llm_cache_url()),
            "finetune_files": FinetuneFiles(base_dir=str(data.finetune_dir)),
            "model_store": ModelStore(base_dir=str(data.models_dir)),
            "eval_reports": EvalReports(base_dir=str(data.root)),
            "release_store": ReleaseStore(releases_dir=str(data.releases_dir)),
            "visitor_log": VisitorLogResource(path=str(data.visitor_log)),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location workspace.yaml loads: built when Dagster loads it (from $MEBOT_CONFIG or mebot.yaml),
    not when this module is imported."""
    return build_definitions()
