"""Stage 1 (assets/ingest/crawl.py): the `raw_pages` asset crawling real sites over HTTP on 127.0.0.1 (its
pure helpers: test_crawl.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import yaml

from mebot.assets.ingest.crawl import RAW_PAGES_COLUMNS, raw_pages
from mebot.resources.crawler import ScrapyCrawler
from mebot.resources.local_site import LocalSite
from mebot.resources.parquet_io import ParquetIOManagerFactory
from mebot.resources.settings import PROJECT_ROOT, SettingsResource
from tests.assets.ingest.records import paths_of
from tests.sites import ErrorRoutesHandler, facts_paragraphs, free_port, page_html, write_page, write_small_site

# ================================================================ the raw_pages asset, crawling real sites


@dataclass
class Run:
    result: dg.ExecuteInProcessResult
    data_dir: Path

    @property
    def parquet(self) -> Path:
        return self.data_dir / "raw_pages.parquet"

    def frame(self) -> pd.DataFrame:
        return pd.read_parquet(self.parquet)

    def metadata(self) -> dict[str, Any]:
        (materialization,) = self.result.asset_materializations_for_node("raw_pages")
        return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}

    def checks(self) -> dict[str, dg.AssetCheckEvaluation]:
        return {e.check_name: e for e in self.result.get_asset_check_evaluations()}

    def failure(self) -> str:
        return "\n".join(e.step_failure_data.error.to_string() for e in self.result.get_step_failure_events())


def materialize(tmp_path: Path, site: dict[str, Any], data_dir: Path | None = None) -> Run:
    config = tmp_path / "mebot.yaml"
    config.write_text(yaml.safe_dump({"site": {"download_delay": 0, "local_port": 0, **site}}), encoding="utf-8")
    data_dir = data_dir or tmp_path / "data"
    result = dg.materialize(
        [raw_pages],
        resources={
            "settings": SettingsResource(config_path=str(config)),
            "crawler": ScrapyCrawler(),
            "io_manager": ParquetIOManagerFactory(base_dir=str(data_dir)),
        },
        raise_on_error=False,
    )
    return Run(result, data_dir)


POSTS = 4


def test_raw_pages_crawls_the_local_site(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=POSTS)
    run = materialize(tmp_path, {"local_dir": str(site_dir)})
    assert run.result.success, run.failure()
    assert run.parquet.is_file()
    frame = run.frame()
    assert list(frame.columns) == RAW_PAGES_COLUMNS
    ok = frame[frame["status"] == 200]
    assert len(ok) >= POSTS + 1
    assert {"/about/", *(f"/posts/post-{i}/" for i in range(POSTS))} <= paths_of(frame, 200)
    assert "/" not in paths_of(frame)  # the home page is only links to the posts: a listing, followed, not kept
    assert not any("/private/" in url for url in frame["url"])
    assert not any("utm_" in url for url in frame["url"])
    (post_2_text,) = ok[ok["url"].str.endswith("/posts/post-2/")]["text"]
    assert "Fact 1 about topic 2" in post_2_text
    assert "Copyright" not in post_2_text
    assert paths_of(frame, 404) == {"/posts/missing/"}

    checks = run.checks()
    assert set(checks) == {"non_empty", "no_robots_disallowed_url", "no_boilerplate_lines"}
    assert all(check.passed for check in checks.values())

    metadata = run.metadata()
    assert metadata["pages"] == len(ok)
    assert metadata["skipped"] == {
        "duplicate_url": 1,
        "listing_page": 1,
        "non_html": 1,
        "off_site": 1,
        "robots_txt": 1,
    }
    ((home, why),) = metadata["listing_pages"].items()
    assert paths_of(pd.DataFrame({"url": [home]})) == {"/"} and why.endswith("of its words are links to 5 other pages")
    assert metadata["errors"] == {"http_404": 1}
    assert metadata["finish_reason"] == "finished"


def test_unreachable_start_url_fails_and_keeps_the_previous_parquet(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=2)
    first = materialize(tmp_path, {"local_dir": str(site_dir)})
    assert first.result.success, first.failure()
    before = first.parquet.read_bytes()

    url = f"http://127.0.0.1:{free_port()}/"
    second = materialize(tmp_path, {"start_urls": [url]})
    assert not second.result.success
    message = second.failure()
    assert "CrawlError" in message
    assert f"could not fetch start URL {url}" in message
    assert second.parquet.read_bytes() == before
    assert not second.result.asset_materializations_for_node("raw_pages")


def test_robots_txt_disallowing_everything_fails_with_a_clear_message(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=2)
    (site_dir / "robots.txt").write_text("User-agent: *\nDisallow: /\n", encoding="utf-8")
    run = materialize(tmp_path, {"local_dir": str(site_dir)})
    assert not run.result.success
    message = run.failure()
    assert "robots.txt" in message and "disallows" in message
    assert "obey_robots_txt" in message
    assert not run.parquet.exists()


def test_error_pages_are_recorded_and_the_crawl_continues(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(
        site_dir,
        "/",
        page_html(
            "/",
            "Home",
            '<p><a href="/status/500/">broken</a> <a href="/missing/">gone</a> <a href="/after/">after</a></p>',
        ),
    )
    write_page(site_dir, "/after/", page_html("/after/", "After", facts_paragraphs("after"), links=["/deeper/"]))
    write_page(site_dir, "/deeper/", page_html("/deeper/", "Deeper", facts_paragraphs("deeper")))
    (site_dir / "404.html").write_text("<html><body><h1>Not found</h1></body></html>", encoding="utf-8")
    with LocalSite(site_dir, port=0, handler=ErrorRoutesHandler) as site:
        run = materialize(tmp_path, {"start_urls": [site.base_url + "/"]})
    assert run.result.success, run.failure()
    frame = run.frame()
    assert paths_of(frame, 500) == {"/status/500/"}
    assert {"/missing/", "/private/", "/about/"} <= paths_of(frame, 404)  # /private/, /about/: chrome links
    assert paths_of(frame, 200) == {"/", "/after/", "/deeper/"}
    assert (frame[frame["status"] >= 400]["text"] == "").all()
    errors = run.metadata()["errors"]
    assert errors["http_500"] == 1 and errors["http_404"] >= 1
    assert run.metadata()["pages"] == 3


@pytest.fixture(scope="module")
def redirect_loop_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp_path = tmp_path_factory.mktemp("loop")
    site_dir = write_small_site(tmp_path / "site", posts=2)
    (site_dir / "_redirects").write_text("/loop-a/ /loop-b/ 301\n/loop-b/ /loop-a/ 301\n", encoding="utf-8")
    write_page(site_dir, "/about/", page_html("/about/", "About", '<p><a href="/loop-a/">loop</a> about</p>'))
    return materialize(tmp_path, {"local_dir": str(site_dir)})


def test_redirect_loop_ends_and_other_pages_are_kept(redirect_loop_run: Run) -> None:
    assert redirect_loop_run.result.success, redirect_loop_run.failure()
    assert redirect_loop_run.metadata()["finish_reason"] == "finished"
    kept = paths_of(redirect_loop_run.frame())
    assert {"/about/", "/posts/post-0/", "/posts/post-1/"} <= kept
    assert not any("loop" in path for path in kept)


def test_redirect_loop_is_counted_as_too_many_redirects(redirect_loop_run: Run) -> None:
    assert redirect_loop_run.metadata()["errors"].get("too_many_redirects") == 1


def test_page_over_max_page_bytes_is_skipped_as_too_large(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=2)
    write_page(site_dir, "/about/", page_html("/about/", "About", '<p><a href="/huge/">huge page</a> about</p>'))
    paragraph = "<p>" + "filler words " * 80 + "</p>\n"
    huge = page_html("/huge/", "Huge", paragraph * (10_000_000 // len(paragraph)))
    write_page(site_dir, "/huge/", huge)
    assert (site_dir / "huge" / "index.html").stat().st_size >= 9_500_000
    run = materialize(tmp_path, {"local_dir": str(site_dir), "max_page_bytes": 1_000_000})
    assert run.result.success, run.failure()
    kept = paths_of(run.frame())
    assert "/huge/" not in kept
    assert {"/about/", "/posts/post-0/", "/posts/post-1/"} <= kept
    assert run.metadata()["skipped"]["too_large"] == 1


def test_malformed_html_page_is_kept_with_its_text(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=2)
    write_page(site_dir, "/about/", page_html("/about/", "About", '<p><a href="/broken/">broken</a> about</p>'))
    broken = (
        b"<html><head><title>Broken page</title><body><article><h1>Broken heading<p>First surviving sentence."
        b"\x00\xff\xfe\x80\x81 junk bytes<div><p>Second surviving sentence.<b><i></div></span></td>"
        + bytes(range(1, 256))
        + b"<p>Third surviving sentence.<table><tr><td>cell"
    )
    (site_dir / "broken").mkdir()
    (site_dir / "broken" / "index.html").write_bytes(broken)
    run = materialize(tmp_path, {"local_dir": str(site_dir)})
    assert run.result.success, run.failure()
    rows = run.frame().set_index("url")
    row = rows.loc[[url for url in rows.index if url.endswith("/broken/")][0]]
    assert row["status"] == 200
    assert row["title"] == "Broken heading"
    for sentence in ("First surviving sentence.", "Second surviving sentence.", "Third surviving sentence."):
        assert sentence in row["text"]
    assert {"/about/", "/posts/post-0/", "/posts/post-1/"} <= paths_of(run.frame(), 200)


def test_kept_url_disallowed_by_robots_fails_the_robots_check(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=2)
    run = materialize(tmp_path, {"local_dir": str(site_dir), "obey_robots_txt": False})
    check = run.checks()["no_robots_disallowed_url"]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    violations = check.metadata["violations"].value
    assert len(violations) == 1 and violations[0].endswith("/private/")
    assert not run.result.success  # a blocking check that fails fails the run


def test_site_chrome_leaking_into_the_text_warns(tmp_path: Path) -> None:
    site_dir = write_small_site(tmp_path / "site", posts=3)
    run = materialize(
        tmp_path,
        {"local_dir": str(site_dir), "content_selectors": ["body"], "drop_selectors": ["script", "style"]},
    )
    assert run.result.success, run.failure()
    check = run.checks()["no_boilerplate_lines"]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert "Copyright 2024 Test Person, all rights reserved." in check.metadata["lines"].value


# ================================================================ the sample site: listings followed, not kept

SAMPLE_SITE = PROJECT_ROOT / "data" / "sample_site"
SAMPLE_POSTS = {f"/posts/{p.parent.name}/" for p in SAMPLE_SITE.glob("posts/*/index.html")}
SAMPLE_LISTINGS = {"/", "/page/2/", "/page/3/", "/2024/"} | {
    f"/tags/{p.parent.name}/" for p in SAMPLE_SITE.glob("tags/*/index.html")
}


@pytest.mark.parametrize("index_only", [None, []], ids=["default-patterns", "no-url-patterns"])
def test_a_crawl_of_the_sample_site_keeps_every_post_and_no_listing_page(tmp_path: Path, index_only) -> None:
    """The sample site has the listings of a real blog: a home page of post summaries, numbered index pages of
    post openings (/page/2/, /page/3/), a year archive (/2024/) and tag pages. With or without URL patterns,
    the crawl follows them to every post and keeps none of them."""
    run = materialize(tmp_path, {} if index_only is None else {"index_only": index_only})
    assert run.result.success, run.failure()
    assert len(SAMPLE_POSTS) == 21 and len(SAMPLE_LISTINGS) == 12
    kept = paths_of(run.frame(), 200)
    assert kept == {"/about/", *SAMPLE_POSTS}
    listings = {"/" + url.split("/", 3)[3]: why for url, why in run.metadata()["listing_pages"].items()}
    assert set(listings) == SAMPLE_LISTINGS
    if index_only == []:  # found by structure alone
        assert listings["/page/2/"].startswith("repeats the openings of")
        assert listings["/"].startswith("repeats the openings of")  # the summaries are the posts' descriptions
        assert "links to 3 other pages" in listings["/2024/"]
        assert all("links to" in listings[path] for path in SAMPLE_LISTINGS if path.startswith("/tags/"))
    else:
        assert listings["/page/2/"] == "URL matches site.index_only"
