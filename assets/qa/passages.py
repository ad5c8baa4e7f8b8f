"""Passages worth a question (`qa_chunks`): the answers the questions of `synthetic_qa` are written for.

Page text in `qa.chunk_tokens`-token chunks (the splitter of `rag_chunks`), minus boilerplate and passages under
`qa.min_tokens`; the passage is the chunk or its longest paragraph (`qa.passage`), and `min_tokens` applies to it."""

import re
from collections import Counter

import dagster as dg
import pandas as pd

from mebot.assets.ingest.chunks import chunk_row, split_text
from mebot.assets.outputs import content_output
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import QaSettings, SettingsResource, reads_settings
from mebot.resources.tokens import count_tokens

QA_CHUNK_COLUMNS = ["chunk_id", "url", "title", "chunk_index", "passage", "n_tokens"]
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class NoPassagesError(ValueError):
    """The relevance filter left no passage; the message names the settings to loosen."""


def longest_paragraph(text: str) -> str:
    """The paragraph (blank-line separated) with the most cl100k_base tokens; the first of equals."""
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    if not paragraphs:
        return ""
    return max(paragraphs, key=count_tokens)  # max keeps the first of equal ones


def drop_reason(passage: str, chunk_text: str, min_tokens: int, patterns: list[re.Pattern]) -> str | None:
    """Why a chunk gets no question: "boilerplate" (a drop pattern matches the chunk), "too_short" (the passage
    has fewer than min_tokens tokens), or None when it is kept."""
    if any(p.search(chunk_text) for p in patterns):
        return "boilerplate"
    if not passage.strip() or count_tokens(passage) < min_tokens:
        return "too_short"
    return None


def build_qa_chunks(pages: pd.DataFrame, qa: QaSettings) -> tuple[pd.DataFrame, Counter]:
    """Kept passages with provenance, and the number of chunks dropped per reason."""
    patterns = [re.compile(p) for p in qa.drop_patterns]
    dropped: Counter = Counter()
    rows = []
    for page in pages.itertuples(index=False):
        if page.status >= 400 or not str(page.text or "").strip():
            continue
        for position, text in enumerate(split_text(page.text, qa.chunk_tokens, qa.overlap_tokens)):
            passage = longest_paragraph(text) if qa.passage == "longest_paragraph" else text
            reason = drop_reason(passage, text, qa.min_tokens, patterns)
            if reason:
                dropped[reason] += 1
                continue
            rows.append(chunk_row(page, position, text, passage=passage, n_tokens=count_tokens(passage)))
    frame = pd.DataFrame(rows, columns=QA_CHUNK_COLUMNS).astype({"chunk_index": "int64", "n_tokens": "int64"})
    return frame, dropped


def explain_no_passages(pages: pd.DataFrame, dropped: Counter, qa: QaSettings) -> str:
    usable = pages[(pages["status"] < 400) & (pages["text"].fillna("").str.strip() != "")]
    if usable.empty:
        return (
            f"no passages for questions: raw_pages has no page with text ({len(pages)} rows, none with status < 400 "
            "and text); check the crawl (site.start_urls, site.content_selectors)"
        )
    hint = "lower qa.min_tokens or remove patterns from qa.drop_patterns"
    if qa.passage != "chunk":
        hint = "lower qa.min_tokens, remove patterns from qa.drop_patterns, or set qa.passage: chunk"
    return (
        f"no passages left after the relevance filter: of {sum(dropped.values())} chunks from {len(usable)} pages, "
        f"{dropped['too_short']} have fewer than qa.min_tokens = {qa.min_tokens} tokens"
        + (" in their longest paragraph" if qa.passage == "longest_paragraph" else "")
        + f" and {dropped['boilerplate']} match qa.drop_patterns. Loosen the filter: {hint}"
    )


@dg.asset(
    group_name="qa",
    kinds={"langchain", "parquet"},
    code_version="1",
    metadata=reads_settings("qa.chunk_tokens", "qa.overlap_tokens", "qa.min_tokens", "qa.drop_patterns", "qa.passage"),
)
def qa_chunks(
    context: dg.AssetExecutionContext, settings: SettingsResource, raw_pages: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Passages worth a question: page text in chunks of at most `qa.chunk_tokens` tokens, without boilerplate
    (`qa.drop_patterns`) or passages under `qa.min_tokens` tokens. The passage is the chunk, or its longest
    paragraph with `qa.passage: longest_paragraph`; it is the answer of the questions written for it."""
    qa = settings.for_asset(context).qa
    frame, dropped = build_qa_chunks(raw_pages, qa)
    if frame.empty:
        raise NoPassagesError(explain_no_passages(raw_pages, dropped, qa))
    context.log.info(f"{len(frame)} passages from {frame['url'].nunique()} pages; dropped {dict(dropped)}")
    return content_output(
        frame,
        {
            "kept": dg.MetadataValue.int(len(frame)),
            "dropped": dg.MetadataValue.json(
                {"boilerplate": dropped["boilerplate"], "too_short": dropped["too_short"]}
            ),
            "pages": dg.MetadataValue.int(int(frame["url"].nunique())),
            "tokens_mean": dg.MetadataValue.float(round(float(frame["n_tokens"].mean()), 1)),
            "tokens_max": dg.MetadataValue.int(int(frame["n_tokens"].max())),
            "passages_preview": dg.MetadataValue.md(markdown_preview(frame[["url", "n_tokens", "passage"]], rows=8)),
        },
        version_of=["chunk_id", "passage"],
    )
