"""Stage 2: split page text into token-bounded chunks for retrieval (`rag_chunks`)."""

from typing import Any

import dagster as dg
import pandas as pd
from langchain_text_splitters import RecursiveCharacterTextSplitter, TokenTextSplitter

from mebot.assets.outputs import content_output
from mebot.resources.hashing import stable_hash
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import SettingsResource, reads_settings
from mebot.resources.tokens import ENCODING_NAME, count_tokens, ensure_offline_tiktoken

RAG_CHUNK_COLUMNS = ["chunk_id", "url", "title", "chunk_index", "text", "n_tokens"]


def chunk_id(url: str, position: int, text: str) -> str:
    """Stable id: the same text at the same place of the same page always gets the same id."""
    return stable_hash(url, position, text)


def split_text(text: str, chunk_tokens: int, overlap_tokens: int) -> list[str]:
    """Recursive split on paragraphs, lines, then words, measured in cl100k_base tokens; never over the limit."""
    ensure_offline_tiktoken()
    chunks: list[str] = []
    for piece in _recursive_splitter(chunk_tokens, overlap_tokens).split_text(text):
        chunks.extend(_fit(piece, chunk_tokens, overlap_tokens))
    return [c.strip() for c in chunks if c.strip()]


def _recursive_splitter(chunk_tokens: int, overlap_tokens: int) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name=ENCODING_NAME, chunk_size=chunk_tokens, chunk_overlap=min(overlap_tokens, chunk_tokens - 1)
    )


def _fit(piece: str, chunk_tokens: int, overlap_tokens: int) -> list[str]:
    """The recursive splitter adds up piece lengths, and BPE counts are not additive, so a merged chunk can end
    a few tokens over. Such a chunk is split again, still at word boundaries, with the target lowered by the
    overshoot; only text with no boundaries at all is cut on token boundaries."""
    target = chunk_tokens
    for _ in range(4):
        overshoot = count_tokens(piece) - chunk_tokens
        if overshoot <= 0:
            return [piece]
        target = max(1, target - overshoot - 2)
        parts = _recursive_splitter(target, min(overlap_tokens, target // 2)).split_text(piece)
        if all(count_tokens(p) <= chunk_tokens for p in parts):
            return parts
    exact = TokenTextSplitter(encoding_name=ENCODING_NAME, chunk_size=chunk_tokens, chunk_overlap=0)
    return exact.split_text(piece)


def chunk_row(page: Any, position: int, chunk_text: str, /, **columns: object) -> dict:
    """A chunk's id and provenance (url, title, position on `page`, a raw_pages row), with `columns` added."""
    return {
        "chunk_id": chunk_id(page.url, position, chunk_text),
        "url": page.url,
        "title": page.title,
        "chunk_index": position,
        **columns,
    }


def chunk_pages(pages: pd.DataFrame, chunk_tokens: int, overlap_tokens: int) -> pd.DataFrame:
    rows = []
    for page in pages.itertuples(index=False):
        if page.status >= 400 or not page.text:
            continue
        for position, text in enumerate(split_text(page.text, chunk_tokens, overlap_tokens)):
            rows.append(chunk_row(page, position, text, text=text, n_tokens=count_tokens(text)))
    return pd.DataFrame(rows, columns=RAG_CHUNK_COLUMNS).astype({"chunk_index": "int64", "n_tokens": "int64"})


@dg.asset(
    group_name="ingest",
    kinds={"langchain", "parquet"},
    code_version="1",
    metadata=reads_settings("rag.chunk_tokens", "rag.overlap_tokens"),
)
def rag_chunks(
    context: dg.AssetExecutionContext, settings: SettingsResource, raw_pages: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Page text split into chunks of at most `rag.chunk_tokens` cl100k_base tokens (overlap
    `rag.overlap_tokens`) by LangChain's recursive splitter, which cuts at paragraph, then line, then word
    boundaries. These are what retrieval indexes and returns as references."""
    rag = settings.for_asset(context).rag
    chunks = chunk_pages(raw_pages, rag.chunk_tokens, rag.overlap_tokens)
    context.log.info(f"{len(chunks)} chunks from {chunks['url'].nunique()} pages")
    tokens = chunks["n_tokens"]
    return content_output(
        chunks,
        {
            "pages": dg.MetadataValue.int(int(chunks["url"].nunique())),
            "tokens_total": dg.MetadataValue.int(int(tokens.sum())),
            "tokens_mean": dg.MetadataValue.float(float(tokens.mean()) if len(tokens) else 0.0),
            "tokens_max": dg.MetadataValue.int(int(tokens.max()) if len(tokens) else 0),
            "chunks_preview": dg.MetadataValue.md(markdown_preview(chunks[["url", "n_tokens", "text"]], rows=8)),
        },
        version_of=["chunk_id"],
    )


@dg.asset_check(
    asset=rag_chunks, blocking=True, description="Every chunk has text and at most rag.chunk_tokens tokens."
)
def rag_chunks_within_token_limit(settings: SettingsResource, rag_chunks: pd.DataFrame) -> dg.AssetCheckResult:
    limit = settings.get().rag.chunk_tokens
    over = rag_chunks[rag_chunks["n_tokens"] > limit]
    empty = rag_chunks[rag_chunks["text"].str.strip() == ""]
    return dg.AssetCheckResult(
        passed=over.empty and empty.empty and not rag_chunks.empty,
        metadata={
            "chunks": len(rag_chunks),
            "over_limit": len(over),
            "empty": len(empty),
            "limit": limit,
            "max_tokens": int(rag_chunks["n_tokens"].max()) if len(rag_chunks) else 0,
        },
    )
