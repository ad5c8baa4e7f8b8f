"""Stage 3: embed the RAG chunks (`chunk_embeddings`) and index them with FAISS (`vector_index`).

Long chunks: several vectors per chunk, never truncation.
    A RAG chunk is up to `rag.chunk_tokens` (900) cl100k tokens, about 1,000-1,100 word-pieces, but
    all-MiniLM-L6-v2 reads 256 word-pieces (254 of text) and sentence-transformers silently drops the rest: a
    fact in the last three quarters of a chunk would never reach its vector. So every chunk is cut into windows
    (`Embedder.windows`: whole sentences where possible, `models.embedding.window_overlap_tokens` shared between
    neighbours) and EVERY window gets its own vector, mapped back to its chunk. Retrieval scores a chunk by its
    best window (max over windows, `LoadedIndex.search`) and still returns whole chunks as context.

    Why the best window and not one mean-pooled vector per chunk: the mean averages a single fact with the
    rest of the chunk, so the question that fact answers matches it weakly. In the test with a one-sentence fact
    at the end of a ~900-token chunk about something else, truncation and mean-pooling both rank that chunk last
    of six; the best window ranks it first.

    Why windows of 128 word-pieces (`mebot.resources.embeddings.DEFAULT_WINDOW_TOKENS`) rather than the 254 the
    model could read: a window's vector is itself a mean over its tokens, so a long window dilutes a fact too,
    and all-MiniLM-L6-v2 was trained on 128-piece inputs. Measured on the sample site (47 chunks, 25 questions
    whose answers sit late in long chunks): hit@1 13/25 truncated, 20/25 with 254-piece windows, 21/25 with
    128 (MRR 0.70 / 0.87 / 0.91); on off-topic facts planted in synthetic chunks, top-1 24/48 with 254-piece
    windows, 31/48 with 128. The cost is ~10 vectors per 900-token chunk instead of ~4: trivial at the size of a
    personal site.

Incremental: vectors are cached per window text (SQLite, keyed by model identity and sha256 of the text), so
after a page changes only the windows whose text changed reach the model.
"""

import time
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.outputs import versioned_output
from mebot.resources.embeddings import Embedder, EmbedderResource, EmbeddingCache, embed_with_cache, text_sha256
from mebot.resources.hashing import stable_hash
from mebot.resources.parquet_io import content_version
from mebot.resources.settings import SettingsResource, reads_settings
from mebot.resources.vector_index import IndexMismatchError, VectorIndexResource

CHUNK_EMBEDDING_COLUMNS = ["chunk_id", "window", "text_sha256", "vector", "identity"]
_VERSION_COLUMNS = ["chunk_id", "window", "text_sha256", "identity"]


@dataclass
class EmbeddingStats:
    chunks: int
    windows: int
    cache_hits: int
    cache_misses: int
    seconds: float

    @property
    def passages_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds > 0 else 0.0


def embed_chunks(
    chunks: pd.DataFrame, embedder: Embedder, cache: EmbeddingCache | None
) -> tuple[pd.DataFrame, EmbeddingStats]:
    """One row per window of every chunk: chunk_id, window (0, 1, …), text_sha256 of the window text, its
    vector (float32, unit length) and the embedder identity. Cached windows are not embedded again."""
    started = time.monotonic()
    ids: list[str] = []
    positions: list[int] = []
    texts: list[str] = []
    for chunk in chunks[["chunk_id", "text"]].itertuples(index=False):
        for position, window in enumerate(embedder.windows(chunk.text)):
            ids.append(chunk.chunk_id)
            positions.append(position)
            texts.append(window)
    vectors, hits, misses = embed_with_cache(embedder, cache, texts)
    frame = pd.DataFrame(
        {
            "chunk_id": pd.Series(ids, dtype=object),
            "window": pd.Series(positions, dtype="int64"),
            "text_sha256": pd.Series([text_sha256(t) for t in texts], dtype=object),
            "vector": pd.Series(list(vectors), dtype=object),
            "identity": pd.Series([embedder.identity] * len(texts), dtype=object),
        },
        columns=CHUNK_EMBEDDING_COLUMNS,
    )
    stats = EmbeddingStats(len(chunks), len(texts), hits, misses, time.monotonic() - started)
    return frame, stats


def embeddings_version(embeddings: pd.DataFrame, identity: str) -> str:
    """Content version of a chunk_embeddings frame: which windows, of which text, by which model."""
    return content_version(embeddings.assign(identity=identity), _VERSION_COLUMNS)


def stack_vectors(embeddings: pd.DataFrame, dim: int) -> np.ndarray:
    if embeddings.empty:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.stack(embeddings["vector"].to_numpy()), dtype=np.float32)


@dg.asset(
    group_name="index",
    kinds={"pytorch", "sqlite", "parquet"},
    code_version="1",
    metadata=reads_settings("models.embedding"),
)
def chunk_embeddings(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    rag_chunks: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Embedding vectors of the RAG chunks, for the vector index: each chunk is cut into windows the embedding
    model reads whole (no silent truncation) and every window gets a vector. Vectors of window texts seen
    before come from the cache, so only changed text is embedded again."""
    config = settings.for_asset(context)
    model = embedder.embedder(config)
    cache = embedder.cache() if config.models.use_cache else None
    frame, stats = embed_chunks(rag_chunks, model, cache)
    context.log.info(
        f"{stats.windows} windows of {stats.chunks} chunks with {model.identity}: {stats.cache_hits} cached, "
        f"{stats.cache_misses} embedded, {stats.seconds:.1f} s"
    )
    per_chunk = frame.groupby("chunk_id").size() if len(frame) else pd.Series(dtype="int64")
    return versioned_output(
        frame,
        embeddings_version(frame, model.identity),
        {
            "chunks": dg.MetadataValue.int(stats.chunks),
            "windows": dg.MetadataValue.int(stats.windows),
            "windows_per_chunk_max": dg.MetadataValue.int(int(per_chunk.max()) if len(per_chunk) else 0),
            "dim": dg.MetadataValue.int(model.dim),
            "model": dg.MetadataValue.text(model.identity),
            "max_tokens_per_window": dg.MetadataValue.int(model.max_tokens),
            "cache_hits": dg.MetadataValue.int(stats.cache_hits),
            "cache_misses": dg.MetadataValue.int(stats.cache_misses),
            "seconds": dg.MetadataValue.float(round(stats.seconds, 3)),
            "passages_per_s": dg.MetadataValue.float(round(stats.passages_per_s, 2)),
        },
    )


@dg.asset(
    group_name="index",
    kinds={"faiss"},
    code_version="1",
    metadata=reads_settings("models.embedding", "rag.ivf_min_vectors", "rag.ivf_nprobe"),
)
def vector_index(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    index_store: VectorIndexResource,
    chunk_embeddings: pd.DataFrame,
) -> dg.MaterializeResult:
    """The FAISS index over every window vector, mapped back to chunk ids, which retrieval searches (best window
    per chunk). Exact (flat) below `rag.ivf_min_vectors` vectors, IVF from there on. Written as a new version
    folder under the index directory, then made current atomically; a failed build leaves the previous one."""
    config = settings.for_asset(context)
    model = embedder.embedder(config)
    identity = model.identity
    built_with = set(chunk_embeddings["identity"].unique()) if len(chunk_embeddings) else {identity}
    if built_with != {identity}:
        raise IndexMismatchError(
            f"chunk_embeddings were computed with {', '.join(sorted(built_with))}, settings say {identity}: "
            "re-materialize chunk_embeddings"
        )
    vectors = stack_vectors(chunk_embeddings, model.dim)
    summary = index_store.write(
        vectors,
        chunk_embeddings["chunk_id"].tolist(),
        identity,
        config.rag.ivf_min_vectors,
        config.rag.ivf_nprobe,
    )
    context.log.info(f"{summary['kind']} index of {summary['size']} vectors written to {summary['path']}")
    # The index's content: the embeddings, plus how they are searched when that changes results (IVF settings).
    searched_as = f"{summary['kind']}:{summary.get('nlist', '')}:{summary.get('nprobe', '')}"
    version = stable_hash(embeddings_version(chunk_embeddings, identity), searched_as)
    metadata = {
        "kind": dg.MetadataValue.text(summary["kind"]),
        "vectors": dg.MetadataValue.int(summary["size"]),
        "chunks": dg.MetadataValue.int(summary["chunks"]),
        "dim": dg.MetadataValue.int(summary["dim"]),
        "identity": dg.MetadataValue.text(identity),
        "path": dg.MetadataValue.path(summary["path"]),
        "version": dg.MetadataValue.text(summary["version"]),
        "build_seconds": dg.MetadataValue.float(summary["build_seconds"]),
    }
    if summary["kind"] == "ivf":
        metadata["nlist"] = dg.MetadataValue.int(summary["nlist"])
        metadata["nprobe"] = dg.MetadataValue.int(summary["nprobe"])
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata=metadata)
