"""Serves a folder of static pages over real HTTP on 127.0.0.1, the way a static host would, so the sample site
goes through the same Scrapy code path as a real site. Like Netlify-style hosts it reads `_redirects`, serves
`404.html` for missing paths, hides `_`-files, and fills `{{base_url}}` in .txt and .xml files."""

from __future__ import annotations

import errno
import http.server
import logging
import socketserver
import threading
import urllib.parse
from functools import partial
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

BASE_URL_PLACEHOLDER = b"{{base_url}}"
_TEMPLATED_SUFFIXES = {".txt", ".xml"}


def read_redirect_rules(site_dir: Path) -> dict[str, tuple[str, int]]:
    rules_file = site_dir / "_redirects"
    rules: dict[str, tuple[str, int]] = {}
    if not rules_file.is_file():
        return rules
    for number, line in enumerate(rules_file.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
            raise ValueError(f"{rules_file}:{number}: expected 'FROM TO [STATUS]', got {line!r}")
        rules[parts[0]] = (parts[1], int(parts[2]) if len(parts) == 3 else 301)
    return rules


class StaticSiteHandler(http.server.SimpleHTTPRequestHandler):
    redirects: dict[str, tuple[str, int]] = {}
    server_version = "mebot-local-site"

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        if path in self.redirects:
            target, status = self.redirects[path]
            self.send_response(status)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if any(part.startswith("_") for part in path.split("/")):
            self.send_error(404)
            return
        local = Path(self.translate_path(path))
        if local.suffix in _TEMPLATED_SUFFIXES and local.is_file():
            body = local.read_bytes().replace(BASE_URL_PLACEHOLDER, self.base_url().encode())
            content_type = "text/plain" if local.suffix == ".txt" else "application/xml"
            self._send_body(200, f"{content_type}; charset=utf-8", body)
            return
        if self.command == "HEAD":
            super().do_HEAD()
        else:
            super().do_GET()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        not_found_page = Path(self.directory) / "404.html"
        if code == 404 and not_found_page.is_file():
            self._send_body(404, "text/html; charset=utf-8", not_found_page.read_bytes())
            return
        super().send_error(code, message, explain)

    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _send_body(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("local site: " + format, *args)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LocalSite:
    """Context manager: `with LocalSite(folder) as site: crawl(site.base_url + "/")`."""

    def __init__(self, site_dir: Path, port: int = 0, handler: type[StaticSiteHandler] = StaticSiteHandler):
        self.site_dir = Path(site_dir)
        if not (self.site_dir / "index.html").is_file():
            raise FileNotFoundError(f"{self.site_dir} has no index.html; site.local_dir must be a folder of pages")
        self.port = port
        self.handler = handler
        self._server: _Server | None = None

    def __enter__(self) -> LocalSite:
        handler = type("Handler", (self.handler,), {"redirects": read_redirect_rules(self.site_dir)})
        factory = partial(handler, directory=str(self.site_dir))
        try:
            self._server = _Server(("127.0.0.1", self.port), factory)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or self.port == 0:
                raise
            log.warning("port %s is taken; serving %s on a free port (page URLs will differ)", self.port, self.site_dir)
            self._server = _Server(("127.0.0.1", 0), factory)
        threading.Thread(target=self._server.serve_forever, name="local-site", daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        assert self._server is not None, "LocalSite is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
