from pathlib import Path

import pytest

from mebot.resources.chat import ChatModelResource
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import SettingsResource
from tests.fakes import FakeEmbedderResource


@pytest.fixture
def qa_resources(tmp_path: Path):
    """The resources the qa assets use, for a settings file, with data under tmp_path/data: the real chat model
    (tests that call it are in the full tier, the others script ChatClient.complete_batch) and the fake embedder
    (`real_embedder=True`: MiniLM, full tier)."""

    def make(config: Path, real_embedder: bool = False) -> dict:
        cache_dir = str(tmp_path / "data" / "cache")
        return {
            "settings": SettingsResource(config_path=str(config)),
            "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
            "chat_model": ChatModelResource(cache_dir=cache_dir),
            "embedder": (EmbedderResource if real_embedder else FakeEmbedderResource)(cache_dir=cache_dir),
        }

    return make


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (full tier: the fixture's name puts a test there)."""
    from mebot.resources.embeddings import build_embedder
    from mebot.resources.settings import EmbeddingModelSettings

    return build_embedder(EmbeddingModelSettings())
