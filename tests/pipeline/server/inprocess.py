"""The server in the test process, for the fast tier: `create_app` over a real ModelRegistry whose index was
built by the real crawl, chunking and FAISS assets on a small generated site, with the fake chat and embedding
models of tests/fakes.py. `served_app(settings)` serves it in-process (Starlette's TestClient) or over real HTTP
(`RealServer`: uvicorn as `mebot serve` runs it, on a free loopback port)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import uvicorn

from mebot.pipeline.definitions import build_definitions
from mebot.pipeline.server.app import create_app, uvicorn_options
from mebot.pipeline.server.models import ModelRegistry
from mebot.resources.settings import Settings, load_settings
from tests.fakes import with_fake_models
from tests.helpers import deep_merge, write_settings
from tests.sites import free_port, write_small_site


@dataclass
class BuiltIndex:
    config: Path
    data: Path
    resources: dict[str, Any]

    def settings(self, serve: dict[str, Any] | None = None) -> Settings:
        base = load_settings(self.config).model_dump(mode="json")
        return Settings.model_validate(deep_merge(base, {"serve": serve or {}}))

    def registry(self, settings: Settings) -> ModelRegistry:
        registry = ModelRegistry(settings, self.resources, self.data)
        registry.refresh()
        assert registry.ready, registry.not_ready_reason
        return registry


def build_index(root: Path) -> BuiltIndex:
    """The ingest and index assets materialized on a small site (fake models, real crawl and FAISS)."""
    site = write_small_site(root / "site", posts=4)
    site_settings = {"download_delay": 0, "local_port": 0, "local_dir": str(site)}
    config = write_settings(root / "mebot.yaml", {"site": site_settings})
    data = root / "data"
    defs = build_definitions(config, data_dir=data)
    resources = with_fake_models(defs.resources)
    result = dg.materialize(
        [*defs.assets, *(defs.asset_checks or [])],
        resources=resources,
        selection=dg.AssetSelection.groups("ingest", "index"),
    )
    assert result.success
    return BuiltIndex(config, data, resources)


@dataclass
class RealServer:
    url: str
    server: uvicorn.Server


@contextmanager
def real_server(built: BuiltIndex, serve: dict[str, Any]) -> Iterator[RealServer]:
    """uvicorn with `mebot serve`'s options, in a thread, on a free loopback port."""
    settings = built.settings(serve)
    app = create_app(settings, built.registry(settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **uvicorn_options()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield RealServer(url, server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
