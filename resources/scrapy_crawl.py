"""The Scrapy crawl itself, run as `python -m mebot.resources.scrapy_crawl JOB.json OUT.jsonl` in a fresh subprocess
each time (Twisted's reactor cannot be restarted inside one process). The spider records what it saw (pages,
skipped links, robots.txt) as JSON lines and honours `nofollow`; what to keep is assets/ingest/crawl.py's job.
Only http(s) is fetched, and with `refuse_private_addresses` no non-global address is requested, redirects and
DNS answers included."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy import signals
from scrapy.crawler import CrawlerProcess
from scrapy.exceptions import (
    CannotResolveHostError,
    CloseSpider,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
    NotSupported,
)
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import IGNORED_EXTENSIONS, LinkExtractor
from scrapy.resolver import CachingThreadedResolver
from twisted.internet.error import (
    ConnectionRefusedError,
    DNSLookupError,
    TCPTimedOutError,
    TimeoutError,
)

from mebot.resources.clock import utc_now
from mebot.resources.network_scope import PRIVATE_ADDRESS, NetworkScope, is_public_address, is_web_url

_NON_HTML_EXTENSIONS = {f".{ext}" for ext in IGNORED_EXTENSIONS}
MAX_RECORDED_URL_CHARS = 300


def recorded_url(url: str) -> str:
    """A skipped link as recorded: a data: URL carries content, not an address, so only its scheme is kept."""
    if urlsplit(url).scheme.lower() == "data":
        return "data:"
    return url[:MAX_RECORDED_URL_CHARS]


class ScopedResolver(CachingThreadedResolver):
    """The resolver the crawl connects with. With `refuse_private_addresses`, a host other than a start URL's
    whose address is not public does not resolve (reason `private_address`), so no connection is made to it even
    when its DNS answered differently when `NetworkScopeMiddleware` asked (DNS rebinding)."""

    refuse: bool = False
    exempt_hosts: frozenset[str] = frozenset()
    # host -> why; Twisted reports a failed lookup as "no results", so the spider looks the reason up here
    refused: dict[str, str] = {}  # noqa: RUF012 (one resolver per crawl process)

    @classmethod
    def from_crawler(cls, crawler: Any, reactor: Any) -> ScopedResolver:
        resolver = super().from_crawler(crawler, reactor)
        job = crawler.settings.getdict("MEBOT_JOB")
        resolver.refuse = bool(job.get("refuse_private_addresses"))
        resolver.exempt_hosts = frozenset((urlsplit(o).hostname or "") for o in job.get("start_origins", []))
        return resolver

    def getHostByName(self, name: str, timeout: Any = ()) -> Any:  # noqa: N802 (Twisted's name)
        resolved = super().getHostByName(name, timeout)
        if not self.refuse or name.lower() in self.exempt_hosts:
            return resolved

        def public_only(address: str) -> str:
            if not is_public_address(address):
                ScopedResolver.refused[name.lower()] = f"{PRIVATE_ADDRESS}: {name} resolves to {address}"
                raise DNSLookupError(ScopedResolver.refused[name.lower()])
            return address

        return resolved.addCallback(public_only)


class NetworkScopeMiddleware:
    """Downloader middleware: every request, a redirect's included, passes `NetworkScope` before it is sent."""

    def __init__(self, scope: NetworkScope | None):
        self.scope = scope

    @classmethod
    def from_crawler(cls, crawler: Any) -> NetworkScopeMiddleware:
        job = crawler.settings.getdict("MEBOT_JOB")
        refuse = job.get("refuse_private_addresses", False)
        return cls(NetworkScope(job.get("start_origins", [])) if refuse else None)

    def process_request(self, request: scrapy.Request, spider: scrapy.Spider | None = None) -> None:
        if not is_web_url(request.url):
            raise IgnoreRequest(f"scheme: {urlsplit(request.url).scheme!r} is not http(s)")
        if self.scope is not None and (refusal := self.scope.refusal(request.url)):
            raise IgnoreRequest(refusal)


def _extension(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""


def robots_nofollow(meta_contents: list[str], header_values: list[str], user_agent: str) -> bool:
    """Whether the page's robots meta tags or X-Robots-Tag headers (for every robot, or for our product token)
    say `nofollow` (or `none`)."""
    token = user_agent.split("/", 1)[0].strip().lower()
    values = list(meta_contents)
    for value in header_values:
        robot, colon, rest = value.partition(":")
        robot = robot.strip().lower()
        if colon and robot and " " not in robot and robot != "unavailable_after":
            if robot == token:
                values.append(rest)
        else:
            values.append(value)
    directives = {part.strip().lower() for value in values for part in value.split(",")}
    return bool(directives & {"nofollow", "none"})


def failure_reason(failure: Any) -> str:
    """A short, stable reason for a request that produced no response."""
    error = failure.value
    text = str(error)
    if isinstance(error, NotSupported) or (isinstance(error, IgnoreRequest) and text.startswith("scheme:")):
        return "scheme"
    if f"{PRIVATE_ADDRESS}: " in text:  # NetworkScopeMiddleware's refusal, or ScopedResolver's
        return PRIVATE_ADDRESS
    if isinstance(error, IgnoreRequest):
        if "robots.txt" in text:
            return "robots_txt"
        if "redirect" in text.lower():
            return "too_many_redirects"
        return "ignored"
    if isinstance(
        error, ConnectionRefusedError | DNSLookupError | DownloadConnectionRefusedError | CannotResolveHostError
    ):
        return "unreachable"
    if isinstance(error, TimeoutError | TCPTimedOutError | DownloadTimeoutError):
        return "timeout"
    if isinstance(error, DownloadCancelledError) or "maxsize" in text.lower() or "max size" in text.lower():
        return "too_large"
    return type(error).__name__


class SiteSpider(scrapy.Spider):
    name = "mebot"

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> SiteSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.on_request_dropped, signal=signals.request_dropped)
        crawler.signals.connect(spider.on_request_scheduled, signal=signals.request_scheduled)
        return spider

    def __init__(self, job: dict[str, Any], out_path: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.job = job
        self.start_url_list: list[str] = job["start_urls"]
        self.allowed_domains = job["allowed_domains"]
        self._out = Path(out_path).open("w", encoding="utf-8")
        self._links = LinkExtractor(allow=job["allow"], deny=job["deny"], deny_extensions=[], unique=True)
        self._allow = [re.compile(p) for p in job["allow"]]
        self._deny = [re.compile(p) for p in job["deny"]]
        self._skipped_links: set[str] = set()
        self.counts = {"pages": 0, "skipped": 0, "errors": 0}
        self._last_progress = 0.0

    async def start(self):  # Scrapy >= 2.13
        for origin in sorted({f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in self.start_url_list}):
            yield scrapy.Request(
                f"{origin}/robots.txt",
                callback=self.parse_robots,
                errback=lambda failure: None,
                meta={"dont_obey_robotstxt": True, "handle_httpstatus_all": True},
                priority=100,
                dont_filter=True,
            )
        for url in self.start_url_list:
            yield scrapy.Request(url, callback=self.parse, errback=self.on_error, meta={"start": True})

    def parse_robots(self, response: Response) -> None:
        if response.status == 200 and isinstance(response, TextResponse):
            self.write({"kind": "robots", "url": response.url, "text": response.text})

    def parse(self, response: Response):
        content_type = response.headers.get("Content-Type", b"").decode("latin-1").lower()
        is_html = isinstance(response, TextResponse) and ("html" in content_type or not content_type)
        referer = (response.request.headers.get("Referer") or b"").decode("latin-1") if response.request else ""
        record = {
            "kind": "page",
            "url": response.url,
            "requested_url": response.request.meta.get("redirect_urls", [response.url])[0]
            if response.request
            else response.url,
            "status": response.status,
            "content_type": content_type,
            "referer": referer,
            "fetched_at": utc_now(),
            "start": bool(response.meta.get("start")),
        }
        if not is_web_url(response.url):
            self.write({**record, "kind": "skipped", "reason": "scheme", "url": recorded_url(response.url)})
            return
        if not response.meta.get("start") and not self._matches_patterns(response.url):
            # reached through a redirect from an allowed URL; the patterns apply to where it landed
            self.write({**record, "kind": "skipped", "reason": "denied_after_redirect"})
            return
        if not is_html:
            self.write({**record, "kind": "skipped", "reason": "non_html"})
            return
        if self.counts["pages"] >= self.job["max_pages"]:
            return  # a response still in flight when the cap was reached
        x_robots = [v.decode("latin-1") for v in response.headers.getlist("X-Robots-Tag")]
        if x_robots:
            record["x_robots_tag"] = "\n".join(x_robots)
        self.write({**record, "html": response.text if response.status < 400 else ""})
        if self.counts["pages"] >= self.job["max_pages"]:
            raise CloseSpider("max_pages")
        if response.status >= 400:
            return
        meta_robots = response.xpath("//meta[translate(@name, 'ROBTS', 'robts') = 'robots']/@content").getall()
        if robots_nofollow(meta_robots, x_robots, self.job["user_agent"]):
            return  # the page asks robots not to follow its links
        for href in response.xpath("//a/@href | //area/@href").getall():
            url = response.urljoin(href.strip())
            if not is_web_url(url):
                self._skip(recorded_url(url), "scheme", response.url)
        for link in self._links.extract_links(response):
            url = link.url
            if not is_web_url(url):
                continue  # counted above
            if not self._is_allowed_domain(url):
                self._skip(url, "off_site", response.url)
            elif _extension(url) in _NON_HTML_EXTENSIONS:
                self._skip(url, "non_html", response.url)
            else:
                yield response.follow(url, callback=self.parse, errback=self.on_error)

    def on_request_scheduled(self, request: scrapy.Request, spider: scrapy.Spider) -> None:
        """A redirect off the allowed domains is dropped by Scrapy's offsite filter without a word: record it,
        under the URL that was linked, as off_site."""
        chain = request.meta.get("redirect_urls") or []
        if chain and not self._is_allowed_domain(request.url):
            referer = (request.headers.get("Referer") or b"").decode("latin-1")
            self._skip(chain[0], "off_site", referer)

    def on_request_dropped(self, request: scrapy.Request, spider: scrapy.Spider) -> None:
        """The duplicate filter drops a redirect to a URL already requested. When that URL is in the request's
        own redirect chain, it is a loop; otherwise the page was simply reached another way before."""
        chain = request.meta.get("redirect_urls") or []
        if request.url in chain:
            self.write(
                {
                    "kind": "error",
                    "url": request.meta["redirect_urls"][0],
                    "reason": "too_many_redirects",
                    "detail": "redirect loop: " + " -> ".join([*request.meta["redirect_urls"], request.url]),
                    "referer": (request.headers.get("Referer") or b"").decode("latin-1"),
                    "start": bool(request.meta.get("start")),
                    "fetched_at": utc_now(),
                }
            )

    def on_error(self, failure: Any) -> None:
        request = failure.request
        reason, detail = failure_reason(failure), str(failure.value)
        refused = ScopedResolver.refused.get((urlsplit(request.url).hostname or "").lower())
        if reason == "unreachable" and refused:
            reason, detail = PRIVATE_ADDRESS, refused
        kind = "skipped" if reason in ("robots_txt", "too_large", "scheme", PRIVATE_ADDRESS) else "error"
        self.write(
            {
                "kind": kind,
                # the URL that was asked for, not the last hop of a redirect chain
                "url": request.meta.get("redirect_urls", [request.url])[0],
                "reason": reason,
                "detail": detail[:300],
                "referer": (request.headers.get("Referer") or b"").decode("latin-1"),
                "start": bool(request.meta.get("start")),
                "fetched_at": utc_now(),
            }
        )

    def _matches_patterns(self, url: str) -> bool:
        allowed = not self._allow or any(p.search(url) for p in self._allow)
        return allowed and not any(p.search(url) for p in self._deny)

    def _is_allowed_domain(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def _skip(self, url: str, reason: str, referer: str) -> None:
        if url in self._skipped_links:
            return
        self._skipped_links.add(url)
        self.write({"kind": "skipped", "url": url, "reason": reason, "referer": referer, "fetched_at": utc_now()})

    def write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()
        key = {"page": "pages", "skipped": "skipped", "error": "errors"}.get(record["kind"])
        if key:
            self.counts[key] += 1
            now = time.monotonic()
            if now - self._last_progress > 2 or self.counts["pages"] % 25 == 0:
                self._last_progress = now
                self.progress(record.get("url", ""))

    def progress(self, url: str) -> None:
        print("PROGRESS " + json.dumps({**self.counts, "url": url}), flush=True)

    def closed(self, reason: str) -> None:
        self.progress("")
        print("FINISHED " + json.dumps({"reason": reason}), flush=True)
        self._out.close()


def scrapy_settings(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "ROBOTSTXT_OBEY": job["obey_robots_txt"],
        "USER_AGENT": job["user_agent"],
        "DOWNLOAD_DELAY": job["download_delay"],
        "DOWNLOAD_TIMEOUT": job["timeout_s"],
        "DOWNLOAD_MAXSIZE": job["max_page_bytes"],
        "DOWNLOAD_WARNSIZE": 0,
        "REDIRECT_MAX_TIMES": 5,
        "RETRY_TIMES": 1,
        "HTTPERROR_ALLOW_ALL": True,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "ERROR",
        "REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7",
        # only the web: no local files, FTP, S3 buckets or data: URLs, whatever a page links to
        "DOWNLOAD_HANDLERS": {"file": None, "ftp": None, "s3": None, "data": None},
        # before every other downloader middleware (robots.txt included), and again for each redirect
        "DOWNLOADER_MIDDLEWARES": {"mebot.resources.scrapy_crawl.NetworkScopeMiddleware": 1},
        "TWISTED_DNS_RESOLVER": "mebot.resources.scrapy_crawl.ScopedResolver",
        "MEBOT_JOB": {k: job.get(k) for k in ("refuse_private_addresses", "start_origins")},
    }


def main(argv: list[str]) -> int:
    job_path, out_path = argv
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    process = CrawlerProcess(settings=scrapy_settings(job), install_root_handler=True)
    process.crawl(SiteSpider, job=job, out_path=out_path)
    process.start()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
