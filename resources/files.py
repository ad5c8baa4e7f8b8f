"""Writing files so that a crash never leaves half a file under the real name, and hashing them.

Every write of mebot's outputs goes through `atomic_output`: the content is written to a temporary file (or
folder) in the same folder, then renamed over the target (atomic on POSIX), so readers see the old version or
the new one. A temporary left behind by a killed process is hidden and ends in `.partial`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`: write a file there, or make a folder and fill it. When the block
    ends without error it replaces `path` (a folder only where `path` does not exist or is an empty folder);
    otherwise it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    try:
        yield partial
        os.replace(partial, target)
    finally:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def write_atomically(path: str | Path, data: bytes | str, encoding: str = "utf-8", *, fsync: bool = False) -> Path:
    """Write `data` (text in `encoding`, or bytes) to `path` through `atomic_output`. `fsync`: the bytes reach
    the disk before the rename, for a small file whose new name must never point at lost content."""
    text = isinstance(data, str)
    with atomic_output(path) as partial:
        with open(partial, "w" if text else "wb", encoding=encoding if text else None) as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    return Path(path)


def write_json_atomically(path: str | Path, value: object, *, indent: int = 2, sort_keys: bool = True) -> Path:
    """`value` as JSON (indented, keys sorted by default) through `write_atomically`."""
    return write_atomically(path, json.dumps(value, indent=indent, sort_keys=sort_keys))


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """A file's sha256, read in 1 MiB blocks (model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
