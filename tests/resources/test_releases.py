"""Release records under data/releases/: staged complete or not at all, CURRENT switched atomically, rollback only
to a release that passed its gate, pruning never removes the served one."""

import json

import numpy as np
import pandas as pd
import pytest

from mebot.resources import releases
from mebot.resources.releases import (
    ReleaseError,
    current_release,
    list_releases,
    promote,
    prune,
    read_current_id,
    rollback,
    stage_release,
)
from mebot.resources.vector_index import load_index, write_index

CHUNKS = pd.DataFrame([{"chunk_id": "a", "text": "My favourite film is Apollo 13."}])


@pytest.fixture
def index_version(tmp_path):
    summary = write_index(tmp_path / "index", np.eye(1, 4, dtype=np.float32), ["a"], "test:4", 10_000, 8)
    return tmp_path / "index" / summary["version"]


def stage(root, index_version, passed=True):
    return stage_release(root, index_version, CHUNKS, {"gate": {"passed": passed}, "golden": {}})


def test_a_staged_release_holds_its_own_index_and_chunks_and_is_not_served_yet(tmp_path, index_version):
    root = tmp_path / "releases"
    release = stage(root, index_version)
    assert read_current_id(root) is None
    assert load_index(release.index_dir, "test:4").chunk_ids.tolist() == ["a"]
    assert pd.read_parquet(release.chunks_file).equals(CHUNKS)
    assert json.loads((release.path / "release.json").read_text())["index_version"] == index_version.name
    promote(root, release.id)
    assert current_release(root).id == release.id and current_release(root).record["promoted_at"]


def test_a_failed_copy_leaves_no_release_behind(tmp_path, index_version, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(releases.shutil, "copytree", broken)
    with pytest.raises(OSError, match="disk full"):
        stage(tmp_path / "releases", index_version)
    assert list_releases(tmp_path / "releases") == []
    assert list((tmp_path / "releases").iterdir()) == []  # no partial folder either


def test_rollback_serves_an_earlier_release_and_refuses_a_refused_one(tmp_path, index_version):
    root = tmp_path / "releases"
    first, second, refused = stage(root, index_version), stage(root, index_version), stage(root, index_version, False)
    promote(root, first.id)
    promote(root, second.id)
    assert rollback(root, first.id).id == first.id and read_current_id(root) == first.id
    with pytest.raises(ReleaseError, match=f"{refused.id} failed golden_no_regression"):
        rollback(root, refused.id)
    with pytest.raises(ReleaseError, match=f"no release 'nope'; the releases are: {first.id}"):
        rollback(root, "nope")
    assert read_current_id(root) == first.id


def test_prune_keeps_the_newest_and_the_served_one(tmp_path, index_version):
    root = tmp_path / "releases"
    made = [stage(root, index_version) for _ in range(4)]
    promote(root, made[0].id)
    removed = prune(root, keep=2)
    assert removed == [made[1].id]
    assert [r.id for r in list_releases(root)] == [made[0].id, made[2].id, made[3].id]
