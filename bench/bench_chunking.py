"""Chunking speed: cl100k_base tokens/s of the RAG chunker (assets/ingest/chunks.py chunk_pages) on the sample
site.

    .venv/bin/python bench/bench_chunking.py [--reps 5] [--quick] [--json OUT]

Text: the embedded sample site's content pages (data/sample_site), extracted as the crawl does
(assets/ingest/html_text.py; bench/_corpus.py), with the default settings (900-token chunks, 100 overlap).
tokens/s = the pages' cl100k_base tokens / seconds of `chunk_pages` (recursive split, token counting, the
over-limit re-split, ids).
The qa chunker (250-token passages) is measured the same way for comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, finish, interleaved, result, standalone_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

from _corpus import sample_site_pages  # noqa: E402

from mebot.assets.ingest.chunks import chunk_pages  # noqa: E402
from mebot.resources.settings import Settings  # noqa: E402
from mebot.resources.tokens import count_tokens  # noqa: E402

SECTION = "2. Chunking"


def run(quick: bool = False, reps: int = 5) -> list[Result]:
    reps = 3 if quick else reps
    settings = Settings()
    pages = sample_site_pages(settings)
    tokens = sum(count_tokens(text) for text in pages["text"])
    rag, qa = settings.rag, settings.qa
    chunk_pages(pages, rag.chunk_tokens, rag.overlap_tokens)  # warm-up: tiktoken's tables, the splitter imports
    seconds = interleaved(
        {
            "rag": lambda: chunk_pages(pages, rag.chunk_tokens, rag.overlap_tokens),
            "qa": lambda: chunk_pages(pages, qa.chunk_tokens, qa.overlap_tokens),
        },
        reps,
    )
    chunks = chunk_pages(pages, rag.chunk_tokens, rag.overlap_tokens)
    note = f"{len(pages)} sample-site pages, {tokens:,} tokens → {len(chunks)} chunks"
    return [
        result(
            SECTION,
            f"rag chunker ({rag.chunk_tokens}/{rag.overlap_tokens} tokens)",
            [tokens / s for s in seconds["rag"]],
            "tokens/s",
            note=note,
        ),
        result(
            SECTION,
            f"same chunker at the qa size ({qa.chunk_tokens}/{qa.overlap_tokens} tokens)",
            [tokens / s for s in seconds["qa"]],
            "tokens/s",
        ),
    ]


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    return finish(run(args.quick, args.reps), args.json)


if __name__ == "__main__":
    sys.exit(main())
