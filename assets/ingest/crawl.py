"""Crawl the person's site into `raw_pages` (one row per page: title, main-content text, status).

Every link is followed, but not every page is kept as content: `noindex`, duplicate URLs and content, and listing
pages (by `site.index_only` patterns or by structure, `site.detect_listings`) are skipped and counted, because a
listing's excerpts compete with the posts in retrieval. The rules and their thresholds: docs/crawling.md."""

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import dagster as dg
import pandas as pd
from protego import Protego

from mebot.assets.ingest.html_text import ExtractedPage, extract_page, resolve_canonical, robots_directives, words_of
from mebot.assets.outputs import content_output
from mebot.resources.crawler import CrawlRecords, ScrapyCrawler
from mebot.resources.hashing import stable_hash
from mebot.resources.local_site import LocalSite
from mebot.resources.network_scope import is_web_url
from mebot.resources.parquet_io import markdown_preview
from mebot.resources.settings import SettingsResource, SiteSettings, reads_settings

RAW_PAGES_COLUMNS = ["url", "title", "text", "html_sha256", "fetched_at", "status", "referer"]
_TRACKING_PARAMS = re.compile(r"^(utm_\w+|fbclid|gclid|mc_cid|mc_eid|ref)$", re.IGNORECASE)
BOILERPLATE_MIN_CHARS = 15
BOILERPLATE_MAX_SHARE = 0.5
# Listing pages by structure (see the module doc).
LISTING_MIN_EXCERPTS = 2
LISTING_MIN_LINKS = 2
LISTING_LINKED_SHARE = 0.5
LISTING_LINKED_SHARE_WEBSITE = 0.25
OPENING_MIN_WORDS = 15
SIGNATURE_WORDS = 10


class CrawlError(RuntimeError):
    """A crawl that produced no usable page; the message says why and what to change."""


def normalize_url(url: str) -> str:
    """Drop the fragment and tracking parameters, sort the rest, lowercase scheme and host."""
    parts = urlsplit(url)
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING_PARAMS.match(k))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(query), ""))


@dataclass
class CrawlSummary:
    pages: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    listings: dict[str, str] = field(default_factory=dict)  # listing URL -> why (URL pattern or structure)

    def as_metadata(self) -> dict[str, dg.MetadataValue]:
        return {
            "pages": dg.MetadataValue.int(self.pages),
            "skipped": dg.MetadataValue.json(dict(sorted(self.skipped.items()))),
            "errors": dg.MetadataValue.json(dict(sorted(self.errors.items()))),
            "listing_pages": dg.MetadataValue.json(dict(sorted(self.listings.items()))),
        }


# ------------------------------------------------------------------------------------------- listing pages


def opening_signature(page: ExtractedPage) -> str | None:
    """The first SIGNATURE_WORDS words of the page's first paragraph of at least OPENING_MIN_WORDS words."""
    opening = next((w for p in page.text.split("\n\n") if len(w := words_of(p)) >= OPENING_MIN_WORDS), None)
    return " ".join(opening[:SIGNATURE_WORDS]) if opening else None


def signatures(page: ExtractedPage) -> set[str]:
    """What an excerpt of this page would repeat: its opening signature, and the first SIGNATURE_WORDS words of
    its meta description (when that long)."""
    found = {opening_signature(page)} - {None}
    description = words_of(page.description)
    if len(description) >= SIGNATURE_WORDS:
        found.add(" ".join(description[:SIGNATURE_WORDS]))
    return found  # type: ignore[return-value]


@dataclass(frozen=True)
class PageShape:
    """What tells a listing from content, for one crawled page (see the module doc)."""

    excerpts: int  # other pages whose opening or description this page repeats
    link_targets: int  # other crawled pages linked from its main content
    linked_words: int  # words of the link items that point at them
    words: int  # words of its main content
    og_type: str
    opens_with_excerpt: bool = False  # its own first paragraph is another page's opening

    def listing_reason(self) -> str | None:
        """Why this page is a listing, or None when it is content."""
        # An article (og:type) that repeats other pages' openings further down (teasers of related posts inside
        # the content) is content; one that begins with another page's opening is a listing in an article's tag.
        if self.excerpts >= LISTING_MIN_EXCERPTS and (self.og_type != "article" or self.opens_with_excerpt):
            return f"repeats the openings of {self.excerpts} other pages"
        if self.og_type == "article" or self.link_targets < LISTING_MIN_LINKS or not self.words:
            return None
        share = self.linked_words / self.words
        needed = LISTING_LINKED_SHARE_WEBSITE if self.og_type == "website" else LISTING_LINKED_SHARE
        if share >= needed:
            kind = ", og:type website" if self.og_type == "website" else ""
            return f"{share:.0%} of its words are links to {self.link_targets} other pages{kind}"
        return None


def page_shapes(pages: dict[str, tuple[str, ExtractedPage]], known_urls: set[str]) -> dict[str, PageShape]:
    """The shape of every page (url -> (fetched url, extracted page)); `known_urls`: the crawled HTML pages under
    every URL they were reached by (a link to one of them is a link to a page of the site)."""
    owners: dict[str, set[str]] = {}
    own: dict[str, set[str]] = {}
    openings: dict[str, str | None] = {}
    for url, (_, page) in pages.items():
        own[url] = signatures(page)
        openings[url] = opening_signature(page)
        for signature in own[url]:
            owners.setdefault(signature, set()).add(url)
    first_words = {signature.split(" ", 1)[0] for signature in owners}
    shapes = {}
    for url, (fetched_url, page) in pages.items():
        words = words_of(page.text)
        repeated: set[str] = set()
        for i, word in enumerate(words):
            if word in first_words:
                gram = " ".join(words[i : i + SIGNATURE_WORDS])
                if gram in owners and gram not in own[url]:
                    repeated |= owners[gram] - {url}
        targets: set[str] = set()
        linked_words = 0
        for item in page.link_items:
            hits = {normalize_url(urljoin(fetched_url, href)) for href in item.hrefs} & known_urls
            hits -= {url, normalize_url(fetched_url)}
            if hits:
                targets |= hits
                linked_words += item.words
        opening = openings[url]
        opens_with_excerpt = opening is not None and bool(owners[opening] - {url})
        shapes[url] = PageShape(len(repeated), len(targets), linked_words, len(words), page.og_type, opens_with_excerpt)
    return shapes


def header_directives(x_robots_tag: str, user_agent: str) -> frozenset[str]:
    """The X-Robots-Tag header's directives (one value per line) that apply to us: values for every robot, and
    `<robot>: ...` values naming our user agent's product token (`mebot` of `mebot/0.1 (...)`)."""
    token = user_agent.split("/", 1)[0].strip().lower()
    found: set[str] = set()
    for value in x_robots_tag.splitlines():
        robot, colon, rest = value.partition(":")
        robot = robot.strip().lower()
        if colon and robot and " " not in robot and robot != "unavailable_after":  # "<robot>: directives"
            if robot != token:
                continue
            value = rest
        found |= robots_directives(value)
    return frozenset(found)


def is_noindex(record: dict, page: ExtractedPage, user_agent: str) -> bool:
    """The page asks not to be indexed: its robots meta tag, or the X-Robots-Tag header the crawl recorded."""
    header = header_directives(str(record.get("x_robots_tag") or ""), user_agent)
    return "noindex" in page.robots or "noindex" in header


# ------------------------------------------------------------------------------------------------ raw pages


def build_raw_pages(crawl: CrawlRecords, site: SiteSettings) -> tuple[pd.DataFrame, CrawlSummary]:
    """One row per distinct page: fetched HTML pages with their text, and error pages with their status.
    Listing pages (by URL pattern or structure), noindex pages and duplicates are counted, not kept."""
    summary = CrawlSummary()
    index_only = [re.compile(p) for p in site.index_only]
    extracted: dict[int, tuple[str, ExtractedPage]] = {}  # record number -> (kept URL, page)
    known_urls: set[str] = set()
    for number, record in enumerate(crawl.records):
        if record["kind"] != "page" or int(record["status"]) >= 400 or not is_web_url(record["url"]):
            continue
        page = extract_page(record["html"], site.content_selectors, site.drop_selectors)
        url = normalize_url(resolve_canonical(record["url"], page.canonical_href))
        if not is_web_url(url) or urlsplit(url).netloc != urlsplit(normalize_url(record["url"])).netloc:
            url = normalize_url(record["url"])  # a canonical link to another host or scheme is not trusted
        extracted[number] = (url, page)
        known_urls |= {url, normalize_url(record["url"]), normalize_url(record.get("requested_url") or record["url"])}
    shapes: dict[str, PageShape] = {}
    if site.detect_listings:
        firsts: dict[str, tuple[str, ExtractedPage]] = {}
        for number, (url, page) in extracted.items():
            firsts.setdefault(url, (crawl.records[number]["url"], page))
        shapes = page_shapes(firsts, known_urls)
    rows: dict[str, dict] = {}
    seen_text: dict[str, str] = {}
    for number, record in enumerate(crawl.records):
        kind = record["kind"]
        if kind == "skipped":
            summary.skipped[record["reason"]] += 1
            continue
        if kind == "error":
            summary.errors[record["reason"]] += 1
            continue
        if kind != "page":
            continue
        if not is_web_url(record["url"]):  # only the web is kept, whatever the crawl recorded
            summary.skipped["scheme"] += 1
            continue
        status = int(record["status"])
        if status >= 400:
            summary.errors[f"http_{status}"] += 1
            url = normalize_url(record["url"])
            rows.setdefault(url, _row(url, "", "", "", record))
            continue
        url, page = extracted[number]
        if url in summary.listings:  # a listing reached again under another URL
            summary.skipped["duplicate_url"] += 1
            continue
        if any(p.search(urlsplit(url).path) for p in index_only):
            summary.skipped["index_page"] += 1
            summary.listings.setdefault(url, "URL matches site.index_only")
            continue
        reason = shapes[url].listing_reason() if url in shapes else None
        if reason:
            summary.skipped["listing_page"] += 1
            summary.listings.setdefault(url, reason)
            continue
        if is_noindex(record, page, site.user_agent):
            summary.skipped["noindex"] += 1
            continue
        text_key = stable_hash(page.text, length=64)
        if url in rows and rows[url]["status"] < 400:
            summary.skipped["duplicate_url"] += 1
            continue
        if page.text and text_key in seen_text:
            summary.skipped["duplicate_content"] += 1
            continue
        seen_text[text_key] = url
        html_sha256 = stable_hash(record["html"], length=64)
        rows[url] = _row(url, page.title, page.text, html_sha256, record)
    frame = pd.DataFrame(list(rows.values()), columns=RAW_PAGES_COLUMNS)
    frame["status"] = frame["status"].astype("int64")
    frame = frame.sort_values("url", kind="stable").reset_index(drop=True)
    summary.pages = int(((frame["status"] < 400) & (frame["text"] != "")).sum())
    return frame, summary


def _row(url: str, title: str, text: str, html_sha256: str, record: dict) -> dict:
    return {
        "url": url,
        "title": title,
        "text": text,
        "html_sha256": html_sha256,
        "fetched_at": record["fetched_at"],
        "status": int(record["status"]),
        "referer": record.get("referer", ""),
    }


def explain_empty_crawl(crawl: CrawlRecords, user_agent: str) -> str:
    """Why a crawl kept no page, in words that say what to change."""
    starts = [r for r in crawl.records if r.get("start")]
    for record in starts:
        if record.get("reason") == "robots_txt":
            return (
                f"robots.txt of {record['url']} disallows it for user agent {user_agent!r}, so nothing was "
                "crawled. Check site.start_urls; set site.obey_robots_txt: false only for a site you own."
            )
        if record["kind"] == "error":
            return (
                f"could not fetch start URL {record['url']}: {record['reason']} ({record.get('detail', '')}). "
                "Check site.start_urls and that the site is up."
            )
        if record["kind"] == "page" and int(record["status"]) >= 400:
            return f"start URL {record['url']} answered HTTP {record['status']}. Check site.start_urls."
        if record["kind"] == "skipped":
            return f"start URL {record['url']} is not an HTML page ({record['reason']}). Check site.start_urls."
    if not starts:
        return f"no start URL answered ({', '.join(crawl.start_urls)}). Check site.start_urls and the network."
    return (
        "the crawl fetched pages but kept none with text: check site.content_selectors and site.index_only "
        f"(start URLs: {', '.join(crawl.start_urls)})"
    )


def robots_violations(pages: pd.DataFrame, robots_texts: dict[str, str], user_agent: str) -> list[str]:
    """URLs in `pages` that the site's robots.txt disallows for `user_agent`."""
    parsers = {origin: Protego.parse(text) for origin, text in robots_texts.items()}
    violations = []
    for url in pages["url"]:
        parts = urlsplit(url)
        parser = parsers.get(f"{parts.scheme}://{parts.netloc}")
        if parser is not None and not parser.can_fetch(url, user_agent):
            violations.append(url)
    return violations


def boilerplate_lines(
    pages: pd.DataFrame, min_chars: int = BOILERPLATE_MIN_CHARS, max_share: float = BOILERPLATE_MAX_SHARE
) -> dict[str, float]:
    """Text lines longer than `min_chars` found in more than `max_share` of the pages (site chrome leaking)."""
    texts = [t for t in pages["text"] if t]
    if len(texts) < 3:
        return {}
    counts = Counter(
        line for text in texts for line in {ln.strip() for ln in text.splitlines()} if len(line) > min_chars
    )
    return {line: n / len(texts) for line, n in counts.most_common() if n / len(texts) > max_share}


def robots_by_origin(crawl: CrawlRecords) -> dict[str, str]:
    return {f"{urlsplit(r['url']).scheme}://{urlsplit(r['url']).netloc}": r["text"] for r in crawl.of_kind("robots")}


@dg.asset(
    group_name="ingest",
    kinds={"scrapy", "parquet"},
    code_version="3",
    metadata=reads_settings("site"),
    check_specs=[
        dg.AssetCheckSpec("non_empty", asset="raw_pages", blocking=True, description="The crawl kept pages."),
        dg.AssetCheckSpec(
            "no_robots_disallowed_url",
            asset="raw_pages",
            blocking=True,
            description="No kept URL is disallowed by the site's robots.txt.",
        ),
        dg.AssetCheckSpec(
            "no_boilerplate_lines",
            asset="raw_pages",
            description=f"No text line over {BOILERPLATE_MIN_CHARS} characters is on more than half the pages "
            "(that would be site chrome leaking into the text).",
        ),
    ],
)
def raw_pages(
    context: dg.AssetExecutionContext, settings: SettingsResource, crawler: ScrapyCrawler
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The person's site as crawled by Scrapy: one row per page with its title and main-content text
    (site chrome removed), HTTP status and HTML hash. Error pages (404, 500) are kept with their status so
    broken links show; non-HTML, off-site, robots-disallowed and duplicate URLs are counted, not kept.
    With `site.start_urls` empty, the embedded sample site is served on 127.0.0.1 and crawled over HTTP."""
    site = settings.for_asset(context).site
    with ExitStack() as stack:
        start_urls = site.start_urls
        if not start_urls:
            local = stack.enter_context(LocalSite(settings.get().resolve_path(site.local_dir), port=site.local_port))
            start_urls = [local.base_url + "/"]
            context.log.info(f"serving {site.local_dir} at {local.base_url} for the crawl")
        crawl = crawler.crawl(site, start_urls, on_progress=context.log.info)

    frame, summary = build_raw_pages(crawl, site)
    if summary.pages == 0:
        raise CrawlError(explain_empty_crawl(crawl, site.user_agent))
    ok_pages = frame[frame["status"] < 400]
    context.log.info(
        f"crawl kept {summary.pages} pages; skipped {dict(summary.skipped)}; errors {dict(summary.errors)}"
    )

    yield content_output(
        frame,
        {
            **summary.as_metadata(),
            "start_urls": dg.MetadataValue.json(start_urls),
            "finish_reason": crawl.finish_reason,
            "words": dg.MetadataValue.int(int(ok_pages["text"].str.split().str.len().sum())),
            "pages_preview": dg.MetadataValue.md(markdown_preview(ok_pages[["url", "title", "text"]], rows=10)),
        },
        version_of=["url", "title", "text", "status"],
    )
    yield dg.AssetCheckResult(check_name="non_empty", passed=summary.pages > 0, metadata={"pages": summary.pages})
    violations = robots_violations(ok_pages, robots_by_origin(crawl), site.user_agent)
    yield dg.AssetCheckResult(
        check_name="no_robots_disallowed_url",
        passed=not violations,
        metadata={"violations": dg.MetadataValue.json(violations[:20])},
    )
    leaked = boilerplate_lines(ok_pages)
    yield dg.AssetCheckResult(
        check_name="no_boilerplate_lines",
        passed=not leaked,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "lines": dg.MetadataValue.json({line[:120]: round(share, 2) for line, share in list(leaked.items())[:20]})
        },
    )
