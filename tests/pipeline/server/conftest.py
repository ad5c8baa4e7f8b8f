"""A small real index, built once per test session by `mebot run` on the embedded sample site, and `mebot serve`
started on it as a real subprocess on a free loopback port (the full tier: both use the real models). Helpers in
helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_ARGS
from tests.pipeline.server.helpers import Built, RunningServer, start_server, stop_server, write_config


@pytest.fixture(scope="session")
def built(default_run) -> Built:
    """The sample-site build the end-to-end tests use, with this module's serving settings beside it (they are
    read at answer time, so the same data serves)."""
    result, data = default_run
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return Built(write_config(data.parent / "serve.yaml"), data, data.parent / "home")


@pytest.fixture(scope="session")
def server(built: Built, tmp_path_factory) -> Iterator[RunningServer]:
    """`mebot serve` on the built index, shared by the API, SDK, browser and load tests."""
    running = start_server(built.config, built.data, built.home, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield running
    stop_server(running)
    assert running.process.returncode is not None


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (no browser download), one per test module."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
