"""Releases: what `mebot serve` answers with, each a self-contained folder under data/releases/.

Layout of `releases_dir`:

    CURRENT                     the id of the release the server answers with (replaced atomically, fsynced)
    <id>/release.json           the record: created_at, index version, chunks, models and their golden figures,
                                the gate's verdict (golden_no_regression) and whether it was ever promoted
    <id>/index/CURRENT, <id>/index/<version>/   a copy of the FAISS index version it was measured with
    <id>/rag_chunks.parquet     the chunks that index points at

A release is written complete in a hidden partial folder and renamed into place (`files.atomic_output`), its
files fsynced first, so CURRENT never names a release whose files could be lost. A copy, not a link: the index
folder keeps only its two newest versions, and a rollback must still find the old one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mebot.resources.clock import utc_now
from mebot.resources.files import PARTIAL_SUFFIX, atomic_output, write_atomically

CURRENT_FILE = "CURRENT"
RECORD_FILE = "release.json"
INDEX_DIR = "index"
CHUNKS_FILE = "rag_chunks.parquet"
KEEP_RELEASES = 10
_ID = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}$")


class ReleaseError(ValueError):
    """A release that cannot be used or switched to; the message names it and what to do."""


@dataclass(frozen=True)
class Release:
    id: str
    path: Path
    record: dict[str, Any]

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    @property
    def chunks_file(self) -> Path:
        return self.path / CHUNKS_FILE

    @property
    def gate_passed(self) -> bool:
        return bool(self.record.get("gate", {}).get("passed"))

    @property
    def golden(self) -> dict[str, dict[str, float]]:
        """model -> {metric: value} measured for this release (golden_summary's columns)."""
        return self.record.get("golden", {})


def new_release_id(now: datetime | None = None) -> str:
    """`20261208T003000.123456Z-1a2b3c`: sorts by creation time; the suffix keeps two made at once apart."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:6]}"


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        _fsync(path)
    _fsync(folder)


def read_current_id(releases_dir: Path) -> str | None:
    try:
        return (Path(releases_dir) / CURRENT_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def load_release(releases_dir: Path, release_id: str) -> Release:
    """The release `release_id`; ReleaseError naming the known ones when there is no such release."""
    folder = Path(releases_dir) / release_id
    if not _ID.match(release_id) or not (folder / RECORD_FILE).is_file():
        known = ", ".join(r.id for r in list_releases(releases_dir)) or "none yet (run `mebot run`)"
        raise ReleaseError(f"no release {release_id!r}; the releases are: {known}")
    return Release(release_id, folder, json.loads((folder / RECORD_FILE).read_text(encoding="utf-8")))


def current_release(releases_dir: Path) -> Release | None:
    """The release CURRENT names; None before the first release."""
    release_id = read_current_id(releases_dir)
    return load_release(releases_dir, release_id) if release_id else None


def list_releases(releases_dir: Path) -> list[Release]:
    """Every release, oldest first (partial folders of an interrupted write are not releases)."""
    root = Path(releases_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and _ID.match(folder.name) and (folder / RECORD_FILE).is_file():
            found.append(Release(folder.name, folder, json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))))
    return found


def stage_release(releases_dir: Path, index_version_dir: Path, chunks: pd.DataFrame, record: dict[str, Any]) -> Release:
    """Write a new release (not yet current): a copy of the index version folder, the chunks and `record`."""
    releases_dir = Path(releases_dir)
    release_id = new_release_id()
    index_version_dir = Path(index_version_dir)
    full_record = {**record, "id": release_id, "index_version": index_version_dir.name, "promoted_at": None}
    target = releases_dir / release_id
    with atomic_output(target) as partial:
        partial.mkdir()
        shutil.copytree(index_version_dir, partial / INDEX_DIR / index_version_dir.name)
        (partial / INDEX_DIR / CURRENT_FILE).write_text(index_version_dir.name + "\n", encoding="utf-8")
        chunks.to_parquet(partial / CHUNKS_FILE, index=False)
        (partial / RECORD_FILE).write_text(json.dumps(full_record, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_tree(partial)
    _fsync(releases_dir)
    return Release(release_id, target, full_record)


def promote(releases_dir: Path, release_id: str) -> Release:
    """Make `release_id` the one served: CURRENT replaced atomically and fsynced (file and folder)."""
    releases_dir = Path(releases_dir)
    release = load_release(releases_dir, release_id)
    if release.record.get("promoted_at") is None:
        release.record["promoted_at"] = utc_now()
        write_atomically(release.path / RECORD_FILE, json.dumps(release.record, indent=2, sort_keys=True), fsync=True)
    write_atomically(releases_dir / CURRENT_FILE, release_id + "\n", fsync=True)
    _fsync(releases_dir)
    return release


def rollback(releases_dir: Path, release_id: str) -> Release:
    """Serve an earlier release again. Only one that passed its gate: a refused release was never good."""
    release = load_release(releases_dir, release_id)
    if not release.gate_passed:
        raise ReleaseError(
            f"release {release_id} failed golden_no_regression and was never served; pick one that passed "
            "(`mebot release list`)"
        )
    return promote(releases_dir, release_id)


def prune(releases_dir: Path, keep: int = KEEP_RELEASES) -> list[str]:
    """Delete all but the `keep` newest releases (never CURRENT) and partial folders left by a crash."""
    releases_dir = Path(releases_dir)
    current = read_current_id(releases_dir)
    removed = []
    for release in list_releases(releases_dir)[:-keep] if keep else list_releases(releases_dir):
        if release.id != current:
            shutil.rmtree(release.path, ignore_errors=True)
            removed.append(release.id)
    for partial in releases_dir.glob(f".*{PARTIAL_SUFFIX}") if releases_dir.is_dir() else []:
        shutil.rmtree(partial, ignore_errors=True)
    return removed


class ReleaseStore(dg.ConfigurableResource):
    """Where releases live (`releases_dir`, data/releases/)."""

    releases_dir: str

    def current(self) -> Release | None:
        return current_release(Path(self.releases_dir))

    def stage(self, index_version_dir: Path, chunks: pd.DataFrame, record: dict[str, Any]) -> Release:
        return stage_release(Path(self.releases_dir), index_version_dir, chunks, record)

    def promote(self, release_id: str) -> Release:
        return promote(Path(self.releases_dir), release_id)

    def prune(self, keep: int = KEEP_RELEASES) -> list[str]:
        return prune(Path(self.releases_dir), keep)


__all__ = [
    "Release",
    "ReleaseError",
    "ReleaseStore",
    "current_release",
    "list_releases",
    "load_release",
    "promote",
    "prune",
    "read_current_id",
    "rollback",
    "stage_release",
]
