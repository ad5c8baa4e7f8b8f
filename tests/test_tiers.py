"""The two tiers (tests/tiers.py): the check tier leaves out tests marked `full` or using a heavy fixture, and a
test that loads a real model without the mark fails there with a message saying what to do, in the test process
and in any Python process it starts."""

import os
import subprocess
import sys
import textwrap

from mebot.resources.chat import bundled_gguf_path
from mebot.resources.settings import PROJECT_ROOT
from tests.model_guard.sitecustomize import CHECK_TIER, TIER_ENV
from tests.tiers import FULL_FIXTURES

GUARD_DIR = PROJECT_ROOT / "tests" / "model_guard"

SAMPLE_TESTS = f"""
import subprocess
import sys

import pytest


@pytest.fixture
def default_run():
    return "stands for the session's whole-graph run"


def test_unmarked_loads_the_gguf():
    import llama_cpp

    llama_cpp.Llama(model_path={str(bundled_gguf_path())!r}, vocab_only=True)


def test_unmarked_catches_the_refusal_and_would_pass():
    import llama_cpp

    try:
        llama_cpp.Llama(model_path={str(bundled_gguf_path())!r}, vocab_only=True)
    except Exception:
        pass


def test_unmarked_loads_it_in_a_subprocess():
    code = "import llama_cpp; llama_cpp.Llama(model_path={str(bundled_gguf_path())!r}, vocab_only=True)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-300:]


@pytest.mark.full
def test_marked_full():
    raise AssertionError("never runs in the check tier")


def test_uses_a_heavy_fixture(default_run):
    raise AssertionError("never runs in the check tier")


def test_light():
    assert True
"""


def test_the_check_tier_deselects_full_tests_and_fails_unmarked_model_loads(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE_TESTS))
    env = {k: v for k, v in os.environ.items() if k not in (TIER_ENV, "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(PROJECT_ROOT / "pyproject.toml")]
        + ["--rootdir", str(tmp_path), "-m", "not full", "-q", "-rfE", "-p", "no:cacheprovider"]
        + [str(tmp_path / "test_sample.py")],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert "3 failed, 1 passed, 2 deselected" in out, out[-3000:]
    failed = {line.split("::")[-1].split(" ")[0] for line in out.splitlines() if line.startswith("FAILED")}
    assert failed == {
        "test_unmarked_loads_the_gguf",
        "test_unmarked_catches_the_refusal_and_would_pass",
        "test_unmarked_loads_it_in_a_subprocess",
    }
    assert out.count("Mark it @pytest.mark.full") >= 3, out[-3000:]


def test_the_heavy_fixtures_include_the_whole_graph_run_and_the_servers():
    assert {"default_run", "llama_server", "ui", "browser", "minilm"} <= FULL_FIXTURES


def test_the_guard_refuses_the_gguf_in_a_python_started_with_the_check_tier_environment():
    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(bundled_gguf_path())!r}, vocab_only=True)"
    env = {**os.environ, TIER_ENV: CHECK_TIER, "PYTHONPATH": str(GUARD_DIR)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "NeedsFullTier" in done.stderr and "@pytest.mark.full" in done.stderr
    env.pop(TIER_ENV)  # outside the check tier the same code loads the model
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
