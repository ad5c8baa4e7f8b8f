"""Embedding throughput: chunk_embeddings' code path vs raw SentenceTransformer.encode, the ONNX backends, the cache.

    .venv/bin/python bench/bench_embeddings.py [--reps 3] [--windows 96] [--batch-size 32] [--quick] [--json OUT]

Texts: the embedded sample site's pages, chunked as the pipeline does (900-token chunks), cut into the model's
windows; the first chunks up to about --windows windows (the whole site takes minutes per pass on 2 cores).
Every figure is passages (windows) per second over the same texts and batch size, --reps rounds, interleaved
(each round in a rotated order) so that drift hits every variant alike; a ratio is the median (min–max) of the
per-round ratios:

- raw encode:        SentenceTransformer.encode(windows, batch_size, normalize_embeddings=True)
- embed, no cache:   embed_with_cache(embedder, None, windows)  (length check + encode + normalise)
- embed, cold cache: the same with an empty EmbeddingCache (lookups miss, every vector is written)
- embed, warm cache: the same with every window cached (no model call): the re-run of chunk_embeddings
- chunk path:        mebot.assets.index.embeddings.embed_chunks(chunks, embedder, None): what chunk_embeddings
                     runs (windowing of each chunk + embedding), per window
- onnx, onnx_int8:   embed_with_cache(embedder, None, windows) with models.embedding.backend onnx (the model
                     exported to ONNX Runtime) and onnx_int8 (its weights int8 per channel; the default), and the
                     cosine of each of their vectors with PyTorch's
Targets: the torch model paths ≥ 0.9 × raw encode; the default backend's chunk path ≥ 2 × raw encode (issue "RAG
that answers right on 2 cores"; what retrieval does with its vectors: bench_rag_answers.py).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, finish, interleaved, ratios, result, standalone_parser  # noqa: E402
from _corpus import sample_site_pages  # noqa: E402

sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mebot.assets.index.embeddings import embed_chunks  # noqa: E402
from mebot.assets.ingest.chunks import chunk_pages  # noqa: E402
from mebot.resources.embeddings import EmbeddingCache, build_embedder, embed_with_cache  # noqa: E402
from mebot.resources.settings import EmbeddingModelSettings, Settings  # noqa: E402

SECTION = "3. Embeddings"


def sample_site_chunks(settings: Settings) -> pd.DataFrame:
    return chunk_pages(sample_site_pages(settings), settings.rag.chunk_tokens, settings.rag.overlap_tokens)


def run(quick: bool = False, reps: int = 3, windows_wanted: int = 96, batch_size: int = 32) -> list[Result]:
    import torch

    if quick:
        reps, windows_wanted = 2, 64
    settings = Settings()
    embedder = build_embedder(EmbeddingModelSettings(batch_size=batch_size, backend="torch"))
    default_backend = EmbeddingModelSettings().backend
    backends = {
        name: build_embedder(EmbeddingModelSettings(batch_size=batch_size, backend=name))
        for name in ("onnx", "onnx_int8")
    }
    all_chunks = sample_site_chunks(settings)
    keep, windows = [], []
    for position, text in enumerate(all_chunks["text"]):
        if len(windows) >= windows_wanted:
            break
        keep.append(position)
        windows.extend(embedder.windows(text))
    chunks = all_chunks.iloc[keep]
    pieces = embedder.count_tokens(windows)
    model = embedder.model
    warm_dir = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    reference, _, _ = embed_with_cache(embedder, EmbeddingCache(warm_dir), windows)  # fills the warm cache
    cosines = {}
    for name, other in backends.items():  # exports the ONNX files on first use (not timed), warms them up
        vectors, _, _ = embed_with_cache(other, None, windows)
        cosines[name] = (np.asarray(vectors) * np.asarray(reference)).sum(axis=1)

    def raw() -> None:
        model.encode(
            windows, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def no_cache() -> None:
        embed_with_cache(embedder, None, windows)

    def cold_cache() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as cold:
            _, hits, _ = embed_with_cache(embedder, EmbeddingCache(cold), windows)
            assert hits == 0

    def warm_cache() -> None:
        _, hits, _ = embed_with_cache(embedder, EmbeddingCache(warm_dir), windows)
        assert hits == len(windows)

    def chunk_path() -> None:
        frame, _ = embed_chunks(chunks, embedder, None)
        assert len(frame) == len(windows)

    def onnx() -> None:
        embed_with_cache(backends["onnx"], None, windows)

    def onnx_int8() -> None:
        embed_with_cache(backends["onnx_int8"], None, windows)

    def default_chunk_path() -> None:
        frame, _ = embed_chunks(chunks, backends[default_backend], None)
        assert len(frame) == len(windows)

    variants: dict[str, Callable[[], None]] = {
        "raw": raw,
        "no_cache": no_cache,
        "cold": cold_cache,
        "warm": warm_cache,
        "chunks": chunk_path,
        "onnx": onnx,
        "onnx_int8": onnx_int8,
        "default_chunks": default_chunk_path,
    }
    try:
        seconds = interleaved(variants, reps)
    finally:
        shutil.rmtree(warm_dir, ignore_errors=True)
    rate = {name: [len(windows) / s for s in values] for name, values in seconds.items()}
    note = (
        f"{len(windows)} windows of {len(chunks)} sample-site chunks, {statistics.mean(pieces):.0f} word-pieces "
        f"on average; batch {batch_size}; torch threads {torch.get_num_threads()}"
    )
    return [
        result(SECTION, "raw SentenceTransformer.encode", rate["raw"], "passages/s", note=note),
        result(SECTION, "chunk_embeddings' path (embed_chunks)", rate["chunks"], "passages/s"),
        result(
            SECTION,
            "chunk_embeddings' path / raw encode",
            ratios(rate["chunks"], rate["raw"]),
            "ratio",
            target=(">=", 0.9),
            note="includes cutting the chunks into windows",
        ),
        result(
            SECTION,
            "embed_with_cache, no cache / raw encode",
            ratios(rate["no_cache"], rate["raw"]),
            "ratio",
            target=(">=", 0.9),
        ),
        result(
            SECTION,
            "embed_with_cache, cold cache / raw encode",
            ratios(rate["cold"], rate["raw"]),
            "ratio",
            target=(">=", 0.9),
        ),
        result(SECTION, "backend onnx (ONNX Runtime, fp32), no cache", rate["onnx"], "passages/s"),
        result(SECTION, "backend onnx / raw encode", ratios(rate["onnx"], rate["raw"]), "ratio"),
        result(
            SECTION,
            "backend onnx: cosine with PyTorch's vectors, lowest",
            [float(cosines["onnx"].min())],
            "cosine",
            note=f"mean {float(cosines['onnx'].mean()):.6f}",
        ),
        result(SECTION, "backend onnx_int8 (weights int8 per channel), no cache", rate["onnx_int8"], "passages/s"),
        result(SECTION, "backend onnx_int8 / raw encode", ratios(rate["onnx_int8"], rate["raw"]), "ratio"),
        result(
            SECTION,
            "backend onnx_int8: cosine with PyTorch's vectors, lowest",
            [float(cosines["onnx_int8"].min())],
            "cosine",
            note=f"mean {float(cosines['onnx_int8'].mean()):.4f}",
        ),
        result(
            SECTION,
            f"chunk_embeddings' path, default backend ({default_backend}) / raw encode",
            ratios(rate["default_chunks"], rate["raw"]),
            "ratio",
            target=(">=", 2.0),
            note="what `make run` embeds with, against PyTorch's encode",
        ),
        result(SECTION, "cache hits (re-run), every window cached", rate["warm"], "passages/s"),
        result(SECTION, "cache hits (re-run) / cold cache", ratios(rate["warm"], rate["cold"]), "× faster"),
    ]


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--windows", type=int, default=96, help="about this many windows per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    return finish(run(args.quick, args.reps, args.windows, args.batch_size), args.json)


if __name__ == "__main__":
    sys.exit(main())
