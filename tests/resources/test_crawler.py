"""ScrapyCrawler: real Scrapy crawls, in a subprocess, over real HTTP to a LocalSite on 127.0.0.1."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
)
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.python.failure import Failure

from mebot.resources.crawler import CrawlProcessError, CrawlRecords, ScrapyCrawler, crawl_job
from mebot.resources.local_site import LocalSite, StaticSiteHandler
from mebot.resources.scrapy_crawl import failure_reason, robots_nofollow
from mebot.resources.settings import SiteSettings
from tests.sites import free_port, page_html, write_page, write_small_site

FAST = {"download_delay": 0}


def recording_handler() -> type[StaticSiteHandler]:
    """A fresh handler class that logs every requested path (in `.requested`); `/photo` is served as a PNG
    and `/slow/` answers after 3 s."""

    class Recording(StaticSiteHandler):
        requested: list[str] = []

        def do_GET(self) -> None:  # noqa: N802
            Recording.requested.append(self.path)
            if self.path == "/slow/":
                time.sleep(3)
            super().do_GET()

        def guess_type(self, path: str) -> str:
            if str(path).endswith("photo"):
                return "image/png"
            return super().guess_type(path)

    return Recording


def paths(urls: list[str]) -> set[str]:
    return {urlsplit(u).path + (f"?{urlsplit(u).query}" if urlsplit(u).query else "") for u in urls}


def by_reason(crawl: CrawlRecords, kind: str, reason: str) -> list[str]:
    return [r["url"] for r in crawl.of_kind(kind) if r.get("reason") == reason]


@dataclass
class Crawled:
    crawl: CrawlRecords
    requested: list[str]
    progress: list[str]
    base_url: str


def crawl_site(site_dir: Path, settings: SiteSettings, start_paths: tuple[str, ...] = ("/",)) -> Crawled:
    handler = recording_handler()
    progress: list[str] = []
    with LocalSite(site_dir, port=0, handler=handler) as site:
        crawl = ScrapyCrawler().crawl(settings, [site.base_url + p for p in start_paths], on_progress=progress.append)
        base_url = site.base_url
    return Crawled(crawl, list(handler.requested), progress, base_url)


@pytest.fixture(scope="module")
def small_site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = write_small_site(tmp_path_factory.mktemp("site"), posts=4)
    write_page(
        site_dir,
        "/media/",
        page_html("/media/", "Media", '<p><a href="/photo">A photo</a> <a href="/slides.pdf">Slides</a></p>'),
    )
    (site_dir / "photo").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (site_dir / "slides.pdf").write_bytes(b"%PDF-1.4\n% slides\n")
    return site_dir


@pytest.fixture(scope="module")
def default_crawl(small_site_dir: Path) -> Crawled:
    """One crawl of the small site with robots.txt obeyed, shared by the tests that only read it."""
    return crawl_site(small_site_dir, SiteSettings(**FAST), start_paths=("/", "/media/"))


# ---------------------------------------------------------------- one crawl of the small site


def test_crawl_fetches_the_site_pages(default_crawl: Crawled) -> None:
    pages = {urlsplit(r["url"]).path: r["status"] for r in default_crawl.crawl.of_kind("page")}
    expected = {"/", "/about/", "/media/", *(f"/posts/post-{i}/" for i in range(4))}
    assert expected <= set(pages)
    assert all(pages[p] == 200 for p in expected)
    assert pages["/posts/missing/"] == 404
    assert default_crawl.crawl.finish_reason == "finished"
    page_record = next(r for r in default_crawl.crawl.of_kind("page") if urlsplit(r["url"]).path == "/about/")
    assert "<h1>About</h1>" in page_record["html"]
    assert page_record["referer"].startswith(default_crawl.base_url)


def test_start_urls_are_marked_as_start(default_crawl: Crawled) -> None:
    starts = {urlsplit(r["url"]).path for r in default_crawl.crawl.records if r.get("start")}
    assert starts == {"/", "/media/"}


def test_records_robots_txt(default_crawl: Crawled) -> None:
    robots = default_crawl.crawl.of_kind("robots")
    assert [r["url"] for r in robots] == [default_crawl.base_url + "/robots.txt"]
    assert robots[0]["text"] == "User-agent: *\nDisallow: /private/\n"


def test_never_fetches_robots_disallowed_url_when_obeying(default_crawl: Crawled) -> None:
    assert not any(p.startswith("/private/") for p in default_crawl.requested)
    assert paths(by_reason(default_crawl.crawl, "skipped", "robots_txt")) == {"/private/"}
    assert not any("/private/" in r["url"] for r in default_crawl.crawl.of_kind("page"))


def test_pdf_link_is_skipped_as_non_html_without_being_fetched(default_crawl: Crawled) -> None:
    assert {"/cv.pdf", "/slides.pdf"} <= paths(by_reason(default_crawl.crawl, "skipped", "non_html"))
    assert "/cv.pdf" not in default_crawl.requested
    assert "/slides.pdf" not in default_crawl.requested


def test_image_at_extensionless_url_is_skipped_by_content_type(default_crawl: Crawled) -> None:
    photo = [r for r in default_crawl.crawl.of_kind("skipped") if urlsplit(r["url"]).path == "/photo"]
    assert len(photo) == 1
    assert photo[0]["reason"] == "non_html"
    assert photo[0]["content_type"].startswith("image/png")
    assert "/photo" in default_crawl.requested  # only its content type could tell
    assert not any(urlsplit(r["url"]).path == "/photo" for r in default_crawl.crawl.of_kind("page"))


def test_off_site_link_is_skipped_as_off_site(default_crawl: Crawled) -> None:
    assert by_reason(default_crawl.crawl, "skipped", "off_site") == ["https://example.org/elsewhere"]
    assert all(r["url"].startswith(default_crawl.base_url) for r in default_crawl.crawl.of_kind("page"))


def test_progress_callback_receives_count_lines(default_crawl: Crawled) -> None:
    assert default_crawl.progress
    assert all(line.startswith("crawl: ") for line in default_crawl.progress)
    counts = default_crawl.crawl
    last = (
        f"crawl: {len(counts.of_kind('page'))} pages, {len(counts.of_kind('skipped'))} skipped, "
        f"{len(counts.of_kind('error'))} errors"
    )
    assert default_crawl.progress[-1] == last


# ---------------------------------------------------------------- settings that change the crawl


def test_fetches_robots_disallowed_url_when_not_obeying(small_site_dir: Path) -> None:
    crawled = crawl_site(small_site_dir, SiteSettings(obey_robots_txt=False, **FAST))
    assert "/private/" in crawled.requested
    private = [r for r in crawled.crawl.of_kind("page") if urlsplit(r["url"]).path == "/private/"]
    assert len(private) == 1 and private[0]["status"] == 200
    assert not by_reason(crawled.crawl, "skipped", "robots_txt")


def test_allow_patterns_limit_followed_links(small_site_dir: Path) -> None:
    crawled = crawl_site(small_site_dir, SiteSettings(allow=[r"/posts/post-[01]/$"], **FAST))
    assert set(crawled.requested) == {"/robots.txt", "/", "/posts/post-0/", "/posts/post-1/"}
    assert paths([r["url"] for r in crawled.crawl.of_kind("page")]) == {
        "/",
        "/posts/post-0/",
        "/posts/post-1/",
    }


def test_deny_patterns_stop_links_from_being_followed(small_site_dir: Path) -> None:
    crawled = crawl_site(small_site_dir, SiteSettings(deny=[r"/posts/", r"/old/"], **FAST))
    assert not any(p.startswith("/posts/") or p.startswith("/old/") for p in crawled.requested)
    assert "/about/" in crawled.requested
    assert paths([r["url"] for r in crawled.crawl.of_kind("page")]) == {"/", "/about/"}


def test_deny_pattern_applies_where_a_redirect_lands(small_site_dir: Path) -> None:
    # /old/ (allowed) redirects to /posts/post-3/ (denied); the landing page must not be kept
    crawled = crawl_site(small_site_dir, SiteSettings(deny=[r"/posts/post-3/"], **FAST))
    assert "/old/" in crawled.requested
    assert paths(by_reason(crawled.crawl, "skipped", "denied_after_redirect")) == {"/posts/post-3/"}
    assert "/posts/post-3/" not in paths([r["url"] for r in crawled.crawl.of_kind("page")])
    assert "/posts/post-2/" in paths([r["url"] for r in crawled.crawl.of_kind("page")])


@pytest.fixture(scope="module")
def big_site_crawl(tmp_path_factory: pytest.TempPathFactory) -> Crawled:
    site_dir = write_small_site(tmp_path_factory.mktemp("big-site"), posts=40)
    return crawl_site(site_dir, SiteSettings(max_pages=5, **FAST))


def test_max_pages_stops_the_crawl(big_site_crawl: Crawled) -> None:
    # the site has 44 pages; the spider closes itself once it has recorded 5
    assert big_site_crawl.crawl.finish_reason == "max_pages"


def test_max_pages_caps_the_number_of_recorded_pages(big_site_crawl: Crawled) -> None:
    # 44 pages to find: the crawl records max_pages of them, no fewer and no more
    pages = big_site_crawl.crawl.of_kind("page")
    assert len(pages) == 5
    assert len({page["url"] for page in pages}) == 5


def test_crawl_job_defaults_allowed_domains_to_start_url_hosts() -> None:
    job = crawl_job(SiteSettings(**FAST), ["http://Example.COM/a", "https://blog.example.org/"])
    assert job["allowed_domains"] == ["blog.example.org", "example.com"]
    job = crawl_job(SiteSettings(allowed_domains=["Example.COM"], **FAST), ["http://www.example.com/"])
    assert job["allowed_domains"] == ["example.com"]


# ---------------------------------------------------------------- errors


def test_redirect_chain_longer_than_five_hops_is_too_many_redirects(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(site_dir, "/", page_html("/", "Home", '<p><a href="/r0/">chain</a> <a href="/about/">about</a></p>'))
    write_page(site_dir, "/about/", page_html("/about/", "About", "<p>about</p>"))
    write_page(site_dir, "/r8/", page_html("/r8/", "End", "<p>end of chain</p>"))
    (site_dir / "_redirects").write_text("".join(f"/r{i}/ /r{i + 1}/ 301\n" for i in range(8)), encoding="utf-8")
    crawled = crawl_site(site_dir, SiteSettings(**FAST))
    errors = crawled.crawl.of_kind("error")
    assert [e["reason"] for e in errors] == ["too_many_redirects"]
    assert "/r8/" not in crawled.requested
    assert "/about/" in paths([r["url"] for r in crawled.crawl.of_kind("page")])


def test_redirect_loop_is_recorded_as_too_many_redirects(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(site_dir, "/", page_html("/", "Home", '<p><a href="/loop-a/">loop</a></p>'))
    (site_dir / "_redirects").write_text("/loop-a/ /loop-b/ 301\n/loop-b/ /loop-a/ 301\n", encoding="utf-8")
    crawled = crawl_site(site_dir, SiteSettings(**FAST))
    assert crawled.crawl.finish_reason == "finished"
    assert by_reason(crawled.crawl, "error", "too_many_redirects")


def test_unreachable_start_url_is_recorded_as_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    crawl = ScrapyCrawler().crawl(SiteSettings(**FAST), [url], on_progress=lambda line: None)
    errors = crawl.of_kind("error")
    assert [(e["url"], e["start"]) for e in errors] == [(url, True)]
    assert errors[0]["reason"] == "unreachable"


@pytest.fixture(scope="module")
def slow_crawl(tmp_path_factory: pytest.TempPathFactory) -> Crawled:
    site_dir = tmp_path_factory.mktemp("slow-site")
    write_page(site_dir, "/", page_html("/", "Home", '<p><a href="/slow/">slow</a> <a href="/about/">about</a></p>'))
    write_page(site_dir, "/slow/", page_html("/slow/", "Slow", "<p>too late</p>"))
    write_page(site_dir, "/about/", page_html("/about/", "About", "<p>about</p>"))
    return crawl_site(site_dir, SiteSettings(timeout_s=0.5, **FAST))


def test_slow_page_is_an_error_and_the_crawl_goes_on(slow_crawl: Crawled) -> None:
    errors = slow_crawl.crawl.of_kind("error")
    assert paths([e["url"] for e in errors]) == {"/slow/"}
    assert slow_crawl.requested.count("/slow/") == 2  # RETRY_TIMES = 1
    ok = [r["url"] for r in slow_crawl.crawl.of_kind("page") if r["status"] == 200]
    assert paths(ok) == {"/", "/about/"}


def test_slow_page_is_recorded_as_timeout(slow_crawl: Crawled) -> None:
    assert [e["reason"] for e in slow_crawl.crawl.of_kind("error")] == ["timeout"]


@pytest.mark.parametrize(
    "error, reason",
    [
        (IgnoreRequest("Forbidden by robots.txt"), "robots_txt"),
        (IgnoreRequest("max redirections reached"), "too_many_redirects"),
        (IgnoreRequest("something else"), "ignored"),
        (ConnectionRefusedError(), "unreachable"),
        (DNSLookupError(), "unreachable"),
        (TimeoutError(), "timeout"),
        (ValueError("Expected to receive 10 bytes which is larger than download max size (5)"), "too_large"),
        (KeyError("other"), "KeyError"),
        pytest.param(
            DownloadConnectionRefusedError(),
            "unreachable",
        ),
        pytest.param(
            CannotResolveHostError(),
            "unreachable",
        ),
        pytest.param(
            DownloadTimeoutError("took longer than 30.0 seconds"),
            "timeout",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_failure_reason(error: Exception, reason: str) -> None:
    assert failure_reason(Failure(error)) == reason


# ---------------------------------------------------------------- what pages ask of robots


class RobotsHeaderHandler(StaticSiteHandler):
    """Sends an X-Robots-Tag header with the pages under /header-<value>/ (value with '+' for spaces)."""

    def end_headers(self) -> None:
        first = self.path.split("/")[1]
        if first.startswith("header-"):
            self.send_header("X-Robots-Tag", first.removeprefix("header-").replace("+", " "))
        super().end_headers()


def test_nofollow_pages_are_recorded_but_their_links_are_not_followed(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    starts = ["/open/", "/meta-nofollow/", "/header-noindex,+nofollow/", "/header-otherbot:+nofollow/"]
    write_page(site_dir, "/", page_html("/", "Home", "".join(f'<p><a href="{s}">{s}</a></p>' for s in starts)))
    for start in starts:
        head = '<meta name="robots" content="noindex, NOFOLLOW">' if start == "/meta-nofollow/" else ""
        html = page_html(start, start, f'<p><a href="{start}behind/">behind</a></p>').replace(
            "</head>", head + "</head>"
        )
        write_page(site_dir, start, html)
        write_page(site_dir, start + "behind/", page_html(start + "behind/", "Behind", "<p>Behind it.</p>"))
    with LocalSite(site_dir, port=0, handler=RobotsHeaderHandler) as site:
        crawl = ScrapyCrawler().crawl(SiteSettings(**FAST), [site.base_url + "/"], on_progress=lambda _: None)
    fetched = {urlsplit(r["url"]).path: r for r in crawl.of_kind("page")}
    assert set(starts) <= set(fetched)  # every page is fetched and recorded (the pipeline decides what to keep)
    assert {"/open/behind/", "/header-otherbot:+nofollow/behind/"} <= set(fetched)  # nofollow for another robot
    assert "/meta-nofollow/behind/" not in fetched
    assert "/header-noindex,+nofollow/behind/" not in fetched
    assert fetched["/header-noindex,+nofollow/"]["x_robots_tag"] == "noindex, nofollow"
    assert "x_robots_tag" not in fetched["/open/"]


@pytest.mark.parametrize(
    ("meta", "headers", "nofollow"),
    [
        (["noindex, nofollow"], [], True),
        (["NONE"], [], True),
        (["noindex"], [], False),
        ([], ["nofollow"], True),
        ([], ["mebot: nofollow"], True),
        ([], ["googlebot: nofollow"], False),
        ([], ["unavailable_after: 25 Jun 2030 15:00:00 PST"], False),
        ([], [], False),
    ],
)
def test_robots_nofollow(meta: list[str], headers: list[str], nofollow: bool) -> None:
    assert robots_nofollow(meta, headers, "mebot/0.1 (personal-site Q&A bot)") is nofollow


# ---------------------------------------------------------------- the subprocess itself


def test_crash_of_the_crawl_process_raises_crawl_process_error() -> None:
    with pytest.raises(CrawlProcessError, match=r"exit code 1"):
        ScrapyCrawler(python_executable="/bin/false").crawl(SiteSettings(**FAST), ["http://127.0.0.1:1/"])


def test_crawl_process_error_carries_the_end_of_stderr(tmp_path: Path) -> None:
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(
        '#!/bin/sh\nfor i in $(seq 1 30); do echo "noise line $i" >&2; done\n'
        "echo 'Traceback: twisted reactor exploded' >&2\nexit 3\n",
        encoding="utf-8",
    )
    fake_python.chmod(0o755)
    with pytest.raises(CrawlProcessError) as excinfo:
        ScrapyCrawler(python_executable=str(fake_python)).crawl(SiteSettings(**FAST), ["http://127.0.0.1:1/"])
    message = str(excinfo.value)
    assert "exit code 3" in message
    assert "twisted reactor exploded" in message
    assert "noise line 1\n" not in message  # only the tail is kept


def test_process_that_exits_zero_without_output_is_a_crawl_process_error() -> None:
    with pytest.raises(CrawlProcessError, match=r"exit code 0"):
        ScrapyCrawler(python_executable="/bin/true").crawl(SiteSettings(**FAST), ["http://127.0.0.1:1/"])
