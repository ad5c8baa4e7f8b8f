"""LocalSite: a folder of static pages served over real HTTP on 127.0.0.1, like a static host would."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mebot.resources.local_site import LocalSite, read_redirect_rules
from tests.sites import page_html, write_page, write_small_site


def fetch(site: LocalSite, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request without following redirects: (status, headers, body)."""
    parts = urlsplit(site.base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    return write_small_site(tmp_path / "site")


def test_serves_index_html_for_directories(small_site: Path) -> None:
    with LocalSite(small_site) as site:
        status, headers, body = fetch(site, "/about/")
        home_status, _, home = fetch(site, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert body == (small_site / "about" / "index.html").read_bytes()
    assert home_status == 200
    assert home == (small_site / "index.html").read_bytes()


def test_directory_without_trailing_slash_redirects_to_it(small_site: Path) -> None:
    with LocalSite(small_site) as site:
        status, headers, _ = fetch(site, "/about")
    assert status == 301
    assert headers["location"] == "/about/"


def test_applies_redirect_rules(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(site_dir, "/", page_html("/", "Home", "<p>home</p>"))
    (site_dir / "_redirects").write_text(
        "# comment line\n\n/old/ /new/ 301\n/moved/ /elsewhere/ 302  # trailing comment\n/default/ /target/\n",
        encoding="utf-8",
    )
    with LocalSite(site_dir) as site:
        old = fetch(site, "/old/")
        moved = fetch(site, "/moved/?q=1")
        default = fetch(site, "/default/")
    assert (old[0], old[1]["location"], old[2]) == (301, "/new/", b"")
    assert (moved[0], moved[1]["location"]) == (302, "/elsewhere/")
    assert (default[0], default[1]["location"]) == (301, "/target/")


@pytest.mark.parametrize(
    "line",
    ["/only-one-part", "/a /b /c /d", "/a /b permanent"],
)
def test_malformed_redirect_rule_is_an_error_naming_the_line(tmp_path: Path, line: str) -> None:
    (tmp_path / "_redirects").write_text(f"/ok/ /fine/ 301\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"_redirects:2: expected 'FROM TO \[STATUS\]'"):
        read_redirect_rules(tmp_path)


def test_no_redirects_file_means_no_rules(tmp_path: Path) -> None:
    assert read_redirect_rules(tmp_path) == {}


def test_substitutes_base_url_in_robots_txt_and_sitemap_xml(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(site_dir, "/", page_html("/", "Home", "<p>home</p>"))
    (site_dir / "robots.txt").write_text("User-agent: *\nSitemap: {{base_url}}/sitemap.xml\n", encoding="utf-8")
    (site_dir / "sitemap.xml").write_text(
        "<urlset><url><loc>{{base_url}}/</loc></url><url><loc>{{base_url}}/about/</loc></url></urlset>",
        encoding="utf-8",
    )
    with LocalSite(site_dir) as site:
        base = site.base_url
        robots = fetch(site, "/robots.txt")
        sitemap = fetch(site, "/sitemap.xml")
    assert robots[0] == 200
    assert robots[1]["content-type"].startswith("text/plain")
    assert robots[2].decode() == f"User-agent: *\nSitemap: {base}/sitemap.xml\n"
    assert int(robots[1]["content-length"]) == len(robots[2])
    assert sitemap[0] == 200
    assert sitemap[1]["content-type"].startswith("application/xml")
    assert sitemap[2].decode() == f"<urlset><url><loc>{base}/</loc></url><url><loc>{base}/about/</loc></url></urlset>"
    assert b"{{base_url}}" not in robots[2] + sitemap[2]


def test_placeholder_is_left_alone_in_html(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(site_dir, "/", "<html><body><p>literal {{base_url}}</p></body></html>")
    with LocalSite(site_dir) as site:
        _, _, body = fetch(site, "/")
    assert b"literal {{base_url}}" in body


def test_serves_404_html_with_status_404(small_site: Path) -> None:
    with LocalSite(small_site) as site:
        status, headers, body = fetch(site, "/no/such/page/")
    assert status == 404
    assert headers["content-type"].startswith("text/html")
    assert body == (small_site / "404.html").read_bytes()


def test_missing_page_without_404_html_is_still_a_404(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    write_page(site_dir, "/", "<html><body>home</body></html>")
    with LocalSite(site_dir) as site:
        status, _, _ = fetch(site, "/missing/")
    assert status == 404


@pytest.mark.parametrize("path", ["/_redirects", "/_drafts/secret.html", "/_drafts/", "/posts/_notes.txt"])
def test_refuses_to_serve_files_starting_with_underscore(small_site: Path, path: str) -> None:
    (small_site / "_drafts").mkdir()
    (small_site / "_drafts" / "secret.html").write_text("secret draft", encoding="utf-8")
    (small_site / "_drafts" / "index.html").write_text("secret index", encoding="utf-8")
    (small_site / "posts" / "_notes.txt").write_text("secret notes", encoding="utf-8")
    with LocalSite(small_site) as site:
        status, _, body = fetch(site, path)
    assert status == 404
    assert b"secret" not in body and b"/old/" not in body


@pytest.mark.parametrize("path", ["/%5Fredirects", "/%5fdrafts/secret.html"])
def test_refuses_percent_encoded_underscore_files(small_site: Path, path: str) -> None:
    (small_site / "_drafts").mkdir()
    (small_site / "_drafts" / "secret.html").write_text("secret draft", encoding="utf-8")
    with LocalSite(small_site) as site:
        status, _, body = fetch(site, path)
    assert status == 404
    assert b"secret" not in body and b"/old/" not in body


def test_head_request_is_refused_for_underscore_files(small_site: Path) -> None:
    with LocalSite(small_site) as site:
        status, _, _ = fetch(site, "/_redirects", method="HEAD")
    assert status == 404


def test_folder_without_index_html_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "about.html").write_text("<p>not an index</p>", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"has no index\.html") as excinfo:
        LocalSite(tmp_path)
    assert str(tmp_path) in str(excinfo.value)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no index\.html"):
        LocalSite(tmp_path / "does-not-exist")


def test_port_zero_picks_a_free_port_and_base_url_uses_it(small_site: Path) -> None:
    with LocalSite(small_site, port=0) as site:
        parts = urlsplit(site.base_url)
        status, _, _ = fetch(site, "/")
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1"
    assert parts.port and parts.port > 0
    assert status == 200


def test_falls_back_to_a_free_port_when_the_port_is_taken(
    tmp_path: Path, small_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_dir = tmp_path / "other"
    write_page(other_dir, "/", "<html><body><p>the other site</p></body></html>")
    with LocalSite(small_site, port=0) as first:
        taken = urlsplit(first.base_url).port
        with caplog.at_level(logging.WARNING, logger="mebot.resources.local_site"):
            with LocalSite(other_dir, port=taken) as second:
                second_port = urlsplit(second.base_url).port
                _, _, second_body = fetch(second, "/")
                _, _, first_body = fetch(first, "/")
    assert second_port != taken
    assert b"the other site" in second_body
    assert first_body == (small_site / "index.html").read_bytes()
    assert any(f"port {taken} is taken" in record.getMessage() for record in caplog.records)


def test_server_stops_on_exit(small_site: Path) -> None:
    site = LocalSite(small_site)
    with site:
        port = urlsplit(site.base_url).port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    with pytest.raises(OSError):
        connection.request("GET", "/")
        connection.getresponse()
    with pytest.raises(AssertionError, match="not running"):
        _ = site.base_url
