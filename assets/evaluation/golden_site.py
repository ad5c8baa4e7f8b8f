"""Which site a golden file belongs to, and whether the crawl is of that site (pure functions).

A golden file names its site (`site:` at the top: a start URL, a host, or for a site served from a folder, the
folder: `data/sample_site`). Asked of another site's bot, its questions would be scored as if that bot should know
Tobias Renwick's favourite film; so when the crawl is of another site (`golden_site_mismatch`), or none of the
pages its answers come from were crawled (`sources_not_crawled`), the golden assets are skipped with a note that
says so, `mebot check-config` warns, and the leaderboard has no golden columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from mebot.assets.evaluation.golden import GoldenFileError, GoldenSet, _page_path, load_golden
from mebot.resources.settings import PROJECT_ROOT, Settings


def _host(value: str) -> str:
    """The host of a URL or of a bare host name ("Example.com:8080/x" -> "example.com"), without "www."."""
    parts = urlsplit(value if "://" in value else f"//{value}")
    host = (parts.hostname or "").lower()
    return host.removeprefix("www.")


def _looks_like_url_or_host(site: str, base: Path) -> bool:
    if "://" in site:
        return True
    first = site.split("/")[0]
    return "." in first and not first.startswith(".") and not (base / site).exists()


def describe_crawl(start_urls: Sequence[str], local_dir: str) -> str:
    """What the settings crawl, in words: the start URLs, or the local folder served when there are none."""
    return ", ".join(start_urls) if start_urls else f"the local folder {local_dir}"


def golden_site_mismatch(
    golden_site: str | None, start_urls: Sequence[str], local_dir: str, root: Path | None = None
) -> str | None:
    """Why the golden file's `site` is not the crawled site, or None when it is (or the file names no site).

    With start URLs, the site matches when its host is one of theirs ("www." ignored); without, the crawl is of
    `local_dir` (relative to `root`), and the site must be that folder."""
    if golden_site is None:
        return None
    crawl = describe_crawl(start_urls, local_dir)
    base = root or Path.cwd()
    if start_urls:
        hosts = {_host(url) for url in start_urls}
        if _looks_like_url_or_host(golden_site, base) and _host(golden_site) in hosts:
            return None
    elif not _looks_like_url_or_host(golden_site, base):
        if (base / golden_site).resolve() == (base / local_dir).resolve():
            return None
    return f"it names the site {golden_site!r}, but the crawl is of {crawl}"


def sources_not_crawled(golden: GoldenSet, crawled_urls: Iterable[str]) -> str | None:
    """Why none of the golden answers can come from the crawl: not one answerable question's source page is among
    `crawled_urls` (None when at least one is, or when no question names a source)."""
    wanted = {_page_path(q.source) for q in golden.questions if q.source}
    if not wanted:
        return None
    crawled = {_page_path(url) for url in crawled_urls}
    if wanted & crawled:
        return None
    return f"none of its {len(wanted)} source pages was crawled ({len(crawled)} pages were)"


def skipped_note(path: str, reason: str) -> str:
    """The note golden assets carry when they skip a golden file of another site."""
    return (
        f"golden questions skipped: {path}: {reason}. Point eval.golden_path at this site's golden file "
        '(or set it to "" for none)'
    )


def golden_file_warning(settings: Settings) -> str | None:
    """What `mebot check-config` warns about the golden file: one that cannot be read, one that names no site,
    or one of another site than the crawl's (its questions will be skipped); None when there is nothing to say."""
    if not settings.eval.golden_path.strip():
        return None
    path = settings.resolve_path(settings.eval.golden_path)
    try:
        golden = load_golden(path)
    except GoldenFileError as exc:
        return f"eval.golden_path: {exc}"
    if golden.site is None:
        return (
            f"eval.golden_path: {path} names no site (add `site:` with your start URL or host at its top), so it "
            "cannot be checked against the crawl"
        )
    mismatch = golden_site_mismatch(golden.site, settings.site.start_urls, settings.site.local_dir, PROJECT_ROOT)
    return f"eval.golden_path: {skipped_note(str(path), mismatch)}" if mismatch else None


__all__ = ["golden_file_warning", "describe_crawl", "golden_site_mismatch", "skipped_note", "sources_not_crawled"]
