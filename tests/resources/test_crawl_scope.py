"""What a crawl may reach (resources/scrapy_crawl.py, resources/network_scope.py): only http(s), and, when the
start URLs are public hosts, no loopback, private, link-local or metadata address, redirects included. Real
Scrapy crawls over HTTP to sites on 127.0.0.1; only the DNS answer for the start host is a test double (no real
public host is reachable offline), passed in as the crawl's resolver."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mebot.resources.crawler import CrawlRecords, ScrapyCrawler, crawl_job
from mebot.resources.local_site import LocalSite, StaticSiteHandler
from mebot.resources.network_scope import NetworkScope, is_public_address
from mebot.resources.settings import SiteSettings
from tests.sites import facts_paragraphs, page_html, write_page

FAST = {"download_delay": 0}
PUBLIC_ADDRESS = "93.184.216.34"


def public_dns(host: str) -> list[str]:
    """The start host resolves to a public address (what a real site's DNS would say)."""
    return [PUBLIC_ADDRESS]


def reasons(crawl: CrawlRecords, reason: str) -> list[str]:
    return [r["url"] for r in crawl.records if r.get("reason") == reason]


def recording_handler() -> type[StaticSiteHandler]:
    class Recording(StaticSiteHandler):
        requested: list[str] = []

        def do_GET(self) -> None:  # noqa: N802
            Recording.requested.append(self.path)
            super().do_GET()

    return Recording


# ---------------------------------------------------------------- only the web


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    secret = f"OPENAI_API_KEY=sk-canary-{tmp_path.name}"
    path = tmp_path / "outside" / "project.env"
    path.parent.mkdir()
    path.write_text(secret + "\n", encoding="utf-8")
    return path, secret


def write_canary_site(site: Path, canary_path: Path) -> list[str]:
    """A home page linking the canary file under every non-web scheme; returns those links."""
    encoded = base64.b64encode(canary_path.read_bytes()).decode()
    links = [
        f"file://127.0.0.1{canary_path}",
        f"file://{canary_path}",
        f"ftp://127.0.0.1{canary_path}",
        f"data:text/plain;base64,{encoded}",
        f"s3://bucket{canary_path}",
        "mailto:someone@example.org",
    ]
    anchors = "".join(f'<p><a href="{link}">a file</a></p>' for link in links)
    write_page(site, "/", page_html("/", "Home", facts_paragraphs("home") + anchors))
    return links


def test_links_of_other_schemes_are_counted_as_scheme_and_never_fetched(tmp_path: Path, canary) -> None:
    canary_path, secret = canary
    links = write_canary_site(tmp_path / "site", canary_path)
    with LocalSite(tmp_path / "site", port=0) as site:
        crawl = ScrapyCrawler().crawl(SiteSettings(**FAST), [site.base_url + "/"], on_progress=lambda _: None)
    skipped = reasons(crawl, "scheme")
    assert {urlsplit(url).scheme for url in skipped} == {"file", "ftp", "data", "s3", "mailto"}
    assert len(skipped) == len(links)
    assert "data:" in skipped  # a data: URL's content is not recorded
    assert all(urlsplit(r["url"]).scheme in ("http", "https") for r in crawl.of_kind("page"))
    assert secret not in "".join(str(r) for r in crawl.records)


def test_the_spider_turns_every_non_web_download_handler_off() -> None:
    from mebot.resources.scrapy_crawl import scrapy_settings

    job = crawl_job(SiteSettings(), ["http://127.0.0.1:1/"])
    assert scrapy_settings(job)["DOWNLOAD_HANDLERS"] == {"file": None, "ftp": None, "s3": None, "data": None}


# ---------------------------------------------------------------- network scope


@pytest.mark.parametrize(
    "address, public",
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.5", False),
        ("192.168.1.10", False),
        ("169.254.169.254", False),  # the cloud metadata service
        ("100.100.100.200", False),  # shared address space (Alibaba's metadata service)
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),  # AWS's IPv6 metadata service
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_network_scope_refuses_private_hosts_caches_each_answer_and_exempts_the_start_origin() -> None:
    asked: list[str] = []
    table = {"site.example": [PUBLIC_ADDRESS], "internal.example": [PUBLIC_ADDRESS, "10.0.0.7"]}

    def resolve(host: str) -> list[str]:
        asked.append(host)
        return table.get(host, ["127.0.0.1"])

    scope = NetworkScope(["http://127.0.0.1:8000"], resolve=resolve)
    assert scope.refusal("http://site.example/a/") is None
    assert scope.refusal("http://internal.example/") == "private_address: internal.example resolves to 10.0.0.7"
    assert scope.refusal("http://127.0.0.1:8000/page/") is None  # a start URL's own origin
    assert scope.refusal("http://127.0.0.1:9000/admin/").startswith("private_address")
    assert scope.refusal("http://169.254.169.254/latest/meta-data/").startswith("private_address")
    scope.refusal("http://internal.example/again/")
    assert asked.count("internal.example") == 1


def test_private_addresses_are_refused_only_when_the_start_urls_are_public_and_not_allowed() -> None:
    start = ["http://127.0.0.1:8000/"]
    assert crawl_job(SiteSettings(), start)["refuse_private_addresses"] is False  # a site on loopback
    assert crawl_job(SiteSettings(), start, resolve=public_dns)["refuse_private_addresses"] is True
    allowed = SiteSettings(allow_private_addresses=True)
    assert crawl_job(allowed, start, resolve=public_dns)["refuse_private_addresses"] is False


def test_the_resolver_the_crawl_connects_with_refuses_a_host_that_now_resolves_privately() -> None:
    """DNS rebinding: a host that looked public to NetworkScope resolves to loopback when Scrapy connects. The
    answer Scrapy connects with comes from its DNS cache, filled here as a second DNS answer would fill it."""
    from scrapy.resolver import dnscache
    from twisted.internet.error import DNSLookupError
    from twisted.python.failure import Failure

    from mebot.resources.scrapy_crawl import ScopedResolver, failure_reason

    resolver = ScopedResolver(reactor=None, cache_size=100, timeout=5)
    resolver.refuse, resolver.exempt_hosts = True, frozenset({"start.example"})
    dnscache["rebound.example"] = "127.0.0.1"
    dnscache["start.example"] = "127.0.0.1"
    dnscache["public.example"] = PUBLIC_ADDRESS
    outcomes: dict[str, object] = {}
    for host in ("rebound.example", "start.example", "public.example"):
        resolver.getHostByName(host).addBoth(lambda result, host=host: outcomes.__setitem__(host, result))
    refused = outcomes["rebound.example"]
    assert isinstance(refused, Failure) and refused.check(DNSLookupError)
    assert failure_reason(refused) == "private_address"
    assert ScopedResolver.refused["rebound.example"] == "private_address: rebound.example resolves to 127.0.0.1"
    assert outcomes["start.example"] == "127.0.0.1"  # a start URL's host is where the site is
    assert outcomes["public.example"] == PUBLIC_ADDRESS


# A crawl process whose NetworkScope check looks away (as if the host had answered with a public address then),
# so that only the resolver Scrapy connects with stands between the crawl and a private address.
CRAWL_WITHOUT_THE_MIDDLEWARE_CHECK = """
import sys
from mebot.resources import scrapy_crawl
from mebot.resources.network_scope import NetworkScope
NetworkScope.refusal = lambda self, url: None
scrapy_crawl.main(sys.argv[1:])
"""


def test_the_connection_is_refused_when_a_host_resolves_privately_only_when_scrapy_connects(tmp_path: Path):
    write_page(tmp_path / "b", "/", page_html("/", "B", facts_paragraphs("b")))
    handler = recording_handler()
    with LocalSite(tmp_path / "b", port=0, handler=handler) as inner:
        other = inner.base_url.replace("127.0.0.1", "localhost")
        write_page(tmp_path / "a", "/", page_html("/", "A", facts_paragraphs("a") + f'<a href="{other}/">b</a>'))
        with LocalSite(tmp_path / "a", port=0) as outer:
            site = SiteSettings(**FAST, allowed_domains=["127.0.0.1", "localhost"])
            job = crawl_job(site, [outer.base_url + "/"], resolve=public_dns)
            (tmp_path / "job.json").write_text(json.dumps(job), encoding="utf-8")
            out = tmp_path / "out.jsonl"
            command = [sys.executable, "-c", CRAWL_WITHOUT_THE_MIDDLEWARE_CHECK, str(tmp_path / "job.json"), str(out)]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    refused = [r for r in records if r.get("reason") == "private_address"]
    assert [r["url"] for r in refused] == [other + "/"]
    assert refused[0]["detail"] == "private_address: localhost resolves to 127.0.0.1"
    assert handler.requested == []


@pytest.fixture
def two_sites(tmp_path: Path):
    """Site A links to, and redirects to, pages of site B, another port of the same loopback host: what a page
    on a public site pointing at the crawling machine's own services looks like."""
    inner = tmp_path / "inner"
    write_page(inner, "/", page_html("/", "Inner", facts_paragraphs("inner")))
    write_page(inner, "/secret/", page_html("/secret/", "Secret", "<p>inner secret page</p>"))
    handler = recording_handler()
    with LocalSite(inner, port=0, handler=handler) as inner_site:
        outer = tmp_path / "outer"
        linked = f"{inner_site.base_url}/linked/"
        anchors = f'<p><a href="/go/">go</a> <a href="{linked}">inner</a> <a href="/away/">away</a></p>'
        write_page(outer, "/", page_html("/", "Outer", facts_paragraphs("outer") + anchors))
        elsewhere = inner_site.base_url.replace("127.0.0.1", "localhost")  # another host, the same machine
        rules = f"/go/ {inner_site.base_url}/secret/ 302\n/away/ {elsewhere}/secret/ 302\n"
        (outer / "_redirects").write_text(rules, encoding="utf-8")
        with LocalSite(outer, port=0) as outer_site:
            yield outer_site.base_url + "/", handler


def test_a_public_site_cannot_redirect_or_link_the_crawl_to_a_private_address(two_sites) -> None:
    start, inner = two_sites
    crawl = ScrapyCrawler().crawl(SiteSettings(**FAST), [start], on_progress=lambda _: None, resolve=public_dns)
    refused = {urlsplit(url).path for url in reasons(crawl, "private_address")}
    assert refused == {"/go/", "/linked/"}  # a redirect is reported under the URL that was linked
    assert inner.requested == []
    assert all(r["url"].startswith(start) for r in crawl.of_kind("page"))


@pytest.mark.parametrize("settings, resolve", [({}, None), ({"allow_private_addresses": True}, public_dns)])
def test_a_site_on_loopback_or_the_setting_lets_the_crawl_reach_private_addresses(two_sites, settings, resolve):
    start, inner = two_sites
    kwargs = {"resolve": resolve} if resolve else {}
    crawl = ScrapyCrawler().crawl(SiteSettings(**FAST, **settings), [start], on_progress=lambda _: None, **kwargs)
    assert not reasons(crawl, "private_address")
    assert inner.requested.count("/secret/") == 1  # through /go/ only


@pytest.mark.parametrize("resolve", [public_dns, None])
def test_a_redirect_off_the_allowed_domains_is_counted_as_off_site_and_never_followed(two_sites, resolve):
    start, inner = two_sites
    kwargs = {"resolve": resolve} if resolve else {}
    crawl = ScrapyCrawler().crawl(SiteSettings(**FAST), [start], on_progress=lambda _: None, **kwargs)
    assert start + "away/" in reasons(crawl, "off_site")  # redirected to localhost, another host
    assert inner.requested.count("/secret/") == (0 if resolve else 1)  # reached through /go/ alone
