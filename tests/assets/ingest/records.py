"""Hand-made crawl records (what the Scrapy crawler writes) for the tests of build_raw_pages: pages, skips, errors,
and the paths a built frame kept."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mebot.resources.crawler import CrawlRecords
from mebot.resources.settings import SiteSettings

SITE = SiteSettings(download_delay=0)
FETCHED_AT = "2024-05-01T12:00:00+00:00"


def page(url: str, html: str, status: int = 200, start: bool = False, referer: str = "") -> dict[str, Any]:
    return {
        "kind": "page",
        "url": url,
        "requested_url": url,
        "status": status,
        "content_type": "text/html",
        "referer": referer,
        "fetched_at": FETCHED_AT,
        "start": start,
        "html": html,
    }


def post(path: str, title: str, text: str, canonical: str | None = None) -> str:
    head = f'<link rel="canonical" href="{canonical}">' if canonical else ""
    return (
        f"<html><head>{head}<title>{title} | Site</title></head><body><article><h1>{title}</h1>"
        f"<p>{text}</p></article><footer>chrome</footer></body></html>"
    )


def skipped(url: str, reason: str, start: bool = False) -> dict[str, Any]:
    return {
        "kind": "skipped",
        "url": url,
        "reason": reason,
        "referer": "",
        "start": start,
        "fetched_at": FETCHED_AT,
    }


def error(url: str, reason: str, start: bool = False) -> dict[str, Any]:
    return {
        "kind": "error",
        "url": url,
        "reason": reason,
        "detail": "boom",
        "referer": "",
        "start": start,
        "fetched_at": FETCHED_AT,
    }


def records(*items: dict[str, Any]) -> CrawlRecords:
    return CrawlRecords(start_urls=["http://site.test/"], records=list(items), finish_reason="finished")


def paths_of(frame: pd.DataFrame, status: int | None = None) -> set[str]:
    rows = frame if status is None else frame[frame["status"] == status]
    return {"/" + url.split("/", 3)[3] for url in rows["url"]}
