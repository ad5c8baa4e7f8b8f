"""FAISS index build time and query latency at 1k, 10k and 100k random 384-d unit vectors.

    .venv/bin/python bench/bench_index.py [--sizes 1000 10000 100000] [--queries 300] [--k 4]

Each size is written with write_index (build + atomic write, default settings: flat below rag.ivf_min_vectors
= 50,000, IVF with nprobe 16 from there on) and loaded with load_index; query latency is one query at a time
through LoadedIndex.search (distinct chunks, 5 windows per chunk), p50/p95 over --queries queries. The largest
size is also built flat, for comparison. Target: p50 ≤ 10 ms at 10k.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.settings import RagSettings  # noqa: E402
from resources.vector_index import load_index, write_index  # noqa: E402

DIM = 384
WINDOWS_PER_CHUNK = 5


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bench(n: int, ivf_min_vectors: int, nprobe: int, queries: np.ndarray, k: int) -> str:
    vectors = unit_vectors(n, seed=n)
    ids = [f"chunk-{i // WINDOWS_PER_CHUNK}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-index-") as folder:
        started = time.perf_counter()
        summary = write_index(Path(folder), vectors, ids, "bench:random:384", ivf_min_vectors, nprobe)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        index = load_index(Path(folder))
        load_s = time.perf_counter() - started
        index.search(queries[:5], k)  # warm-up
        latencies = []
        for query in queries:
            started = time.perf_counter()
            hits = index.search(query[None, :], k)
            latencies.append((time.perf_counter() - started) * 1000)
            assert len(hits[0]) == k
        batch_started = time.perf_counter()
        index.search(queries, k)
        batch_ms = (time.perf_counter() - batch_started) * 1000 / len(queries)
    p50, p95 = np.percentile(latencies, [50, 95])
    kind = summary["kind"] + (
        f" nlist={summary['nlist']} nprobe={summary['nprobe']}" if summary["kind"] == "ivf" else ""
    )
    return (
        f"{n:>8,}  {kind:26s} build {build_s:7.2f} s  load {load_s * 1000:7.1f} ms  "
        f"query p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  (batched {batch_ms:.2f} ms/query)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()

    import faiss

    rag = RagSettings()
    queries = unit_vectors(args.queries, seed=1)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, {DIM}-d, k={args.k}")
    for n in args.sizes:
        print(bench(n, rag.ivf_min_vectors, rag.ivf_nprobe, queries, args.k), flush=True)
    largest = max(args.sizes)
    if largest >= rag.ivf_min_vectors:
        print(bench(largest, largest + 1, rag.ivf_nprobe, queries, args.k) + "  [flat, for comparison]")


if __name__ == "__main__":
    main()
