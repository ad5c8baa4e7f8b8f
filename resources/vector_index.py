"""The FAISS vector index of chunk windows, written atomically as versions under one folder.

Each version (`index.faiss`, `ids.parquet` mapping rows to chunk ids, `meta.json`) is built in a hidden partial
folder and renamed into place before `CURRENT` names it, so a crash at any moment leaves the previous version
loadable; the two newest are kept for readers that loaded `CURRENT` just before a build. Flat or IVF: docs/rag.md."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import faiss
import numpy as np
import pandas as pd

from mebot.resources.clock import utc_now
from mebot.resources.files import PARTIAL_SUFFIX, atomic_output, write_atomically

CURRENT_FILE = "CURRENT"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "meta.json"
KEEP_VERSIONS = 2
LEGACY_PARTIAL_PREFIX = ".partial-"  # an older name of unfinished builds, still removed when abandoned
STALE_PARTIAL_S = 3600
MIN_POINTS_PER_LIST = 39  # FAISS warns (and k-means degrades) below 39 training points per centroid
# Fewer queries than this are searched on one OpenMP thread: handing one query to a thread team costs more than
# it saves, and on a machine with few, busy cores a thread barrier waits out a scheduler tick.
SINGLE_THREAD_BELOW_QUERIES = 32
_OMP_LOCK = threading.Lock()


class IndexNotFoundError(FileNotFoundError):
    """No index has been built in this folder yet."""


class IndexMismatchError(RuntimeError):
    """The index was built with another embedding model than the settings name."""


def ivf_nlist(n_vectors: int) -> int:
    """≈ 4·sqrt(n) inverted lists, but never so many that a list has fewer than 39 training vectors."""
    return max(1, min(round(4 * math.sqrt(n_vectors)), n_vectors // MIN_POINTS_PER_LIST))


def build_faiss_index(vectors: np.ndarray, ivf_min_vectors: int, ivf_nprobe: int) -> tuple[Any, dict]:
    """A FAISS index over `vectors` (already normalised) and a description of it (kind, nlist, nprobe)."""
    n, dim = vectors.shape
    if n < ivf_min_vectors:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {"kind": "flat"}
    nlist = ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = min(ivf_nprobe, nlist)
    index.referenced_objects = [quantizer]  # keep the quantizer alive as long as the index
    return index, {"kind": "ivf", "nlist": nlist, "nprobe": int(index.nprobe)}


def _check_vectors(vectors: np.ndarray, chunk_ids: list[str]) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array (n, dim), got shape {vectors.shape}")
    if len(vectors) != len(chunk_ids):
        raise ValueError(f"{len(vectors)} vectors but {len(chunk_ids)} chunk ids")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinite values")
    return vectors


def _new_version_name() -> str:
    # Sorts by creation time; the suffix keeps two builds within the same microsecond apart.
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:6]}"


def _fsync_path(path: Path) -> None:
    """Flush a file's or a folder's (its entries') contents to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_version(folder: Path) -> None:
    """Every file of a finished version, the version folder and the index folder that names it reach the disk
    before CURRENT may name it: after a power loss CURRENT never points at a version whose files were lost."""
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        _fsync_path(file)
    _fsync_path(folder)
    _fsync_path(folder.parent)


def _write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, text, fsync=True)  # CURRENT must never name a version whose pointer was lost


def _versions(index_dir: Path) -> list[str]:
    return sorted(
        p.name for p in index_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file()
    )


def _prune(index_dir: Path, keep: int = KEEP_VERSIONS) -> list[str]:
    """Delete all but the `keep` newest versions (never the CURRENT one) and abandoned partial builds."""
    current = _read_current(index_dir)
    removed = []
    for name in _versions(index_dir)[:-keep]:
        if name != current:
            shutil.rmtree(index_dir / name, ignore_errors=True)
            removed.append(name)
    abandoned = [*index_dir.glob(f".*{PARTIAL_SUFFIX}"), *index_dir.glob(f"{LEGACY_PARTIAL_PREFIX}*")]
    for partial in abandoned:
        try:
            stale = time.time() - partial.stat().st_mtime > STALE_PARTIAL_S
        except FileNotFoundError:  # its build just finished or cleaned up
            continue
        if stale and partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif stale:
            partial.unlink(missing_ok=True)
    return removed


def _read_current(index_dir: Path) -> str | None:
    try:
        return (index_dir / CURRENT_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_index(
    index_dir: Path,
    vectors: np.ndarray,
    chunk_ids: list[str],
    identity: str,
    ivf_min_vectors: int,
    ivf_nprobe: int,
) -> dict:
    """Build a new index version from `vectors` (row i belongs to `chunk_ids[i]`) and make it CURRENT.

    Returns a summary: kind, size, dim, chunks, identity, version, path (and nlist/nprobe for IVF)."""
    index_dir = Path(index_dir)
    chunk_ids = [str(c) for c in chunk_ids]
    vectors = _check_vectors(vectors, chunk_ids)
    started = time.monotonic()
    index, described = build_faiss_index(vectors, ivf_min_vectors, ivf_nprobe)
    version = _new_version_name()
    meta = {
        "identity": identity,
        "dim": int(vectors.shape[1]),
        "size": int(len(vectors)),
        "chunks": len(set(chunk_ids)),
        **described,
        "created_at": utc_now(),
        "faiss_version": faiss.__version__,
    }
    final = index_dir / version
    with atomic_output(final) as partial:
        partial.mkdir()
        faiss.write_index(index, str(partial / INDEX_FILE))
        pd.DataFrame({"chunk_id": chunk_ids}).to_parquet(partial / IDS_FILE, index=False)
        (partial / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    _fsync_version(final)
    _write_text_atomically(index_dir / CURRENT_FILE, version + "\n")
    _fsync_path(index_dir)  # CURRENT's rename itself
    pruned = _prune(index_dir)
    return {
        **meta,
        "version": version,
        "path": str(final),
        "pruned": pruned,
        "build_seconds": round(time.monotonic() - started, 3),
    }


class LoadedIndex:
    """A loaded index version: search it with query vectors, get chunk ids (not windows) back."""

    def __init__(self, index: Any, chunk_ids: np.ndarray, meta: dict, path: Path):
        self.index = index
        self.chunk_ids = chunk_ids
        self.meta = meta
        self.path = path
        self.identity: str = meta["identity"]
        self.size: int = int(index.ntotal)
        self.dim: int = int(index.d)
        self.kind: str = meta["kind"]
        self.n_chunks = len(set(chunk_ids.tolist()))
        self._windows_per_chunk = self.size / self.n_chunks if self.n_chunks else 1.0

    def __repr__(self) -> str:
        return f"LoadedIndex({self.kind}, {self.size} vectors, {self.n_chunks} chunks, {self.identity}, {self.path})"

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per query: up to k distinct chunk ids, each with its best score over its windows, best first.

        Asks FAISS for more windows than k (chunks have several) and doubles the request until k distinct
        chunks are found, the index is exhausted, or (IVF) the probed lists hold no more vectors."""
        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(query_vectors, dtype=np.float32)))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {queries.shape}; this index holds {self.dim}-d vectors")
        results: list[list[tuple[str, float]]] = [[] for _ in range(len(queries))]
        if k <= 0 or self.size == 0:
            return results
        wanted = min(k, self.n_chunks)
        fetch = min(self.size, math.ceil(wanted * self._windows_per_chunk) + wanted)
        pending = list(range(len(queries)))
        while pending:
            with _omp_threads(1 if len(pending) < SINGLE_THREAD_BELOW_QUERIES else None):
                scores, labels = self.index.search(queries[pending], fetch)
            still = []
            for row, query in enumerate(pending):
                hits = self._distinct(scores[row], labels[row], wanted)
                exhausted = fetch >= self.size or bool((labels[row] < 0).any())
                if len(hits) >= wanted or exhausted:
                    results[query] = hits
                else:
                    still.append(query)
            pending = still
            fetch = min(self.size, fetch * 2)
        return results

    def _distinct(self, scores: np.ndarray, labels: np.ndarray, k: int) -> list[tuple[str, float]]:
        seen: set[str] = set()
        hits = []
        for score, label in zip(scores, labels, strict=True):
            if label < 0:
                break
            chunk = self.chunk_ids[label]
            if chunk in seen:
                continue  # a lower-scoring window of a chunk already listed
            seen.add(chunk)
            hits.append((chunk, float(score)))
            if len(hits) == k:
                break
        return hits


@contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP thread count for the block (process-wide, restored after; None: leave it)."""
    if threads is None:
        yield
        return
    with _OMP_LOCK:
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(previous)


def load_index(index_dir: Path, expected_identity: str | None = None) -> LoadedIndex:
    """The CURRENT index version in `index_dir`; with `expected_identity`, refuses one built by another model."""
    index_dir = Path(index_dir)
    version = _read_current(index_dir)
    if version is None or not (index_dir / version / META_FILE).is_file():
        detail = "" if version is None else f" (CURRENT names {version!r}, which is missing)"
        raise IndexNotFoundError(f"no index yet in {index_dir}{detail}: run `make run` first")
    folder = index_dir / version
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if expected_identity is not None and meta["identity"] != expected_identity:
        raise IndexMismatchError(
            f"index built with {meta['identity']}, settings say {expected_identity}: re-materialize vector_index"
        )
    index = faiss.read_index(str(folder / INDEX_FILE))
    chunk_ids = pd.read_parquet(folder / IDS_FILE)["chunk_id"].to_numpy(dtype=object)
    if index.ntotal != len(chunk_ids):
        raise RuntimeError(f"{folder} is inconsistent: {index.ntotal} vectors but {len(chunk_ids)} ids")
    if meta["kind"] == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(meta["nprobe"])
    return LoadedIndex(index, chunk_ids, meta, folder)


class VectorIndexResource(dg.ConfigurableResource):
    """Where the FAISS index lives (`index_dir`): versions plus a CURRENT pointer, written atomically."""

    index_dir: str

    def write(
        self, vectors: np.ndarray, chunk_ids: list[str], identity: str, ivf_min_vectors: int, ivf_nprobe: int
    ) -> dict:
        return write_index(Path(self.index_dir), vectors, chunk_ids, identity, ivf_min_vectors, ivf_nprobe)

    def load(self, expected_identity: str | None = None) -> LoadedIndex:
        return load_index(Path(self.index_dir), expected_identity)


__all__ = [
    "IndexMismatchError",
    "IndexNotFoundError",
    "LoadedIndex",
    "VectorIndexResource",
    "build_faiss_index",
    "ivf_nlist",
    "load_index",
    "write_index",
]
