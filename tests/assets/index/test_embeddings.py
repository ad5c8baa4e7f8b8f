"""chunk_embeddings and vector_index: long chunks are fully embedded, retrieval finds facts anywhere in a chunk,
and re-materializing after one chunk changed embeds only that chunk's changed windows."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mebot.assets.index.embeddings import (
    CHUNK_EMBEDDING_COLUMNS,
    chunk_embeddings,
    embed_chunks,
    stack_vectors,
    vector_index,
)
from mebot.assets.ingest.chunks import chunk_id
from mebot.resources.embeddings import EmbedderResource, build_embedder, text_sha256
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import EmbeddingModelSettings, SettingsResource
from mebot.resources.tokens import count_tokens
from mebot.resources.vector_index import VectorIndexResource, load_index, write_index
from tests.resources.test_embeddings import topic_prose

FACT = "My greyhound Juno raced under the name Juniper's Dream."
QUESTION = "What name did your greyhound race under?"
FILLER_TOPICS = ["astronomy", "sourdough", "data", "garden", "sailing", "woodwork"]


@pytest.fixture(scope="module")
def minilm():
    return build_embedder(EmbeddingModelSettings())


def chunk_frame(texts: dict[str, str]) -> pd.DataFrame:
    """A rag_chunks-like frame: chunk_id, url, title, text, n_tokens."""
    rows = []
    for position, (url, text) in enumerate(texts.items()):
        rows.append(
            {
                "chunk_id": chunk_id(url, position, text),
                "url": url,
                "title": url.rsplit("/", 1)[-1],
                "text": text,
                "n_tokens": count_tokens(text),
            }
        )
    return pd.DataFrame(rows)


def fact_chunks() -> tuple[pd.DataFrame, str]:
    """Six ~900-token chunks on unrelated topics; the astronomy one ends with FACT. Returns (frame, its id)."""
    texts = {}
    for topic in FILLER_TOPICS:
        if topic == "astronomy":
            texts[f"https://site.test/{topic}"] = topic_prose(topic, 900 - count_tokens(" " + FACT)) + " " + FACT
        else:
            texts[f"https://site.test/{topic}"] = topic_prose(topic, 900)
    frame = chunk_frame(texts)
    return frame, frame.loc[frame["url"].str.endswith("astronomy"), "chunk_id"].item()


def test_a_fact_in_the_last_sentence_of_a_900_token_chunk_retrieves_that_chunk(minilm, tmp_path):
    chunks, target = fact_chunks()
    text = chunks.set_index("chunk_id").loc[target, "text"]
    assert 880 <= count_tokens(text) <= 900 and text.endswith(FACT)

    # The fact lies far beyond what the model reads in one input: a truncated embedding never sees it.
    assert minilm.count_tokens([text[: text.index(FACT)]])[0] > 3 * minilm.max_tokens
    windows = minilm.windows(text)
    assert len(windows) >= 8 and FACT not in windows[0] and windows[-1].endswith(FACT)

    embeddings, stats = embed_chunks(chunks, minilm, cache=None)  # chunk_embeddings' code path
    assert stats.windows == len(embeddings) > len(chunks)
    write_index(
        tmp_path,
        stack_vectors(embeddings, minilm.dim),
        embeddings["chunk_id"].tolist(),
        minilm.identity,
        ivf_min_vectors=50_000,
        ivf_nprobe=16,
    )
    index = load_index(tmp_path, minilm.identity)
    query = minilm.embed([QUESTION])
    (hits,) = index.search(query, 3)
    assert hits[0][0] == target

    # What silent truncation (sentence-transformers' default: the first 256 word-pieces) would have indexed:
    # that vector does not carry the fact, and scores the question far below the fact's window.
    truncated = minilm.model.encode([text], normalize_embeddings=True)[0]
    assert float(truncated @ query[0]) < hits[0][1] - 0.2

    # One mean-pooled vector per chunk would dilute the fact with the astronomy around it: not first either.
    def mean_pooled(chunk_text: str) -> np.ndarray:
        mean = minilm.embed(minilm.windows(chunk_text)).mean(axis=0)
        return mean / np.linalg.norm(mean)

    pooled = {row.chunk_id: float(mean_pooled(row.text) @ query[0]) for row in chunks.itertuples()}
    assert max(pooled, key=pooled.get) != target and pooled[target] < hits[0][1] - 0.1


def rag_chunks_asset(frame: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name="rag_chunks")
    def fake_rag_chunks() -> pd.DataFrame:
        return frame

    return fake_rag_chunks


def _resources(tmp_path, config) -> dict:
    return {
        "settings": SettingsResource(config_path=str(config)),
        "io_manager": ParquetIOManagerFactory(base_dir=str(tmp_path / "data")),
        "embedder": EmbedderResource(cache_dir=str(tmp_path / "data" / "cache")),
        "index_store": VectorIndexResource(index_dir=str(tmp_path / "data" / "vector_index")),
    }


def _materialize(tmp_path, config, frame):
    assets = [rag_chunks_asset(frame), chunk_embeddings, vector_index]
    result = dg.materialize(assets, resources=_resources(tmp_path, config))
    assert result.success
    embedded = result.asset_materializations_for_node("chunk_embeddings")[0]
    indexed = result.asset_materializations_for_node("vector_index")[0]
    return embedded, indexed


def test_assets_embed_every_window_index_them_and_re_embed_only_a_changed_chunk(minilm, tmp_path, make_config):
    config = make_config()
    texts = {
        "https://site.test/a": topic_prose("garden", 880),
        "https://site.test/b": topic_prose("sailing", 600),
        "https://site.test/c": "A short page about my woodworking bench.",
        "https://site.test/d": topic_prose("data", 300),
    }
    first = chunk_frame(texts)
    windows_of = {row.chunk_id: minilm.windows(row.text) for row in first.itertuples()}
    n_windows = sum(map(len, windows_of.values()))

    embedded, indexed = _materialize(tmp_path, config, first)
    meta = embedded.metadata
    assert (meta["chunks"].value, meta["windows"].value) == (4, n_windows) and n_windows >= 8
    assert (meta["cache_hits"].value, meta["cache_misses"].value) == (0, n_windows)
    # the default backend (onnx_int8): vectors of its own, named apart from PyTorch's
    assert meta["model"].value == "sentence_transformers:all-MiniLM-L6-v2:384:int8-7bit" and meta["dim"].value == 384
    assert meta["passages_per_s"].value > 0 and meta["seconds"].value > 0

    stored = pd.read_parquet(tmp_path / "data" / "chunk_embeddings.parquet")
    assert list(stored.columns) == CHUNK_EMBEDDING_COLUMNS and len(stored) == n_windows
    assert stored.groupby("chunk_id")["window"].apply(list).to_dict() == {
        c: list(range(len(w))) for c, w in windows_of.items()
    }
    assert stored["text_sha256"].tolist() == [text_sha256(w) for c in first["chunk_id"] for w in windows_of[c]]
    assert stored["vector"].iloc[0].dtype == np.float32 and len(stored["vector"].iloc[0]) == 384

    assert indexed.metadata["kind"].value == "flat" and indexed.metadata["vectors"].value == n_windows
    assert indexed.metadata["identity"].value == meta["model"].value and indexed.metadata["dim"].value == 384
    index = VectorIndexResource(index_dir=str(tmp_path / "data" / "vector_index")).load(meta["model"].value)
    assert str(index.path) == indexed.metadata["path"].value
    target = first["chunk_id"].iloc[1]
    (hits,) = index.search(minilm.embed([windows_of[target][-1]]), 2)
    assert hits[0][0] == target

    # Change the last sentence of the long chunk: only its windows whose text changed are embedded again.
    changed_url = "https://site.test/a"
    texts[changed_url] = texts[changed_url].rsplit(". ", 1)[0] + ". The leeks finally came up in June."
    second = chunk_frame(texts)
    new_windows = minilm.windows(texts[changed_url])
    old_windows = {w for ws in windows_of.values() for w in ws}
    re_embedded = [w for w in new_windows if w not in old_windows]
    assert 1 <= len(re_embedded) < len(new_windows)  # the change touched some windows of that chunk, not all

    embedded_2, indexed_2 = _materialize(tmp_path, config, second)
    total = n_windows - len(windows_of[first["chunk_id"].iloc[0]]) + len(new_windows)
    assert embedded_2.metadata["cache_misses"].value == len(re_embedded)
    assert embedded_2.metadata["cache_hits"].value == total - len(re_embedded)
    assert indexed_2.metadata["vectors"].value == total
    assert embedded_2.tags["dagster/data_version"] != embedded.tags["dagster/data_version"]
    assert indexed_2.tags["dagster/data_version"] != indexed.tags["dagster/data_version"]

    # Nothing changed: nothing embedded, and the same data versions (downstream stays fresh).
    embedded_3, indexed_3 = _materialize(tmp_path, config, second)
    assert (embedded_3.metadata["cache_hits"].value, embedded_3.metadata["cache_misses"].value) == (total, 0)
    assert embedded_3.tags["dagster/data_version"] == embedded_2.tags["dagster/data_version"]
    assert indexed_3.tags["dagster/data_version"] == indexed_2.tags["dagster/data_version"]


def test_vector_index_refuses_embeddings_made_by_another_model(tmp_path, make_config):
    @dg.asset(name="chunk_embeddings")
    def old_model_embeddings() -> pd.DataFrame:
        vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
        return pd.DataFrame(
            {
                "chunk_id": ["x"],
                "window": [0],
                "text_sha256": ["0" * 64],
                "vector": [vector],
                "identity": ["sentence_transformers:some-older-model:384"],
            }
        )

    result = dg.materialize(
        [old_model_embeddings, vector_index], resources=_resources(tmp_path, make_config()), raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert "some-older-model" in message and "re-materialize chunk_embeddings" in message
    assert not (tmp_path / "data" / "vector_index" / "CURRENT").exists()


def test_index_assets_declare_the_settings_they_read():
    assert chunk_embeddings.specs_by_key[dg.AssetKey("chunk_embeddings")].metadata["mebot/settings_sections"] == (
        "models.embedding"
    )
    sections = vector_index.specs_by_key[dg.AssetKey("vector_index")].metadata["mebot/settings_sections"]
    assert sections == "models.embedding, rag.ivf_min_vectors, rag.ivf_nprobe"
    assert chunk_embeddings.group_names_by_key[dg.AssetKey("chunk_embeddings")] == "index"
