"""The code location: every asset, check, resource, job and schedule of mebot, built from mebot.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from assets import answers, chunks, crawl, evaluation, finetune, finetune_data, index, qa
from pipeline.jobs import automation_sensor, build_jobs, recrawl_schedule, with_automation
from pipeline.settings import (
    PROJECT_ROOT,
    Settings,
    SettingsResource,
    config_path_from_env,
    load_settings,
    sections_of,
    stamped_code_version,
)
from resources.chat import ChatModelResource
from resources.crawler import ScrapyCrawler
from resources.embeddings import EmbedderResource
from resources.lora import ModelStore
from resources.parquet_io import ParquetIOManagerFactory
from resources.vector_index import VectorIndexResource

ASSET_MODULES = [crawl, chunks, index, qa, finetune_data, finetune, answers, evaluation]
DATA_DIR_ENV_VAR = "MEBOT_DATA_DIR"


def data_dir_from_env() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV_VAR) or PROJECT_ROOT / "data").resolve()


def with_settings_code_version(assets_def: dg.AssetsDefinition, settings: Settings) -> dg.AssetsDefinition:
    """Fold the settings sections an asset reads into its code_version, so editing them makes it stale."""

    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        sections = sections_of(spec.metadata)
        return spec.replace_attributes(code_version=stamped_code_version(spec.code_version or "0", settings, sections))

    return assets_def.map_asset_specs(stamp)


def build_definitions(config_path: str | Path | None = None, data_dir: str | Path | None = None) -> dg.Definitions:
    config = Path(config_path).resolve() if config_path else config_path_from_env()
    settings = load_settings(config)
    loaded = dg.load_assets_from_modules(ASSET_MODULES)
    assets = [with_settings_code_version(a, settings) for a in loaded if isinstance(a, dg.AssetsDefinition)]
    assets = [with_automation(a) for a in assets]  # the policy lives in pipeline/jobs.py
    data = Path(data_dir).resolve() if data_dir else data_dir_from_env()
    return dg.Definitions(
        assets=assets,
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=build_jobs(settings),
        schedules=[recrawl_schedule(settings)],
        sensors=[automation_sensor],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(data)),
            "crawler": ScrapyCrawler(),
            "embedder": EmbedderResource(cache_dir=str(data / "cache")),
            "index_store": VectorIndexResource(index_dir=str(data / "index")),
            "chat_model": ChatModelResource(cache_dir=str(data / "cache")),
            "finetune_files": finetune_data.FinetuneFiles(base_dir=str(data / "finetune")),
            "model_store": ModelStore(base_dir=str(data / "models")),
            "eval_reports": evaluation.EvalReports(base_dir=str(data)),
        },
    )


defs = build_definitions()
