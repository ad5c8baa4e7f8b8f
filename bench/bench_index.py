"""FAISS index build time and query latency at 1k, 10k and 100k random 384-d unit vectors.

    .venv/bin/python bench/bench_index.py [--sizes 1000 10000 100000] [--queries 200] [--k 4] [--quick] [--json OUT]

Each size is written with write_index (build + atomic write, default settings: flat below rag.ivf_min_vectors
= 50,000, IVF with nprobe 16 from there on; several builds, fewer for IVF, whose k-means training takes tens of
seconds) and loaded with load_index; query latency is one query at a time through LoadedIndex.search (distinct
chunks, 5 windows per chunk), p50 and p95 over --queries queries per round, three rounds: the figures are the
median (min–max) of the rounds' p50 and p95. The largest size is also built flat, for comparison.
Target: p50 ≤ 10 ms at 10k.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, finish, percentile, result, standalone_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from mebot.resources.settings import RagSettings  # noqa: E402
from mebot.resources.vector_index import load_index, write_index  # noqa: E402

SECTION = "4. Index"
DIM = 384
WINDOWS_PER_CHUNK = 5
QUERY_ROUNDS = 3
P50_TARGET_MS_AT_10K = 10.0


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bench_size(n: int, ivf_min_vectors: int, nprobe: int, queries: np.ndarray, k: int, builds: int) -> list[Result]:
    vectors = unit_vectors(n, seed=n)
    ids = [f"chunk-{i // WINDOWS_PER_CHUNK}" for i in range(n)]
    build_s: list[float] = []
    p50s: list[float] = []
    p95s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-index-") as folder:
        for _ in range(builds):
            started = time.perf_counter()
            summary = write_index(Path(folder), vectors, ids, "bench:random:384", ivf_min_vectors, nprobe)
            build_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        index = load_index(Path(folder))
        load_ms = (time.perf_counter() - started) * 1000
        index.search(queries[:5], k)  # warm-up
        for _ in range(QUERY_ROUNDS):
            latencies = []
            for query in queries:
                started = time.perf_counter()
                hits = index.search(query[None, :], k)
                latencies.append((time.perf_counter() - started) * 1000)
                assert len(hits[0]) == k
            p50s.append(percentile(latencies, 50))
            p95s.append(percentile(latencies, 95))
    kind = summary["kind"] + (
        f" nlist={summary['nlist']} nprobe={summary['nprobe']}" if summary["kind"] == "ivf" else ""
    )
    label = f"{n:,} vectors, {summary['kind']}"
    p50_target = (("<=", P50_TARGET_MS_AT_10K)) if n == 10_000 else None
    return [
        result(SECTION, f"{label}: build (write_index)", build_s, "s", note=f"{kind}; load {load_ms:.0f} ms"),
        result(
            SECTION, f"{label}: query p50", p50s, "ms", target=p50_target, note=f"k={k}, {len(queries)} queries/round"
        ),
        result(SECTION, f"{label}: query p95", p95s, "ms"),
    ]


def run(quick: bool = False, sizes: tuple[int, ...] = (1_000, 10_000, 100_000), queries: int = 200, k: int = 4):
    rag = RagSettings()
    query_vectors = unit_vectors(100 if quick else queries, seed=1)
    out: list[Result] = []
    for n in sizes:
        ivf = n >= rag.ivf_min_vectors
        builds = (1 if quick else 2) if ivf else (2 if quick else 5)
        out += bench_size(n, rag.ivf_min_vectors, rag.ivf_nprobe, query_vectors, k, builds)
    largest = max(sizes)
    if largest >= rag.ivf_min_vectors:
        out += bench_size(largest, largest + 1, rag.ivf_nprobe, query_vectors, k, 2 if quick else 3)
    return out


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()
    return finish(run(args.quick, tuple(args.sizes), args.queries, args.k), args.json)


if __name__ == "__main__":
    sys.exit(main())
