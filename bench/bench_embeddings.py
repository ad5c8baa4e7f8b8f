"""Embedding throughput: chunk_embeddings' code path vs raw SentenceTransformer.encode, and the cache.

    .venv/bin/python bench/bench_embeddings.py [--repeats 5] [--batch-size 32]

Texts: the embedded sample site (data/sample_site), extracted and chunked as the pipeline does (900-token
chunks), cut into the model's windows. Every figure is passages (windows) per second over the same texts,
median (min–max) of --repeats runs, interleaved so that drift hits every variant alike:

- raw encode:        SentenceTransformer.encode(windows, batch_size, normalize_embeddings=True)
- embed, no cache:   embed_with_cache(embedder, None, windows)  (length check + encode + normalise)
- embed, cold cache: the same with an empty EmbeddingCache (lookups miss, every vector is written)
- embed, warm cache: the same with every window cached (no model call)
- chunk path:        assets.index.embed_chunks(chunks, embedder, None): windowing + embedding, per window
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.chunks import chunk_pages  # noqa: E402
from assets.html_text import extract_page  # noqa: E402
from assets.index import embed_chunks  # noqa: E402
from pipeline.settings import PROJECT_ROOT, EmbeddingModelSettings, Settings  # noqa: E402
from resources.embeddings import EmbeddingCache, build_embedder, embed_with_cache  # noqa: E402


def sample_site_chunks(settings: Settings) -> pd.DataFrame:
    site = PROJECT_ROOT / "data" / "sample_site"
    rows = []
    for page in sorted(site.rglob("*.html")):
        extracted = extract_page(
            page.read_text(encoding="utf-8"), settings.site.content_selectors, settings.site.drop_selectors
        )
        if extracted.text:
            rows.append({"url": str(page.relative_to(site)), "title": extracted.title, "text": extracted.text})
    pages = pd.DataFrame(rows).assign(status=200)
    return chunk_pages(pages, settings.rag.chunk_tokens, settings.rag.overlap_tokens)


def summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.1f} /s  ({min(rates):.1f}–{max(rates):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    settings = Settings()
    embedder = build_embedder(EmbeddingModelSettings(batch_size=args.batch_size))
    chunks = sample_site_chunks(settings)
    windows = [w for text in chunks["text"] for w in embedder.windows(text)]
    pieces = embedder.count_tokens(windows)
    print(
        f"{embedder.identity}, window {embedder.window_tokens} pieces (model reads {embedder.max_tokens}), "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"texts: {len(chunks)} chunks of the sample site -> {len(windows)} windows, "
        f"{statistics.mean(pieces):.0f} word-pieces on average (max {max(pieces)})"
    )

    model = embedder.model
    warm_dir = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    embed_with_cache(embedder, EmbeddingCache(warm_dir), windows)  # also warms the model up

    def raw() -> None:
        model.encode(
            windows,
            batch_size=args.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
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
        embed_chunks(chunks, embedder, None)

    variants: dict[str, Callable[[], None]] = {
        "raw SentenceTransformer.encode": raw,
        "embed_with_cache, no cache": no_cache,
        "embed_with_cache, cold cache": cold_cache,
        "embed_with_cache, warm cache": warm_cache,
        "embed_chunks (windows + embed)": chunk_path,
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            rates[name].append(len(windows) / (time.perf_counter() - started))

    print(f"\npassages (windows) per second, median (min–max) of {args.repeats}:")
    for name, values in rates.items():
        print(f"  {name:32s} {summary(values)}")
    raw_median = statistics.median(rates["raw SentenceTransformer.encode"])
    print("\nratios to raw encode (target ≥ 0.9 for the cold paths):")
    for name in list(variants)[1:]:
        print(f"  {name:32s} {statistics.median(rates[name]) / raw_median:6.2f}x")


if __name__ == "__main__":
    main()
