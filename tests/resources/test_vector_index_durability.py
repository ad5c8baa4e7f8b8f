"""The vector index's CURRENT switch is durable (issue 25, item 7): every file of the new version, its folder and
the index folder reach the disk (fsync) before CURRENT names the version, and CURRENT's rename is synced after."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mebot.resources import vector_index
from mebot.resources.vector_index import CURRENT_FILE, write_index


def test_the_files_current_names_are_fsynced_before_current_switches(tmp_path: Path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    index_dir = tmp_path / "index"
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype("float32")
    summary = write_index(index_dir, vectors, [f"c{i}" for i in range(20)], "test-model", 1000, 4)

    version = Path(summary["path"])
    switch = events.index(("replace", str(index_dir / CURRENT_FILE)))
    synced_before = {path for kind, path in events[:switch] if kind == "fsync"}
    files = {str(path) for path in version.iterdir()}
    assert files and files <= synced_before  # every file of the version
    assert {str(version), str(index_dir)} <= synced_before  # the version folder's entries and its rename
    assert ("fsync", str(index_dir)) in events[switch + 1 :]  # CURRENT's own rename
    assert (index_dir / CURRENT_FILE).read_text(encoding="utf-8").strip() == version.name
    assert vector_index.load_index(index_dir).path == version
