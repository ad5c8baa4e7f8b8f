"""Where everything lives under the data directory: the one place that knows mebot's file layout (the folders are
listed in docs/architecture.md). Outside it, shared by every data directory, the ONNX export cache
(`$MEBOT_MODEL_CACHE`, else `$XDG_CACHE_HOME/mebot`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mebot.resources.settings import PROJECT_ROOT

DATA_DIR_ENV_VAR = "MEBOT_DATA_DIR"
MODEL_CACHE_ENV_VAR = "MEBOT_MODEL_CACHE"

ADAPTER_FILE = "adapter.gguf"
PEFT_ADAPTER_DIR = "peft_adapter"
TRAINING_LOG_FILE = "training_log.json"
OPENAI_JOB_FILE = "openai_job.json"  # in a model folder: the OpenAI fine-tuning job of that sweep point
OPENAI_FILES_REGISTRY = "openai_files.json"  # beside the model folders: training files uploaded, by sha256
LLM_CACHE_FILE = "llm_calls.sqlite"  # in the cache folder
EMBEDDING_CACHE_FILE = "embeddings.sqlite"  # in the cache folder
VISITOR_LOG_FILE = "visitor_log.sqlite"  # in the visitors folder
REVIEW_DECISIONS_FILE = "review.json"  # in the visitors folder: accepted/dismissed review queue items


def data_dir_from_env() -> Path:
    """The data directory: $MEBOT_DATA_DIR, or the project's data/."""
    return Path(os.environ.get(DATA_DIR_ENV_VAR) or PROJECT_ROOT / "data").resolve()


def model_cache_dir() -> Path:
    """Files derived from installed models alone (the ONNX export of the embedder), for every data directory:
    $MEBOT_MODEL_CACHE, else $XDG_CACHE_HOME/mebot, else ~/.cache/mebot."""
    configured = os.environ.get(MODEL_CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser().resolve() / "mebot"


def model_dir(models_dir: str | Path, key: str) -> Path:
    """`<models_dir>/<key>`: one fine-tuned model's folder; a key that is not one plain folder name is refused."""
    if not key or "/" in key or "\\" in key or key in {".", ".."}:
        raise ValueError(f"not a usable model folder name: {key!r}")
    return Path(models_dir) / key


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @classmethod
    def from_env(cls) -> DataLayout:
        return cls(data_dir_from_env())

    @classmethod
    def at(cls, root: str | Path | None) -> DataLayout:
        return cls(Path(root).expanduser().resolve()) if root else cls.from_env()

    def asset(self, name: str, partition: str | None = None) -> Path:
        """The Parquet file of an asset (or one of its partitions), as the IO manager writes it."""
        return self.partitions_dir(name) / f"{partition}.parquet" if partition else self.root / f"{name}.parquet"

    def partitions_dir(self, name: str) -> Path:
        """The folder of a partitioned asset's files (one `<partition>.parquet` each)."""
        return self.root / name

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def llm_cache(self) -> Path:
        return self.cache_dir / LLM_CACHE_FILE

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def finetune_dir(self) -> Path:
        return self.root / "finetune"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def external_dir(self) -> Path:
        return self.root / "external"

    @property
    def releases_dir(self) -> Path:
        return self.root / "releases"

    @property
    def visitors_dir(self) -> Path:
        return self.root / "visitors"

    @property
    def visitor_log(self) -> Path:
        return self.visitors_dir / VISITOR_LOG_FILE

    @property
    def review_decisions(self) -> Path:
        return self.visitors_dir / REVIEW_DECISIONS_FILE

    def model_dir(self, key: str) -> Path:
        return model_dir(self.models_dir, key)

    def adapter(self, key: str) -> Path:
        return self.model_dir(key) / ADAPTER_FILE
