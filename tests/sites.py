"""Small generated websites for tests, served over real HTTP on 127.0.0.1 by mebot.resources.local_site."""

from __future__ import annotations

import socket
from pathlib import Path

from mebot.resources.local_site import StaticSiteHandler

CHROME_TOP = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} | Test Site</title>
<link rel="canonical" href="{path}"><script>window.dataLayer = [];</script><style>body{{margin:0}}</style></head>
<body><header class="site-header"><a href="/">Test Site</a>
<nav><a href="/">Home</a> <a href="/about/">About</a></nav></header>
<main id="content"><article class="post"><h1>{title}</h1><div class="post-body">"""
CHROME_BOTTOM = """</div></article>
<section class="related-posts"><h2>Related posts</h2><ul>{related}</ul></section>
<section class="comments" id="comments"><h2>Comments</h2><p>Be the first to leave a comment on this post.</p></section>
</main><aside class="sidebar"><p>I write about gardening, trains and the occasional recipe from my kitchen.</p></aside>
<footer class="site-footer"><p>Copyright 2024 Test Person, all rights reserved.</p>
<a href="/private/">Drafts</a> <a href="https://example.org/elsewhere">Elsewhere</a></footer></body></html>"""


def page_html(path: str, title: str, body: str, links: list[str] = ()) -> str:
    related = "".join(f'<li><a href="{link}">{link}</a></li>' for link in links)
    return CHROME_TOP.format(title=title, path=path) + body + CHROME_BOTTOM.format(related=related)


def facts_paragraphs(topic: str, n: int = 3) -> str:
    return "".join(
        f"<p>Fact {i} about {topic}: the number for {topic} paragraph {i} is {1000 + i * 7}. "
        f"I still think {topic} is underrated, and I wrote this in {2020 + i}.</p>"
        for i in range(n)
    )


def write_page(site: Path, path: str, html: str) -> None:
    target = site / path.strip("/") / "index.html" if path.endswith("/") else site / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")


def write_small_site(site: Path, posts: int = 4) -> Path:
    """A home page, an about page, `posts` posts, a robots-disallowed page, a PDF, a redirect and a 404 link."""
    slugs = [f"/posts/post-{i}/" for i in range(posts)]
    home_links = "".join(f'<p><a href="{s}">Post {i}</a></p>' for i, s in enumerate(slugs))
    write_page(
        site,
        "/",
        page_html(
            "/",
            "Home",
            home_links
            + '<p><a href="/about/">About me</a> <a href="/cv.pdf">CV</a> <a href="/old/">Old blog</a> '
            + f'<a href="{slugs[0]}?utm_source=home">again</a> <a href="/posts/missing/">gone</a></p>',
        ),
    )
    write_page(site, "/about/", page_html("/about/", "About", facts_paragraphs("the author")))
    for i, slug in enumerate(slugs):
        write_page(site, slug, page_html(slug, f"Post {i}", facts_paragraphs(f"topic {i}"), slugs[:2]))
    write_page(site, "/private/", page_html("/private/", "Private", "<p>This unpublished draft must stay private.</p>"))
    (site / "cv.pdf").write_bytes(b"%PDF-1.4\n% test\n")
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n", encoding="utf-8")
    (site / "_redirects").write_text(f"/old/ {slugs[-1]} 301\n", encoding="utf-8")
    (site / "404.html").write_text("<html><body><h1>Not found</h1></body></html>", encoding="utf-8")
    return site


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ErrorRoutesHandler(StaticSiteHandler):
    """Adds paths that answer with a fixed HTTP status (`/status/500/`) to the static site."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self._send_body(code, "text/html", f"<html><body><h1>error {code}</h1></body></html>".encode())
            return
        super().do_GET()
