"""`retrieval_metrics`: for every held-out question, where its known source (url + answer passage) ranks among the
`rag.top_k` retrieved chunks: hit@1, hit@k and MRR for the chunk and the page (the leaderboard's rag row).
"""

import json
import math
import re
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.evaluation.answers import eval_questions
from mebot.assets.index.rag import QuestionError, RagBot
from mebot.assets.outputs import content_output
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.settings import SettingsResource, reads_settings
from mebot.resources.vector_index import VectorIndexResource

RETRIEVAL_COLUMNS = [
    "retrieval_k",
    "retrieval_chunk_hit_at_1",
    "retrieval_chunk_hit_at_k",
    "retrieval_chunk_mrr",
    "retrieval_page_hit_at_1",
    "retrieval_page_hit_at_k",
    "retrieval_page_mrr",
]
RETRIEVAL_METRIC_COLUMNS = ["qa_id", "source_url", "k", "chunk_rank", "page_rank", "retrieved_json", "error"]
RETRIEVAL_MIN_OVERLAP = 0.5
# Word 3-grams, not single words: a 900-token chunk of the same page shares most of a passage's common words
# ("the", "I", "my") without containing the passage; shared 3-grams only come from shared text.
RETRIEVAL_NGRAM = 3
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


@dataclass(frozen=True)
class RetrievalHit:
    chunk_rank: int | None  # 1-based rank of the first retrieved chunk that contains the source, None if absent
    page_rank: int | None  # 1-based rank of the first retrieved chunk from the source page (url)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def passage_coverage(passage: str, chunk: str, *, ngram: int = RETRIEVAL_NGRAM) -> float:
    """The fraction of the passage's words that lie in a word n-gram the chunk also has (1.0: all of it)."""
    words = _words(passage)
    if not words:
        return 0.0
    n = min(ngram, len(words))
    chunk_words = _words(chunk)
    shared = {tuple(chunk_words[i : i + n]) for i in range(len(chunk_words) - n + 1)}
    covered = np.zeros(len(words), dtype=bool)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in shared:
            covered[i : i + n] = True
    return float(covered.mean())


def _squash(text: str) -> str:
    return " ".join(text.split())


def retrieval_hit(
    source_url: str,
    source_text: str,
    retrieved: list[tuple[str, str]],
    *,
    min_overlap: float = RETRIEVAL_MIN_OVERLAP,
) -> RetrievalHit:
    """Where the question's known source turned up in `retrieved` = [(url, chunk_text), …], best first.

    The source is a 250-token qa passage, RAG chunks are 900 tokens with other boundaries, so a chunk "contains"
    the source when it is from the same url and has the passage (whitespace-normalised substring) or covers at
    least `min_overlap` of its words (passage_coverage): a passage straddling two chunks is half in each."""
    chunk_rank = page_rank = None
    passage = _squash(source_text)
    for rank, (url, text) in enumerate(retrieved, start=1):
        if url != source_url:
            continue
        if page_rank is None:
            page_rank = rank
        if passage and (passage in _squash(text) or passage_coverage(passage, text) >= min_overlap):
            chunk_rank = rank
            break
    return RetrievalHit(chunk_rank=chunk_rank, page_rank=page_rank)


def retrieval_summary(hits: list[RetrievalHit], k: int) -> dict[str, float]:
    """hit@1, hit@k and mean reciprocal rank, for the source chunk and the source page; NaN rates when no hits."""
    if k < 1:
        raise ValueError(f"retrieval_summary needs k >= 1, got {k}")
    summary: dict[str, float] = {}
    for kind in ("chunk", "page"):
        ranks = np.array([getattr(h, f"{kind}_rank") or 0 for h in hits], dtype=float)
        found = ranks > 0
        if len(ranks) == 0:
            summary |= {f"{kind}_hit@1": math.nan, f"{kind}_hit@{k}": math.nan, f"{kind}_mrr": math.nan}
            continue
        summary[f"{kind}_hit@1"] = float((ranks == 1).mean())
        summary[f"{kind}_hit@{k}"] = float((found & (ranks <= k)).mean())
        summary[f"{kind}_mrr"] = float(np.where(found, 1.0 / np.where(found, ranks, 1.0), 0.0).mean())
    summary["n"] = float(len(hits))
    return summary


def retrieval_table(bot: RagBot, questions: pd.DataFrame, k: int) -> pd.DataFrame:
    """RETRIEVAL_METRIC_COLUMNS: per question, the rank of its source chunk and page among the top k."""
    rows = []
    for row in questions.itertuples(index=False):
        try:
            sources = bot.retrieve(row.question, k)
        except QuestionError as exc:
            rows.append([row.qa_id, row.url, k, None, None, "[]", str(exc)])
            continue
        hit = retrieval_hit(row.url, row.answer, [(s.url, s.text) for s in sources])
        retrieved = json.dumps([{"url": s.url, "chunk_id": s.chunk_id, "score": s.score} for s in sources])
        rows.append([row.qa_id, row.url, k, hit.chunk_rank, hit.page_rank, retrieved, None])
    frame = pd.DataFrame(rows, columns=RETRIEVAL_METRIC_COLUMNS)
    return frame.astype({"k": "int64", "chunk_rank": "Int64", "page_rank": "Int64"})


def retrieval_summary_of(frame: pd.DataFrame, k: int) -> dict[str, float]:
    """retrieval_summary over the questions that could be asked."""
    asked = frame[frame["error"].isna()]
    hits = [
        RetrievalHit(chunk_rank=None if pd.isna(c) else int(c), page_rank=None if pd.isna(p) else int(p))
        for c, p in zip(asked["chunk_rank"], asked["page_rank"], strict=True)
    ]
    return retrieval_summary(hits, k)


def retrieval_columns(summary: dict[str, float], k: int) -> dict[str, float]:
    """The RETRIEVAL_COLUMNS of the leaderboard's rag row from a retrieval summary."""
    return {
        "retrieval_k": float(k),
        "retrieval_chunk_hit_at_1": summary["chunk_hit@1"],
        "retrieval_chunk_hit_at_k": summary[f"chunk_hit@{k}"],
        "retrieval_chunk_mrr": summary["chunk_mrr"],
        "retrieval_page_hit_at_1": summary["page_hit@1"],
        "retrieval_page_hit_at_k": summary[f"page_hit@{k}"],
        "retrieval_page_mrr": summary["page_mrr"],
    }


@dg.asset(
    group_name="evaluation",
    kinds={"faiss", "parquet"},
    code_version="1",
    deps=["vector_index"],
    metadata=reads_settings("eval.splits", "rag.top_k", "rag.retrieval", "rag.max_question_chars", "models.embedding"),
)
def retrieval_metrics(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    index_store: VectorIndexResource,
    synthetic_qa: pd.DataFrame,
    rag_chunks: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """For every held-out question (all of `eval.splits`: retrieval is cheap), where its known source ranks among
    the `rag.top_k` retrieved chunks: the source chunk (same url, holding the answer passage) and the source
    page. Metadata: hit@1, hit@k and MRR for both."""
    config = settings.for_asset(context)
    k = config.rag.top_k
    questions = eval_questions(synthetic_qa, config.eval.splits, 0)
    embedding_model = embedder.embedder(config)
    index = index_store.load(expected_identity=embedding_model.identity)
    bot = RagBot(config, embedding_model, index, rag_chunks, chat=None)  # type: ignore[arg-type]  # retrieval only
    frame = retrieval_table(bot, questions, k)
    summary = retrieval_summary_of(frame, k)
    context.log.info(f"retrieval over {len(frame)} questions, k={k}: {summary}")
    return content_output(
        frame,
        {
            **{name.replace("@", "_at_"): dg.MetadataValue.float(float(v)) for name, v in summary.items()},
            "k": dg.MetadataValue.int(k),
            "questions": dg.MetadataValue.int(len(frame)),
            "unaskable": dg.MetadataValue.int(int(frame["error"].notna().sum())),
        },
        version_of=["qa_id", "chunk_rank", "page_rank"],
    )
