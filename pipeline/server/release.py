"""What the server answers with: the current release (data/releases/CURRENT), reloaded when a new one is promoted
or rolled back to; a new index that has not passed the golden gate is not served. Before the first release (a data
folder built before releases existed, or one copied by hand) it answers with the newest index and chunks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mebot.assets.index.rag import IndexNotFoundError, RagBot, load_rag_bot
from mebot.resources.layout import DataLayout
from mebot.resources.releases import current_release, read_current_id
from mebot.resources.settings import Settings
from mebot.resources.vector_index import load_index


def release_signature(data_dir: Path) -> tuple | None:
    """What changes when another release is served (promoted, rolled back to): CURRENT's content; None before the
    first release, when the newest index is served (models.materialization_signature)."""
    release_id = read_current_id(DataLayout(Path(data_dir)).releases_dir)
    return ("release", release_id) if release_id else None


def load_served_bot(settings: Settings, resources: dict, data_dir: Path) -> RagBot:
    """A RagBot over the current release's own index and chunks (or the newest ones before the first release)."""
    release = current_release(DataLayout(Path(data_dir)).releases_dir)
    if release is None:
        return load_rag_bot(settings, resources, data_dir)
    if not release.chunks_file.is_file():
        raise IndexNotFoundError(f"release {release.id} has no chunks file: `mebot release rollback` to another")
    embedder = resources["embedder"].embedder(settings)
    index = load_index(release.index_dir, expected_identity=embedder.identity)
    chat = resources["chat_model"].client(settings)
    cache = resources["embedder"].cache() if settings.models.use_cache else None
    return RagBot(settings, embedder, index, pd.read_parquet(release.chunks_file), chat, embedding_cache=cache)


def served_release_id(data_dir: Path) -> str | None:
    """The id of the release being served (None before the first release), for /healthz and the visitor log."""
    return read_current_id(DataLayout(Path(data_dir)).releases_dir)
