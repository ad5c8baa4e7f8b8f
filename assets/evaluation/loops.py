"""Answers that loop: a model that repeats itself until its token limit ("I'm glad you're excited about it."
twenty times). `has_loop` flags an answer in which some run of LOOP_NGRAM words occurs LOOP_REPEATS times
(occurrences may overlap: a 6-word sentence said 4 times holds one 8-word run 3 times); `loop_rate` is the
share of answers that do (model_answers' metadata, the leaderboard's `loop_rate` column).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LOOP_NGRAM = 8
LOOP_REPEATS = 3
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # words of any script, "you're" as one


def has_loop(text: str | None, n: int = LOOP_NGRAM, repeats: int = LOOP_REPEATS) -> bool:
    """True when some n consecutive words (case aside, punctuation ignored) occur `repeats` times in `text`."""
    if not text or not isinstance(text, str):
        return False
    words = [w.casefold() for w in _WORD.findall(text.replace("’", "'"))]
    counts: dict[tuple[str, ...], int] = {}
    for start in range(len(words) - n + 1):
        gram = tuple(words[start : start + n])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= repeats:
            return True
    return False


def loop_rate(answers: Iterable[str | None]) -> float | None:
    """The share of the given answers (None/empty ones left out) that loop; None when there is none."""
    texts = [a for a in answers if isinstance(a, str) and a.strip()]
    if not texts:
        return None
    return sum(has_loop(a) for a in texts) / len(texts)
