"""Stable hashes: ids and seeded orders that are the same on every machine and in every process (Python's own
`hash()` is salted per process)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any


def stable_hash(*parts: object, length: int = 16, sep: str = "\x00") -> str:
    """sha256 of the parts joined by `sep` (NUL), hex, cut to `length` (64 for the whole digest)."""
    return hashlib.sha256(sep.join(map(str, parts)).encode("utf-8")).hexdigest()[:length]


def json_hash(payload: Any, length: int = 16) -> str:
    """A hash of JSON-able data that does not depend on key order."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:length]


def seeded_int(*parts: object, bits: int = 32, sep: str = "\x00") -> int:
    """A reproducible integer from the parts (e.g. a per-question seed from a base seed and an attempt)."""
    return int(stable_hash(*parts, length=bits // 4, sep=sep), 16)


def seeded_order(ids: Iterable[str], *seed_parts: object) -> list[str]:
    """`ids` in a pseudo-random order fixed by the seed parts: the same sample everywhere, and a larger sample
    with the same seed contains the smaller one."""
    return sorted(ids, key=lambda item: stable_hash(*seed_parts, item, length=64))
