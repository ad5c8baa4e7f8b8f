from pathlib import Path

import pytest

from mebot.resources.cpu_share import (
    THREADS_FILE_ENV,
    automatic_threads,
    cpu_cores,
    default_threads,
    resolve_threads,
    scheduled_threads,
    write_threads_file,
)


def test_outside_mebot_run_automatic_is_all_cores_but_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_FILE_ENV, raising=False)
    assert scheduled_threads() is None
    assert automatic_threads() == default_threads() == max(1, cpu_cores() - 1)


@pytest.mark.parametrize(("configured", "share", "expected"), [(0, 3, 3), (0, 1, 1), (2, 5, 2), (7, None, 7)])
def test_a_configured_count_wins_over_the_schedulers_share(
    configured: int, share: int | None, expected: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "threads"
    if share is not None:
        write_threads_file(path, share)
    monkeypatch.setenv(THREADS_FILE_ENV, str(path))
    assert resolve_threads(configured) == expected


@pytest.mark.parametrize("content", ["", "two", None])
def test_an_unreadable_share_falls_back_to_the_default(
    content: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "threads"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv(THREADS_FILE_ENV, str(path))
    assert scheduled_threads() is None
    assert automatic_threads() == default_threads()


def test_the_share_is_replaced_whole_and_never_below_one(tmp_path: Path) -> None:
    path = tmp_path / "threads"
    write_threads_file(path, 4)
    write_threads_file(path, 0)
    assert path.read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["threads"]
