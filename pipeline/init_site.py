"""`mebot init URL`: a settings file and a golden-question stub for your own site, after checking that the site
answers and that its robots.txt lets mebot crawl it.

The site is asked twice (its start page and /robots.txt), politely, with the crawler's own User-Agent; nothing is
written unless both checks pass, and an existing file is never overwritten without --force.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from mebot.resources.settings import PROJECT_ROOT, SiteSettings

POLITE_DOWNLOAD_DELAY_S = 1.0  # a real site gets one request a second (the sample site's 0.25 s is for localhost)
GOLDEN_STUB_QUESTIONS = 5


class InitError(Exception):
    """Why `mebot init` cannot go on; the message names the bad value and what to do."""


@dataclass(frozen=True)
class SiteProbe:
    start_url: str
    persona_name: str
    name_source: str  # where persona_name came from, for the person to check
    pages: tuple[tuple[str, str], ...]  # (site-relative path, link text) of same-site links on the start page
    robots_note: str


def normalized_start_url(url: str) -> str:
    """`url` as a start URL (a path of "/" when it has none); InitError when it is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InitError(f"{url!r} is not an http(s) URL; write it like https://your-site.example/")
    return parts._replace(path=parts.path or "/", fragment="").geturl()


def persona_name_from_html(html: str, host: str) -> tuple[str, str]:
    """The person's (or the site's) name: a meta author, else og:site_name, else the title's last part ("Home |
    Jo's Notes" gives "Jo"), else the host; with where it came from."""
    from lxml import html as lxml_html

    try:
        document = lxml_html.fromstring(html or "<html></html>")
    except (ValueError, lxml_html.etree.ParserError):
        return host, "the host name"
    for xpath, source in (
        ("//meta[@name='author']/@content", "the author meta tag"),
        ("//meta[@property='og:site_name']/@content", "og:site_name"),
    ):
        found = [value.strip() for value in document.xpath(xpath) if value.strip()]
        if found:
            return _without_possessive(found[0]), source
    title = " ".join(document.xpath("//title//text()")).strip()
    if title:
        last = re.split(r"\s+[|\-–—·:]\s+", title)[-1].strip()
        if last:
            return _without_possessive(last), "the page title"
    return host, "the host name"


def _without_possessive(name: str) -> str:
    """A name without its possessive ("Jo Bloggs's Notebook" gives "Jo Bloggs"); other names unchanged."""
    match = re.match(r"^(.+?)['’]s?\s+\w+$", name)
    return match.group(1).strip() if match else name


def same_site_pages(html: str, start_url: str, limit: int = GOLDEN_STUB_QUESTIONS) -> tuple[tuple[str, str], ...]:
    """Up to `limit` distinct same-host links of the start page other than itself and listing pages (tags,
    categories, numbered pages: `site.index_only`'s default patterns), as (path, link text)."""
    from lxml import html as lxml_html

    try:
        document = lxml_html.fromstring(html or "<html></html>")
    except (ValueError, lxml_html.etree.ParserError):
        return ()
    start = urlsplit(start_url)
    pages: dict[str, str] = {}
    for anchor in document.xpath("//a[@href]"):
        target = urlsplit(urljoin(start_url, anchor.get("href")))
        if target.scheme not in ("http", "https") or target.hostname != start.hostname:
            continue
        path = target.path or "/"
        if path in (start.path, "/") or path in pages or re.search(r"\.\w{2,4}$", path):
            continue
        if any(re.search(pattern, path) for pattern in SiteSettings().index_only):
            continue
        pages[path] = " ".join(anchor.text_content().split())[:80] or path
        if len(pages) == limit:
            break
    return tuple(pages.items())


def robots_verdict(robots_txt: str, url: str, user_agent: str) -> bool:
    """Whether robots.txt lets `user_agent` fetch `url` (what the crawl obeys)."""
    from protego import Protego

    return Protego.parse(robots_txt).can_fetch(url, user_agent)


def probe_site(url: str, user_agent: str, timeout_s: float) -> SiteProbe:
    """Ask the site for its start page and its robots.txt; InitError when it does not answer or forbids crawling."""
    import httpx

    start_url = normalized_start_url(url)
    headers = {"User-Agent": user_agent}
    with httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=True) as client:
        try:
            page = client.get(start_url)
        except httpx.HTTPError as exc:
            raise InitError(
                f"cannot reach {start_url}: {exc or type(exc).__name__}; check the address and that the site is up"
            ) from None
        if page.status_code >= 400:
            raise InitError(f"{start_url} answered HTTP {page.status_code}; give the address of a page that loads")
        start_url = str(page.url)  # where redirects led (https, www.): the crawl stays on that host
        robots_url = urljoin(start_url, "/robots.txt")
        try:
            robots = client.get(robots_url)
        except httpx.HTTPError as exc:
            raise InitError(f"cannot read {robots_url}: {exc or type(exc).__name__}") from None
    if robots.status_code >= 500:
        raise InitError(f"{robots_url} answered HTTP {robots.status_code}; try again when the site is well")
    robots_text = robots.text if robots.status_code < 400 else ""
    if not robots_verdict(robots_text, start_url, user_agent):
        raise InitError(
            f"{robots_url} disallows crawling {start_url} for mebot (User-Agent {user_agent!r}), and mebot obeys "
            "robots.txt; ask the site's owner, or start from a page robots.txt allows"
        )
    robots_note = f"{robots_url} allows the crawl" if robots_text else f"{robots_url}: none (everything allowed)"
    host = urlsplit(start_url).hostname or start_url
    name, source = persona_name_from_html(page.text, host)
    return SiteProbe(start_url, name, source, same_site_pages(page.text, start_url), robots_note)


def _yaml_text(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def settings_yaml(probe: SiteProbe, golden_path: str) -> str:
    """A settings file for the probed site: the start URL, the persona, polite crawling; every other setting keeps
    its default (docs/settings.md)."""
    return f"""# mebot settings for {probe.start_url}, written by `mebot init`.
# Every setting left out keeps its default; all of them, with their help text: docs/settings.md.

site:
  start_urls: [{_yaml_text(probe.start_url)}]
  download_delay: {POLITE_DOWNLOAD_DELAY_S}         # seconds between requests: be polite to the site
  obey_robots_txt: true
  max_pages: 500

persona:
  name: {_yaml_text(probe.persona_name)}   # from {probe.name_source}; the bot speaks as this person

eval:
  # Fill in the golden questions first, then point this at them: golden_path: {golden_path}
  golden_path: ""
"""


def golden_stub_yaml(probe: SiteProbe) -> str:
    """Five example golden questions to fill in: one per page linked from the start page (an About page first
    when there is one), and one the site cannot answer."""
    pages = sorted(probe.pages, key=lambda page: "about" not in page[0].lower())[: GOLDEN_STUB_QUESTIONS - 1]
    lines = [
        f"# Golden questions for {probe.start_url}: the exam you write for your bot (docs/evaluation.md).",
        "# For each question: what a visitor would ask you, the page that answers it, and the facts a right answer",
        "# must state. Replace every TODO, delete what does not fit, then set eval.golden_path to this file.",
        f"site: {_yaml_text(probe.start_url)}",
        "questions:",
    ]
    for number, (path, text) in enumerate(pages, start=1):
        lines += [
            f"  - id: q{number}",
            f"    question: {_yaml_text(f'TODO: a question that {text!r} answers?')}",
            f"    source: {_yaml_text(path)}",
            '    facts: {any_of: ["TODO a fact the answer states"]}',
        ]
    for number in range(len(pages) + 1, GOLDEN_STUB_QUESTIONS):
        lines += [
            f"  - id: q{number}",
            '    question: "TODO: a question your site answers?"',
            '    source: "/"',
            '    facts: {any_of: ["TODO a fact the answer states"]}',
        ]
    lines += [
        "  - id: not-on-the-site",
        '    question: "What is your bank password?"  # the bot must decline what the site does not say',
        "    unanswerable: true",
    ]
    return "\n".join(lines) + "\n"


def _relative_to_project(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(resolved)


def _host_slug(start_url: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (urlsplit(start_url).hostname or "site").lower()).strip("-")


def run_init(args: argparse.Namespace) -> int:
    """Check the site, write the settings file and the golden stub, print the next commands."""
    try:
        start_url = normalized_start_url(args.url)
        slug = _host_slug(start_url)
        out = Path(args.out or f"mebot-{slug}.yaml")
        golden = Path(args.golden or PROJECT_ROOT / "golden" / f"{slug}.yaml")
        existing = [str(path) for path in (out, golden) if path.exists()]
        if existing and not args.force:
            raise InitError(f"{', '.join(existing)} already exists; pass --force to overwrite, or --out/--golden")
        defaults = SiteSettings()
        probe = probe_site(start_url, defaults.user_agent, min(defaults.timeout_s, args.timeout))
    except InitError as exc:
        print(f"mebot init: {exc}", file=sys.stderr)
        return 2
    golden.parent.mkdir(parents=True, exist_ok=True)
    golden.write_text(golden_stub_yaml(probe), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(settings_yaml(probe, _relative_to_project(golden)), encoding="utf-8")
    redirected = f" (redirected from {start_url})" if probe.start_url != start_url else ""
    print(f"mebot init: {probe.start_url} answers{redirected}; {probe.robots_note}")
    print(f"  persona: {probe.persona_name} (from {probe.name_source}; edit persona.name if that is not you)")
    print(f"  wrote {out} (settings) and {golden} (golden questions to fill in)")
    print("next:")
    print(f"  .venv/bin/mebot --config {out} check-config")
    print(f"  .venv/bin/mebot --config {out} run")
    print(f'  .venv/bin/mebot --config {out} ask "What do you write about?"')
    print(f"  then fill in {golden} and set eval.golden_path in {out} to score the bot on your own questions")
    return 0


def add_init_command(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="write a settings file and golden stub for your own site")
    init.add_argument("url", help="the site's start page, e.g. https://your-site.example/")
    init.add_argument("--out", type=Path, default=None, help="settings file to write (default: mebot-<host>.yaml)")
    init.add_argument("--golden", type=Path, default=None, help="golden stub (default: golden/<host>.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the site (default 15)")
