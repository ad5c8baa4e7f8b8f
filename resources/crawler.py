"""Scrapy crawls, each in its own subprocess (see resources/scrapy_crawl.py for why)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from mebot.resources.network_scope import is_public_address, resolve_host
from mebot.resources.settings import PROJECT_ROOT, SiteSettings

Resolver = Callable[[str], list[str]]


class CrawlProcessError(RuntimeError):
    """The crawl subprocess died; the message carries the end of its error output."""


@dataclass
class CrawlRecords:
    """Everything one crawl saw, as plain records (kind: page, skipped, error, robots)."""

    start_urls: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = ""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]


def start_urls_are_public(start_urls: list[str], resolve: Resolver = resolve_host) -> bool:
    """Whether every start URL's host resolves to public addresses only (an unresolvable host counts as public:
    its crawl fails on its own)."""
    for url in start_urls:
        try:
            addresses = resolve(urlsplit(url).hostname or "")
        except (OSError, UnicodeError):
            continue
        if any(not is_public_address(address) for address in addresses):
            return False
    return True


def crawl_job(site: SiteSettings, start_urls: list[str], resolve: Resolver = resolve_host) -> dict[str, Any]:
    """The spider's instructions. Non-public addresses are refused when the start URLs are public hosts, unless
    `site.allow_private_addresses`: a site on loopback or an intranet is crawled where it is."""
    allowed = site.allowed_domains or sorted({urlsplit(u).hostname or "" for u in start_urls})
    return {
        "refuse_private_addresses": not site.allow_private_addresses and start_urls_are_public(start_urls, resolve),
        "start_origins": sorted({f"{urlsplit(u).scheme}://{urlsplit(u).netloc}".lower() for u in start_urls}),
        "start_urls": start_urls,
        "allowed_domains": [d.lower() for d in allowed],
        "allow": site.allow,
        "deny": site.deny,
        "max_pages": site.max_pages,
        "download_delay": site.download_delay,
        "obey_robots_txt": site.obey_robots_txt,
        "user_agent": site.user_agent,
        "max_page_bytes": site.max_page_bytes,
        "timeout_s": site.timeout_s,
    }


class ScrapyCrawler(dg.ConfigurableResource):
    """Runs a real Scrapy crawl over HTTP and returns what it fetched."""

    python_executable: str = sys.executable

    def crawl(
        self,
        site: SiteSettings,
        start_urls: list[str],
        on_progress: Callable[[str], None] = print,
        resolve: Resolver = resolve_host,
    ) -> CrawlRecords:
        """`resolve` (host -> addresses) decides whether the start URLs are public hosts (see `crawl_job`)."""
        with tempfile.TemporaryDirectory(prefix="mebot-crawl-") as tmp:
            job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "records.jsonl"
            job_path.write_text(json.dumps(crawl_job(site, start_urls, resolve)), encoding="utf-8")
            finish_reason = self._run(job_path, out_path, on_progress)
            records = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines() if line]
        return CrawlRecords(start_urls=start_urls, records=records, finish_reason=finish_reason)

    def _run(self, job_path: Path, out_path: Path, on_progress: Callable[[str], None]) -> str:
        command = [self.python_executable, "-m", "mebot.resources.scrapy_crawl", str(job_path), str(out_path)]
        finish_reason = ""
        with subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            for line in process.stdout:
                if line.startswith("PROGRESS "):
                    counts = json.loads(line.removeprefix("PROGRESS "))
                    on_progress(
                        f"crawl: {counts['pages']} pages, {counts['skipped']} skipped, "
                        f"{counts['errors']} errors {counts['url']}".rstrip()
                    )
                elif line.startswith("FINISHED "):
                    finish_reason = json.loads(line.removeprefix("FINISHED "))["reason"]
            stderr = process.stderr.read()
            process.wait()
        if process.returncode != 0 or not out_path.exists():
            tail = "\n".join(stderr.strip().splitlines()[-15:])
            raise CrawlProcessError(f"the crawl process failed (exit code {process.returncode}):\n{tail}")
        return finish_reason
