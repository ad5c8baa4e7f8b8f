"""`review_queue`: the visitors' questions most worth the owner's time.

A question is worth a look when the bot declined it, a visitor gave its answer a thumbs-down, the answer was not
grounded in its sources, or the evidence retrieved was weak. Questions that mean the same ("What's your favourite
film?", "Which film do you like best?") are one item: each question, the most asked wording first, joins the first
item whose question embeds within NEAR_DUPLICATE_SIMILARITY (cosine) of it and names the same numbers. Items are
ranked by how often they were asked (every wording, flagged or not), then by thumbs-down. An item's id is a hash of
its wordings' normalised text; `mebot review` (pipeline/review.py) turns an item into a golden question or
dismisses it, and its decision (data/visitors/review.json) hides every item holding one of its wordings from then
on.
"""

import hashlib
import json
import re
from collections.abc import Callable, Iterable

import dagster as dg
import numpy as np
import pandas as pd

from mebot.assets.evaluation.golden import normalise_question
from mebot.assets.evaluation.leaderboard import partition_frames
from mebot.assets.outputs import content_output
from mebot.assets.owner.visitor import VISITOR_PARTITIONS
from mebot.resources.embeddings import EmbedderResource
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import SettingsResource, reads_settings

# Between the paraphrases and the different questions of bench/bench_near_duplicates.py (MiniLM).
NEAR_DUPLICATE_SIMILARITY = 0.8
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
QUEUE_COLUMNS = [
    "id", "question", "asked", "declined", "thumbs_down", "ungrounded", "weak_evidence", "reasons", "wordings_json",
    "models_json", "last_asked", "answer", "answer_ids_json", "comments_json",
]  # fmt: skip
REASONS = ("declined", "thumbs_down", "ungrounded", "weak_evidence")


def flag_columns(log: pd.DataFrame) -> pd.DataFrame:
    """The log with one 0/1 column per REASONS and `flagged` (any of them)."""
    flags = pd.DataFrame(
        {
            "declined": log["declined"].fillna(0).astype(int),
            "thumbs_down": (log["rating"] == "down").astype(int),
            "ungrounded": (log["grounded"] == 0).astype(int),
            "weak_evidence": log["weak_evidence"].fillna(0).astype(int),
        },
        index=log.index,
    )
    return log.assign(**flags, flagged=flags.to_numpy().any(axis=1))


def numbers_in(text: str) -> frozenset[str]:
    return frozenset(_NUMBER.findall(text))


def group_near_duplicates(questions: list[str], vectors: np.ndarray, threshold: float) -> list[int]:
    """For each question (most asked first), the index of the group it joins: the first group whose first
    question's vector has cosine similarity ≥ threshold with it and that names the same numbers (embeddings
    hardly tell "in 2022" from "in 2024"), else a new group."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    numbers = [numbers_in(q) for q in questions]
    heads: list[int] = []
    groups: list[int] = []
    for row in range(len(questions)):
        similar = [
            g
            for g, head in enumerate(heads)
            if numbers[head] == numbers[row] and float(unit[head] @ unit[row]) >= threshold
        ]
        if similar:
            groups.append(similar[0])
        else:
            heads.append(row)
            groups.append(len(heads) - 1)
    return groups


def item_id(wordings: Iterable[str]) -> str:
    return hashlib.sha256("\x1f".join(sorted(wordings)).encode()).hexdigest()[:10]


def build_queue(log: pd.DataFrame, embed: Callable[[list[str]], np.ndarray], decided: set[str]) -> pd.DataFrame:
    """QUEUE_COLUMNS, best first, from visitor log rows (resources/visitor_log.LOG_COLUMNS). `decided`: the
    normalised wordings already accepted or dismissed; an item holding one of them is left out."""
    if log.empty:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    log = flag_columns(log.assign(key=log["question"].map(normalise_question)))
    counts = log.groupby("key").size().sort_values(ascending=False, kind="stable")
    keys = counts.index.tolist()
    first_wording = log.drop_duplicates("key").set_index("key")["question"]
    groups = group_near_duplicates(keys, embed([first_wording[k] for k in keys]), NEAR_DUPLICATE_SIMILARITY)
    log["group"] = log["key"].map(dict(zip(keys, groups, strict=True)))
    items = [_item(rows) for _, rows in log.groupby("group", sort=False)]
    items = [i for i in items if i is not None and not decided & set(json.loads(i["wordings_json"]))]
    frame = pd.DataFrame(items, columns=QUEUE_COLUMNS)
    return frame.sort_values(["asked", "thumbs_down", "last_asked"], ascending=False, kind="stable").reset_index(
        drop=True
    )


def _item(rows: pd.DataFrame) -> dict | None:
    flagged = rows[rows["flagged"]]
    if flagged.empty:
        return None
    wordings = rows.groupby("key").size().sort_values(ascending=False, kind="stable").index.tolist()
    question = rows.loc[rows["key"] == wordings[0], "question"].iloc[-1]
    latest = flagged.sort_values("asked_at").iloc[-1]
    counts = {reason: int(flagged[reason].sum()) for reason in REASONS}
    comments = [c for c in flagged["comment"].dropna().tolist() if c]
    return {
        "id": item_id(wordings),
        "question": question,
        "asked": len(rows),
        **counts,
        "reasons": ", ".join(reason for reason in REASONS if counts[reason]),
        "wordings_json": json.dumps(wordings),
        "models_json": json.dumps(sorted(set(flagged["model"]))),
        "last_asked": str(rows["asked_at"].max()),
        "answer": str(latest["answer"]),
        "answer_ids_json": json.dumps(flagged["id"].tolist()),
        "comments_json": json.dumps(comments),
    }


def read_decisions(path) -> dict:
    """data/visitors/review.json: {"decisions": [{"item", "decision", "wordings", "golden_id", "at"}, ...]}."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"decisions": []}


def decided_wordings(decisions: dict) -> set[str]:
    return {w for d in decisions.get("decisions", []) for w in d.get("wordings", [])}


@dg.asset(
    name="review_queue",
    group_name="visitors",
    kinds={"pandas", "parquet"},
    code_version="2",
    ins={
        "visitor_questions": dg.AssetIn(
            partition_mapping=dg.AllPartitionMapping(),
            metadata={"allow_missing_partitions": True},
            dagster_type=dg.Any,
        )
    },
    metadata=reads_settings("models.embedding"),
)
def review_queue(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    embedder: EmbedderResource,
    visitor_questions: dict[str, pd.DataFrame] | pd.DataFrame | None,
) -> dg.Output[pd.DataFrame]:
    """The visitors' questions worth a look (declined, thumbs-down, ungrounded, weak evidence), near-duplicates
    merged, most asked first; what `mebot review` lists. Decisions already taken (data/visitors/review.json) are
    left out when `mebot review` lists it."""
    config = settings.for_asset(context)
    frames = [f for f in partition_frames(visitor_questions) if not f.empty]
    log = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    model = embedder.embedder(config)
    queue = build_queue(log, model.embed, set()) if len(log) else pd.DataFrame(columns=QUEUE_COLUMNS)
    metadata = {
        "items": dg.MetadataValue.int(len(queue)),
        "questions_logged": dg.MetadataValue.int(len(log)),
        **{f"items_{r}": dg.MetadataValue.int(int((queue[r] > 0).sum())) for r in REASONS},
        "queue": dg.MetadataValue.md(
            markdown_preview(queue[["id", "question", "asked", "reasons"]], rows=20) if len(queue) else "empty"
        ),
    }
    return content_output(queue, metadata, version_of=["id", "asked", *REASONS])


__all__ = ["QUEUE_COLUMNS", "VISITOR_PARTITIONS", "build_queue", "group_near_duplicates", "review_queue"]
