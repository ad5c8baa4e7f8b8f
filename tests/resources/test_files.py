"""The one atomic write (`atomic_output`, `write_atomically`) and the file hash, as every writer in resources/
uses them: a crash leaves the previous content and no temporary behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mebot.resources.files import (
    PARTIAL_SUFFIX,
    atomic_output,
    file_sha256,
    write_atomically,
    write_json_atomically,
)


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob(f".*{PARTIAL_SUFFIX}"))


def test_a_file_replaces_the_target_only_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "deeper" / "out.txt"  # missing parents are made
    write_atomically(target, "old")
    with pytest.raises(RuntimeError), atomic_output(target) as partial:
        partial.write_text("half of the new", encoding="utf-8")
        raise RuntimeError("killed mid-write")
    assert target.read_text(encoding="utf-8") == "old" and leftovers(target.parent) == []
    with atomic_output(target) as partial:
        assert partial.parent == target.parent and partial.name.startswith(".out.txt.")
        partial.write_bytes(b"new")
    assert target.read_bytes() == b"new" and leftovers(target.parent) == []


def test_a_folder_is_built_aside_and_renamed_in_or_removed(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with pytest.raises(OSError), atomic_output(final) as partial:
        partial.mkdir()
        (partial / "index.faiss").write_bytes(b"half an index")
        raise OSError("disk full")
    assert not final.exists() and leftovers(tmp_path) == []
    with atomic_output(final) as partial:
        partial.mkdir()
        (partial / "meta.json").write_text("{}", encoding="utf-8")
    assert (final / "meta.json").read_text(encoding="utf-8") == "{}" and leftovers(tmp_path) == []


@pytest.mark.parametrize("fsync", [False, True])
def test_write_atomically_writes_text_and_bytes_exactly(tmp_path: Path, fsync: bool) -> None:
    text = "line one\nüñí — ✓\n"
    assert write_atomically(tmp_path / "t.txt", text, fsync=fsync).read_bytes() == text.encode("utf-8")
    assert write_atomically(tmp_path / "b.bin", b"\x00\xff\n", fsync=fsync).read_bytes() == b"\x00\xff\n"
    assert write_atomically(tmp_path / "l.txt", "é", encoding="latin-1").read_bytes() == b"\xe9"


def test_write_json_atomically_is_the_records_former_format(tmp_path: Path) -> None:
    value = {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}
    path = write_json_atomically(tmp_path / "record.json", value)
    # What openai_finetune's own writer produced, so existing records and registries read back unchanged.
    assert path.read_text(encoding="utf-8") == json.dumps(value, indent=2, sort_keys=True)


def test_file_sha256_reads_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several blocks
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    assert file_sha256(path) == file_sha256(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()
