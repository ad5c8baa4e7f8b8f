"""The crawl reads only the web (issue: a page linking `file://<host>/...` put the project's `.env` into
`raw_pages`, then the chunks, the index, the Dagster metadata and the API). A site on 127.0.0.1 links a canary
file under every non-web scheme; after a real Scrapy crawl and the ingest and index assets materialized through
Dagster (fake embedder, real FAISS) into a tmp data folder and instance, the canary is nowhere on disk."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import dagster as dg
import pandas as pd

from mebot.pipeline.definitions import build_definitions
from tests.fakes import with_fake_models
from tests.helpers import write_settings
from tests.sites import facts_paragraphs, page_html, write_page


def canary_links(canary: Path) -> list[str]:
    encoded = base64.b64encode(canary.read_bytes()).decode()
    return [
        f"file://127.0.0.1{canary}",
        f"file://{canary}",
        f"ftp://127.0.0.1{canary}",
        f"data:text/plain;base64,{encoded}",
        f"s3://bucket{canary}",
    ]


def text_under(folder: Path) -> str:
    """Everything readable under `folder`: raw bytes of every file, Parquet cells and SQLite rows decoded (a
    compressed column would hide a canary from a byte search)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        found.append(path.read_bytes().decode("utf-8", errors="replace"))
        if path.suffix == ".parquet":
            found.append(pd.read_parquet(path).astype(str).to_csv())
        if path.suffix == ".db":
            with sqlite3.connect(path) as db:
                for (table,) in db.execute("select name from sqlite_master where type = 'table'"):
                    found.extend(str(row) for row in db.execute(f'select * from "{table}"'))  # noqa: S608
    return "\n".join(found)


def test_no_canary_text_anywhere_after_crawling_a_site_that_links_local_files(tmp_path: Path) -> None:
    secret = f"OPENAI_API_KEY=sk-canary-{tmp_path.name}"
    canary = tmp_path / "project" / ".env"
    canary.parent.mkdir()
    canary.write_text(secret + "\n", encoding="utf-8")
    site = tmp_path / "site"
    anchors = "".join(f'<p><a href="{link}">notes</a></p>' for link in canary_links(canary))
    write_page(site, "/", page_html("/", "Home", facts_paragraphs("the garden", 6) + anchors))
    write_page(site, "/about/", page_html("/about/", "About", facts_paragraphs("the author", 6)))
    config = write_settings(
        tmp_path / "mebot.yaml", {"site": {"download_delay": 0, "local_port": 0, "local_dir": str(site)}}
    )
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    defs = build_definitions(config, data_dir=data)
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        result = dg.materialize(
            [*defs.assets, *(defs.asset_checks or [])],
            resources=with_fake_models(defs.resources),
            instance=instance,
            selection=dg.AssetSelection.groups("ingest", "index"),
        )
        assert result.success
        (crawl,) = result.asset_materializations_for_node("raw_pages")
    assert crawl.metadata["skipped"].value.get("scheme", 0) == 5
    assert pd.read_parquet(data / "rag_chunks.parquet")["text"].str.contains("Fact 1 about the garden").any()
    assert secret not in text_under(data)
    assert secret not in text_under(home)
