"""The Makefile's promises: `make run` is light (the project and its models: no apt, no browser, no databases, no
test or scale extras, no root), `make test` installs what the tests need and says what to do when apt cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mebot.resources.settings import PROJECT_ROOT

HEAVY = ("apt-get", "chromium", "postgres", "redis", "[dev", "scale]", "sudo")


def _as_nobody() -> list[str]:
    """A prefix that runs a command as an unprivileged user (we are root), or nothing (we are not)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing, so no non-root user can be tried")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def fresh_clone() -> Iterator[Path]:
    """A git clone of this repository (no .venv, no wheels) with this working tree's Makefile, readable by all (in
    the system's temp dir: pytest's own is private to its user)."""
    with tempfile.TemporaryDirectory(prefix="mebot-clone-") as scratch:
        clone = Path(scratch) / "clone"
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(PROJECT_ROOT), str(clone)], check=True)
        shutil.copy2(PROJECT_ROOT / "Makefile", clone / "Makefile")
        for path in [Path(scratch), *Path(scratch).rglob("*")]:
            path.chmod(path.stat().st_mode | 0o755)
        yield clone


def _make(clone: Path, *args: str, user: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(
        [*(user or []), "make", "--no-print-directory", "-C", str(clone), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_make_run_on_a_fresh_clone_installs_no_system_packages_browser_databases_or_extras(fresh_clone: Path):
    dry = _make(fresh_clone, "-n", "run", user=_as_nobody())
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plan = dry.stdout.lower()
    assert "pip install" in plan and "-e ." in plan and "mebot run" in plan, plan
    assert [word for word in HEAVY if word in plan] == [], plan
    assert not (fresh_clone / ".venv").exists(), "make -n must not create anything"


def test_make_test_installs_the_test_extras_and_the_debian_packages(fresh_clone: Path):
    dry = _make(fresh_clone, "-n", "test")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "-e '.[dev,scale]'" in dry.stdout
    assert "apt-get install" in dry.stdout and "pytest" in dry.stdout


def test_make_setup_scale_installs_the_scale_extra_only(fresh_clone: Path):
    dry = _make(fresh_clone, "-n", "setup-scale")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "-e '.[scale]'" in dry.stdout and "apt-get" not in dry.stdout


def test_make_test_without_root_names_the_missing_packages_and_the_command_to_install_them(fresh_clone: Path):
    user = _as_nobody()
    if not user and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        pytest.skip("password-less sudo is available, so apt would run")
    missing = ["CHROMIUM=no-such-chromium", "REDIS_SERVER=no-such-redis", "INITDB_GLOB=/no/such/initdb"]
    result = _make(fresh_clone, "test-system-packages", *missing, user=user)
    assert result.returncode != 0
    assert "not installed: chromium postgresql redis-server" in result.stderr
    assert "sudo apt-get install -y chromium postgresql redis-server" in result.stderr
    assert "make run needs none of them" in result.stderr


def _installed(clone: Path) -> None:
    """The files an install leaves, oldest first: the wheel's stamp, then the venv's stamps."""
    wheelhouse = _make(clone, "-s", "--eval", "print-%: ; @echo $($*)", "print-WHEELHOUSE").stdout.strip()
    assert wheelhouse.startswith(".wheels/llama-cpp-python-"), wheelhouse
    (clone / wheelhouse).mkdir(parents=True)
    (clone / wheelhouse / ".built").touch()
    (clone / ".venv").mkdir()
    now = time.time()
    for offset, path in enumerate([clone / "pyproject.toml", clone / wheelhouse / ".built"]):
        os.utime(path, (now - 100 + offset, now - 100 + offset))
    (clone / ".venv" / ".installed-stamp").touch()
    (clone / ".venv" / ".llama-cpp-python-portable-avx2-fma-f16c").touch()


def test_make_setup_has_nothing_to_do_after_an_install_until_pyproject_or_the_llama_build_changes(fresh_clone: Path):
    _installed(fresh_clone)
    assert _make(fresh_clone, "-q", "setup").returncode == 0
    assert _make(fresh_clone, "-q", "setup", "MEBOT_LLAMA_NATIVE=1").returncode == 1  # another build
    os.utime(fresh_clone / "pyproject.toml")
    assert _make(fresh_clone, "-q", "setup").returncode == 1
