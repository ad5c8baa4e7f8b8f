"""The FAISS index on disk: flat vs IVF, distinct-chunk search, identity checks, atomic versions."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

import mebot.resources.vector_index as vector_index_module
from mebot.resources.vector_index import (
    CURRENT_FILE,
    IndexMismatchError,
    IndexNotFoundError,
    VectorIndexResource,
    ivf_nlist,
    load_index,
    write_index,
)

IDENTITY = "sentence_transformers:all-MiniLM-L6-v2:384"


def unit_vectors(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def windowed_ids(n: int, windows_per_chunk: int = 3) -> list[str]:
    return [f"chunk-{i // windows_per_chunk:05d}" for i in range(n)]


def best_chunks_by_brute_force(vectors, chunk_ids, query, k) -> list[tuple[str, float]]:
    best: dict[str, float] = {}
    for chunk, score in zip(chunk_ids, vectors @ query, strict=True):
        best[chunk] = max(best.get(chunk, -2.0), float(score))
    return sorted(best.items(), key=lambda item: -item[1])[:k]


@pytest.mark.parametrize(
    ("n", "expected"), [(10, 1), (999, 25), (1000, 25), (50_000, 894), (100_000, 1265), (1_000_000, 4000)]
)
def test_ivf_nlist_is_about_four_sqrt_n_with_enough_training_points_per_list(n, expected):
    assert ivf_nlist(n) == expected
    assert n // ivf_nlist(n) >= 39 or n < 39


@pytest.mark.parametrize(("n", "kind"), [(999, "flat"), (1000, "ivf"), (1500, "ivf")])
def test_index_is_flat_below_ivf_min_vectors_and_ivf_from_there_on(tmp_path, n, kind):
    vectors, ids = unit_vectors(n), windowed_ids(n)
    summary = write_index(tmp_path, vectors, ids, IDENTITY, ivf_min_vectors=1000, ivf_nprobe=8)
    assert (summary["kind"], summary["size"], summary["dim"]) == (kind, n, 384)
    loaded = load_index(tmp_path, IDENTITY)
    assert (loaded.kind, loaded.size, loaded.identity) == (kind, n, IDENTITY)
    faiss_type = faiss.IndexIVFFlat if kind == "ivf" else faiss.IndexFlatIP
    assert isinstance(faiss.downcast_index(loaded.index), faiss_type)
    assert loaded.index.metric_type == faiss.METRIC_INNER_PRODUCT
    if kind == "ivf":
        assert faiss.extract_index_ivf(loaded.index).nprobe == 8 == summary["nprobe"]
        assert faiss.extract_index_ivf(loaded.index).nlist == ivf_nlist(n)
    # a stored vector finds its own chunk first, with cosine similarity 1
    ((top, *_),) = loaded.search(vectors[7:8], 3)
    assert top[0] == ids[7] and top[1] == pytest.approx(1.0, abs=1e-4)


def test_flat_search_returns_k_distinct_chunks_with_their_best_window_score_best_first(tmp_path):
    vectors, ids = unit_vectors(900, seed=1), windowed_ids(900, windows_per_chunk=3)
    write_index(tmp_path, vectors, ids, IDENTITY, ivf_min_vectors=50_000, ivf_nprobe=16)
    loaded = load_index(tmp_path)
    queries = unit_vectors(5, seed=2)
    for query, hits in zip(queries, loaded.search(queries, 10), strict=True):
        assert len(hits) == 10 and len({c for c, _ in hits}) == 10
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        expected = best_chunks_by_brute_force(vectors, ids, query, 10)
        assert [c for c, _ in hits] == [c for c, _ in expected]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in expected], atol=1e-5)


@pytest.mark.parametrize("ivf_min_vectors", [1000, 50_000])
def test_search_reads_enough_windows_to_fill_k_chunks_when_one_chunk_has_many_close_windows(tmp_path, ivf_min_vectors):
    query = unit_vectors(1, seed=3)[0]
    near = query + 0.05 * unit_vectors(60, seed=4)  # 60 windows of one chunk, all closer than anything else
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    vectors = np.vstack([unit_vectors(1200, seed=5), near])
    ids = windowed_ids(1200, windows_per_chunk=2) + ["the-long-chunk"] * 60
    write_index(tmp_path, vectors, ids, IDENTITY, ivf_min_vectors=ivf_min_vectors, ivf_nprobe=64)
    (hits,) = load_index(tmp_path).search(query[None, :], 5)
    assert len(hits) == 5 and len({c for c, _ in hits}) == 5
    assert hits[0][0] == "the-long-chunk" and hits[0][1] > 0.99
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_search_with_k_above_the_number_of_chunks_returns_every_chunk_once(tmp_path):
    vectors, ids = unit_vectors(12), windowed_ids(12, windows_per_chunk=4)
    write_index(tmp_path, vectors, ids, IDENTITY, ivf_min_vectors=1000, ivf_nprobe=1)
    (hits,) = load_index(tmp_path).search(vectors[0], 10)
    assert sorted(c for c, _ in hits) == sorted(set(ids))
    with pytest.raises(ValueError, match="384-d"):
        load_index(tmp_path).search(np.ones((1, 10), dtype=np.float32), 3)


def test_an_index_built_with_another_model_is_refused_by_name(tmp_path):
    write_index(tmp_path, unit_vectors(20), windowed_ids(20), IDENTITY, ivf_min_vectors=1000, ivf_nprobe=1)
    with pytest.raises(IndexMismatchError) as raised:
        load_index(tmp_path, expected_identity="openai:text-embedding-3-small:1536")
    assert str(raised.value) == (
        f"index built with {IDENTITY}, settings say openai:text-embedding-3-small:1536: re-materialize vector_index"
    )
    assert load_index(tmp_path).identity == IDENTITY  # without an expectation it loads


def test_a_missing_index_says_to_run_make_run_first(tmp_path):
    with pytest.raises(IndexNotFoundError, match=r"no index yet in .*: run `make run` first"):
        load_index(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run `make run` first"):
        VectorIndexResource(index_dir=str(tmp_path / "empty")).load(IDENTITY)


def _crash_in_faiss_write(monkeypatch):
    def broken(index, path):
        Path(path).write_bytes(b"half an index")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)


def _crash_before_current_is_replaced(monkeypatch):
    def broken(path, text):
        raise OSError("killed")

    monkeypatch.setattr(vector_index_module, "_write_text_atomically", broken)


@pytest.mark.parametrize("crash", [_crash_in_faiss_write, _crash_before_current_is_replaced])
def test_a_crash_mid_write_leaves_the_previous_index_loadable(tmp_path, monkeypatch, crash):
    first = write_index(tmp_path, unit_vectors(30), windowed_ids(30), IDENTITY, ivf_min_vectors=1000, ivf_nprobe=1)
    crash(monkeypatch)
    with pytest.raises(OSError):
        write_index(tmp_path, unit_vectors(50, seed=9), windowed_ids(50), IDENTITY, 1000, 1)
    monkeypatch.undo()
    loaded = load_index(tmp_path, IDENTITY)
    assert loaded.size == 30 and loaded.path.name == first["version"]
    assert not list(tmp_path.glob(".*.partial"))  # no half-built folder (or CURRENT) left behind
    # and the next build works normally
    assert write_index(tmp_path, unit_vectors(40), windowed_ids(40), IDENTITY, 1000, 1)["size"] == 40
    assert load_index(tmp_path).size == 40


def test_each_build_is_a_new_version_and_only_the_two_newest_are_kept(tmp_path):
    versions = []
    for n in (10, 20, 30, 40):
        versions.append(write_index(tmp_path, unit_vectors(n), windowed_ids(n), IDENTITY, 1000, 1)["version"])
    assert versions == sorted(versions) and len(set(versions)) == 4
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == versions[-2:]
    assert (tmp_path / CURRENT_FILE).read_text().strip() == versions[-1]
    for version in kept:
        assert {p.name for p in (tmp_path / version).iterdir()} == {"index.faiss", "ids.parquet", "meta.json"}
    meta = json.loads((tmp_path / versions[-1] / "meta.json").read_text())
    assert {k: meta[k] for k in ("identity", "dim", "size", "kind")} == {
        "identity": IDENTITY,
        "dim": 384,
        "size": 40,
        "kind": "flat",
    }
    assert meta["created_at"]
    assert load_index(tmp_path).size == 40


def test_resource_writes_and_loads_under_its_index_dir(tmp_path):
    store = VectorIndexResource(index_dir=str(tmp_path / "vector_index"))
    summary = store.write(unit_vectors(5), list("abcde"), IDENTITY, 1000, 16)
    assert Path(summary["path"]).parent == tmp_path / "vector_index"
    loaded = store.load(IDENTITY)
    assert loaded.search(unit_vectors(5)[2], 1) == [[("c", pytest.approx(1.0, abs=1e-4))]]


def test_mismatched_vectors_and_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="3 vectors but 2 chunk ids"):
        write_index(tmp_path, unit_vectors(3), ["a", "b"], IDENTITY, 1000, 1)
    assert not (tmp_path / CURRENT_FILE).exists()


def test_single_queries_run_on_one_openmp_thread_and_the_setting_is_restored(tmp_path, monkeypatch):
    write_index(tmp_path, unit_vectors(200), windowed_ids(200), IDENTITY, 1000, 1)
    loaded = load_index(tmp_path)
    threads_seen = []
    real_search = loaded.index.search

    def spy(queries, k):
        threads_seen.append(faiss.omp_get_max_threads())
        return real_search(queries, k)

    monkeypatch.setattr(loaded, "index", type("Spy", (), {"search": staticmethod(spy)})())
    before = faiss.omp_get_max_threads()
    loaded.search(unit_vectors(1, seed=3), 4)
    loaded.search(unit_vectors(64, seed=4), 4)
    assert threads_seen[0] == 1 and threads_seen[-1] == before
    assert faiss.omp_get_max_threads() == before


def test_an_empty_index_loads_and_finds_nothing(tmp_path):
    summary = write_index(tmp_path, np.zeros((0, 384), dtype=np.float32), [], IDENTITY, 1000, 16)
    assert (summary["kind"], summary["size"]) == ("flat", 0)
    assert load_index(tmp_path, IDENTITY).search(unit_vectors(2), 4) == [[], []]
