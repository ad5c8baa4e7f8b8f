"""Held-out splits of the synthetic questions (`qa.split`: `by_question`, `by_page`, `none`), deterministic given
`qa.seed`, and the sample of passages questions are written for (`qa.max_passages`); what each split holds out:
docs/fine-tuning.md."""

import random

import pandas as pd

from mebot.resources.hashing import stable_hash
from mebot.resources.settings import QaSettings

SYNTHETIC_QA_COLUMNS = ["qa_id", "question", "answer", "chunk_id", "url", "title", "split"]
SPLITS = ("train", "validation", "test")


def _unit(seed: int, *parts: str) -> float:
    """A uniform number in [0, 1) from the seed and the parts: the same inputs, the same number."""
    return int(stable_hash(seed, *parts, length=13), 16) / 16**13


def split_by_question(chunk_ids: list[str], counts: dict[str, int], qa: QaSettings) -> dict[tuple[str, int], str]:
    """(chunk_id, question index) → split. Per passage, in a seeded order: first → train, second → validation
    (for a seeded qa.validation_fraction of the passages that have a second question, at least one when the
    fraction is above 0 and two such passages exist) or test, the rest → train."""
    held_out_passages = sorted(
        (cid for cid in dict.fromkeys(chunk_ids) if counts.get(cid, 0) >= 2),
        key=lambda cid: (_unit(qa.seed, "validation", cid), cid),
    )
    n_validation = round(qa.validation_fraction * len(held_out_passages))
    if qa.validation_fraction > 0 and len(held_out_passages) >= 2:
        n_validation = min(max(n_validation, 1), len(held_out_passages) - 1)
    validation = set(held_out_passages[:n_validation])
    splits = {}
    for cid in chunk_ids:
        order = list(range(counts.get(cid, 0)))
        random.Random(f"{qa.seed}:{cid}").shuffle(order)
        held_out = "validation" if cid in validation else "test"
        for rank, index in enumerate(order):
            splits[(cid, index)] = held_out if rank == 1 else "train"
    return splits


def split_pages(urls: list[str], qa: QaSettings) -> dict[str, str]:
    """url → split for by_page: pages in a seeded hash order, cut by the train and validation fractions (test
    gets the rest). With at least two pages, train and (when its fraction is above 0) test get one each."""
    ordered = sorted(set(urls), key=lambda url: (_unit(qa.seed, "page", url), url))
    n = len(ordered)
    test_fraction = max(0.0, 1.0 - qa.train_fraction - qa.validation_fraction)
    n_train = min(n, max(1, round(qa.train_fraction * n)))
    n_validation = min(n - n_train, round(qa.validation_fraction * n))
    if test_fraction > 1e-9 and n >= 2 and n_train + n_validation >= n:
        if n_validation > 0:
            n_validation -= 1
        elif n_train > 1:
            n_train -= 1
    return {
        url: "train" if i < n_train else "validation" if i < n_train + n_validation else "test"
        for i, url in enumerate(ordered)
    }


def sample_passages(passages: pd.DataFrame, max_passages: int, seed: int) -> pd.DataFrame:
    """At most `max_passages` passages (0: all), spread over the pages: pages take turns (in a seeded order), each
    giving its next passage in a seeded order. Kept passages stay in their original order, so growing the
    sample only adds passages and every earlier question stays cached."""
    if max_passages <= 0 or len(passages) <= max_passages:
        return passages
    chunk_ids = list(passages["chunk_id"])
    by_page: dict[str, list[int]] = {}
    for position, url in enumerate(passages["url"]):
        by_page.setdefault(url, []).append(position)
    for positions in by_page.values():
        positions.sort(key=lambda i: _unit(seed, "passage", chunk_ids[i]))
    pages = sorted(by_page, key=lambda url: (_unit(seed, "page-turn", url), url))
    chosen: list[int] = []
    while len(chosen) < max_passages:
        for url in pages:
            if by_page[url] and len(chosen) < max_passages:
                chosen.append(by_page[url].pop(0))
    return passages.iloc[sorted(chosen)].reset_index(drop=True)


def qa_id(chunk: str, question: str, split: str) -> str:
    return stable_hash(chunk, question, split)


def assign_splits(passages: pd.DataFrame, questions: dict[str, list[str]], qa: QaSettings) -> pd.DataFrame:
    """The synthetic_qa table: one row per question (two per question in `none` mode) with its split."""
    chunk_ids = list(passages["chunk_id"])
    by_question = split_by_question(chunk_ids, {c: len(qs) for c, qs in questions.items()}, qa)
    by_page = split_pages(list(passages["url"]), qa)
    rows = []
    for passage in passages.itertuples(index=False):
        for index, question in enumerate(questions.get(passage.chunk_id, [])):
            if qa.split == "by_question":
                splits = [by_question[(passage.chunk_id, index)]]
            elif qa.split == "by_page":
                splits = [by_page[passage.url]]
            else:
                splits = ["train", "test"]
            for split in splits:
                rows.append(
                    {
                        "qa_id": qa_id(passage.chunk_id, question, split),
                        "question": question,
                        "answer": passage.passage,
                        "chunk_id": passage.chunk_id,
                        "url": passage.url,
                        "title": passage.title,
                        "split": split,
                    }
                )
    frame = pd.DataFrame(rows, columns=SYNTHETIC_QA_COLUMNS)
    if qa.split == "none":  # train rows first, then their test copies
        frame = frame.sort_values("split", key=lambda s: s.map(SPLITS.index), kind="stable").reset_index(drop=True)
    return frame
