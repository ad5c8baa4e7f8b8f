"""What the finetune tests share: a stand-in `finetune_dataset` and the resources `finetuned_models` needs."""

from pathlib import Path

import dagster as dg
import pandas as pd

from mebot.resources.lora import ModelStore
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import SettingsResource


def fake_upstream(frame: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name="finetune_dataset")
    def fake_finetune_dataset() -> pd.DataFrame:
        return frame

    return fake_finetune_dataset


def resources(config: Path, data: Path) -> dict:
    return {
        "settings": SettingsResource(config_path=str(config)),
        "model_store": ModelStore(base_dir=str(data / "models")),
        "io_manager": ParquetIOManagerFactory(base_dir=str(data)),
    }
