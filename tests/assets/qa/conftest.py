from pathlib import Path

import pytest

from mebot.resources.chat import ChatModelResource
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import SettingsResource


@pytest.fixture
def qa_resources(tmp_path: Path):
    """The resources the qa assets use, for a settings file, with data under tmp_path/data."""

    def make(config: Path) -> dict:
        return {
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
            "chat_model": ChatModelResource(cache_dir=str(tmp_path / "data" / "cache")),
        }

    return make
