"""Where review_queue's near-duplicate threshold sits: MiniLM's cosine similarity of visitor questions that mean
the same (paraphrases) and of questions that differ (often in one word or number), and which pairs the queue would
merge (similarity ≥ NEAR_DUPLICATE_SIMILARITY and the same numbers).

    .venv/bin/python bench/bench_near_duplicates.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from mebot.assets.owner.review_queue import NEAR_DUPLICATE_SIMILARITY, group_near_duplicates  # noqa: E402
from mebot.resources.embeddings import build_embedder  # noqa: E402
from mebot.resources.settings import DEFAULT_CONFIG_PATH, load_settings  # noqa: E402

PAIRS = {
    "paraphrase": [
        ("What's your favourite film?", "Which film do you like best?"),
        ("How far did you ride in 2022?", "How many km did you cycle in 2022?"),
        ("What is your sister's job?", "What does your sister do for a living?"),
        ("what is your favourite film", "What is your favorite movie?"),
        ("Where do you live?", "Where are you based?"),
    ],
    "different": [
        ("What's your favourite film?", "What's your favourite book?"),
        ("How far did you ride in 2022?", "How far did you ride in 2024?"),
        ("What is your sister's job?", "What is your brother's job?"),
        ("Where do you live?", "Where did you grow up?"),
        ("How much did the rim cost?", "How much did the dentist cost?"),
    ],
}


def main() -> None:
    embedder = build_embedder(load_settings(DEFAULT_CONFIG_PATH).models.embedding)
    print(f"{embedder.identity}; threshold {NEAR_DUPLICATE_SIMILARITY}")
    for kind, pairs in PAIRS.items():
        merged = 0
        for a, b in pairs:
            vectors = embedder.embed([a, b])
            similarity = float(vectors[0] @ vectors[1])  # unit vectors
            joined = group_near_duplicates([a, b], vectors, NEAR_DUPLICATE_SIMILARITY) == [0, 0]
            merged += joined
            print(f"  {kind:<10} {similarity:.3f} {'merged' if joined else 'apart ':<6}  {a} | {b}")
        print(f"{kind}: {merged} of {len(pairs)} pairs merged")


if __name__ == "__main__":
    main()
