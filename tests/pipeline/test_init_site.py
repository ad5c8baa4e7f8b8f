"""`mebot init URL` against real local sites on 127.0.0.1: the settings file and golden stub it writes, its
refusals (bad URL, unreachable site, a robots.txt that disallows mebot), and `mebot run` with the file it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mebot.assets.evaluation.golden import load_golden
from mebot.pipeline.init_site import (
    InitError,
    normalized_start_url,
    persona_name_from_html,
    robots_verdict,
    same_site_pages,
)
from mebot.resources.local_site import LocalSite
from mebot.resources.settings import load_settings
from tests.sites import free_port, write_small_site


def _mebot(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def _init(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    out, golden = tmp_path / "my-site.yaml", tmp_path / "golden" / "my-site.yaml"
    return _mebot("init", url, "--out", str(out), "--golden", str(golden), "--timeout", "5", *extra)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://jo.example", "https://jo.example/"),
        ("http://127.0.0.1:8765/blog/", "http://127.0.0.1:8765/blog/"),
        (" https://jo.example/#top ", "https://jo.example/"),
    ],
)
def test_start_urls_get_a_path_and_lose_their_fragment(url, expected):
    assert normalized_start_url(url) == expected


@pytest.mark.parametrize("url", ["jo.example", "ftp://jo.example/", "https://", "mailto:jo@jo.example", ""])
def test_a_url_that_is_not_http_is_refused_with_an_example(url):
    with pytest.raises(InitError, match=r"is not an http\(s\) URL; write it like https://"):
        normalized_start_url(url)


@pytest.mark.parametrize(
    ("html", "name", "source"),
    [
        (
            '<head><meta name="author" content="Jo Bloggs"><meta property="og:site_name" content="X"></head>',
            "Jo Bloggs",
            "author",
        ),
        ('<head><meta property="og:site_name" content="Jo Bloggs"><title>Home | X</title></head>', "Jo Bloggs", "og"),
        ("<head><title>Home | Renwick's Notebook</title></head>", "Renwick", "title"),
        ("<head><title>Posts - Jo Bloggs</title></head>", "Jo Bloggs", "title"),
        ("<head><title>Jo Bloggs</title></head>", "Jo Bloggs", "title"),
        ("<body><p>no title</p></body>", "jo.example", "host"),
        ("", "jo.example", "host"),
    ],
)
def test_the_persona_name_comes_from_og_site_name_then_the_title_then_the_host(html, name, source):
    found, where = persona_name_from_html(html, "jo.example")
    assert (found, source in where) == (name, True)


def test_golden_stub_pages_are_same_site_links_other_than_the_start_page_and_listings():
    html = (
        '<a href="/">Home</a><a href="/about/">About me</a><a href="https://elsewhere.example/x">x</a>'
        '<a href="/cv.pdf">CV</a><a href="/posts/a/">A</a><a href="/posts/a/#c">again</a><a href="mailto:j@x">m</a>'
        '<a href="/tags/cycling/">Cycling</a><a href="/page/2/">Older</a>'
    )
    assert same_site_pages(html, "https://jo.example/") == (("/about/", "About me"), ("/posts/a/", "A"))


@pytest.mark.parametrize(
    ("robots", "allowed"),
    [
        ("", True),
        ("User-agent: *\nDisallow: /private/\n", True),
        ("User-agent: *\nDisallow: /\n", False),
        ("User-agent: mebot\nDisallow: /\n", False),
        ("User-agent: otherbot\nDisallow: /\n", True),
    ],
)
def test_robots_verdict_is_what_the_crawl_obeys(robots, allowed):
    assert robots_verdict(robots, "https://jo.example/", "mebot/0.1 (personal-site Q&A bot)") is allowed


def test_init_writes_settings_and_a_golden_stub_and_mebot_run_crawls_the_site_with_them(tmp_path):
    site_dir = write_small_site(tmp_path / "site", posts=2)
    with LocalSite(site_dir, port=free_port()) as site:
        base = site.base_url
        result = _init(f"{base}/", tmp_path)
        assert result.returncode == 0, result.stderr
        assert "robots.txt allows the crawl" in result.stdout
        assert f"--config {tmp_path / 'my-site.yaml'} run" in result.stdout  # the next commands

        settings = load_settings(tmp_path / "my-site.yaml")
        assert settings.site.start_urls == [f"{site.base_url}/"]
        assert settings.persona.name == "Test Site"  # the title "Home | Test Site"
        assert settings.site.obey_robots_txt and settings.site.download_delay >= 1.0
        assert settings.eval.golden_path == ""  # until the person fills the stub in

        golden = load_golden(tmp_path / "golden" / "my-site.yaml")
        assert len(golden.questions) == 5 and golden.site == f"{site.base_url}/"
        assert [q.answerable for q in golden.questions] == [True] * 4 + [False]
        assert golden.questions[0].source == "/about/"  # an About page first

        # The run: the crawl only (raw_pages), the stage the written file drives; the stages after it read no
        # setting `init` writes, and they need the models (the full tier's whole-graph run covers them).
        env = {"MEBOT_DATA_DIR": str(tmp_path / "data"), "MEBOT_DAGSTER_HOME": str(tmp_path / "home")}
        run = _mebot("--config", str(tmp_path / "my-site.yaml"), "run", "--select", "raw_pages", env=env, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pages = pd.read_parquet(tmp_path / "data" / "raw_pages.parquet")
    crawled = {url.removeprefix(base) for url in pages["url"]}
    assert {"/about/", "/posts/post-0/", "/posts/post-1/"} <= crawled
    assert "/private/" not in crawled  # robots.txt obeyed


def test_init_refuses_a_site_whose_robots_txt_disallows_mebot_and_writes_nothing(tmp_path):
    site_dir = write_small_site(tmp_path / "site", posts=1)
    (site_dir / "robots.txt").write_text("User-agent: *\nDisallow: /\n", encoding="utf-8")
    with LocalSite(site_dir, port=free_port()) as site:
        base = site.base_url
        result = _init(f"{base}/", tmp_path)
    assert result.returncode == 2
    assert f"{base}/robots.txt disallows crawling {base}/ for mebot" in result.stderr
    assert not (tmp_path / "my-site.yaml").exists() and not (tmp_path / "golden").exists()


def test_init_says_when_the_site_cannot_be_reached(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/"
    result = _init(url, tmp_path)
    assert result.returncode == 2
    assert f"mebot init: cannot reach {url}" in result.stderr and "check the address" in result.stderr
    assert not (tmp_path / "my-site.yaml").exists()


def test_init_says_when_the_start_page_is_an_http_error(tmp_path):
    site_dir = write_small_site(tmp_path / "site", posts=1)
    with LocalSite(site_dir, port=free_port()) as site:
        result = _init(f"{site.base_url}/no-such-page/", tmp_path)
    assert result.returncode == 2
    assert "answered HTTP 404; give the address of a page that loads" in result.stderr


def test_init_refuses_a_bad_url_before_asking_anything(tmp_path):
    result = _init("your-site.example", tmp_path)
    assert result.returncode == 2
    assert "'your-site.example' is not an http(s) URL" in result.stderr


def test_init_never_overwrites_a_settings_file_without_force(tmp_path):
    (tmp_path / "my-site.yaml").write_text("persona: {name: Me}\n", encoding="utf-8")
    site_dir = write_small_site(tmp_path / "site", posts=1)
    with LocalSite(site_dir, port=free_port()) as site:
        base = site.base_url
        refused = _init(f"{base}/", tmp_path)
        assert refused.returncode == 2 and "already exists; pass --force" in refused.stderr
        assert (tmp_path / "my-site.yaml").read_text(encoding="utf-8") == "persona: {name: Me}\n"
        forced = _init(f"{base}/", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_settings(tmp_path / "my-site.yaml").site.start_urls == [f"{base}/"]


@pytest.mark.full  # the real embedding model builds the index
def test_the_bot_of_a_site_set_up_by_init_answers_from_that_site(tmp_path):
    site_dir = write_small_site(tmp_path / "site", posts=2)
    env = {"MEBOT_DATA_DIR": str(tmp_path / "data"), "MEBOT_DAGSTER_HOME": str(tmp_path / "home")}
    config = str(tmp_path / "my-site.yaml")
    with LocalSite(site_dir, port=free_port()) as site:
        base = site.base_url
        assert _init(f"{base}/", tmp_path).returncode == 0
        run = _mebot("--config", config, "run", "--select", "*vector_index", env=env, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    question = "What is the number for topic 1 paragraph 2?"
    answer = _mebot("--config", config, "ask", "--model", "extractive", "--json", question, env=env, timeout=300)
    assert answer.returncode == 0, answer.stderr
    reply = json.loads(answer.stdout)
    assert "1014" in reply["answer"]  # facts_paragraphs: 1000 + 2 * 7, stated on /posts/post-1/ only
    assert reply["sources"][0]["url"] == f"{base}/posts/post-1/"


def test_init_starts_the_crawl_where_the_start_pages_redirect_leads(tmp_path):
    site_dir = write_small_site(tmp_path / "site", posts=2)  # its _redirects: /old/ -> /posts/post-1/
    with LocalSite(site_dir, port=free_port()) as site:
        base = site.base_url
        result = _init(f"{base}/old/", tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{base}/posts/post-1/ answers (redirected from {base}/old/)" in result.stdout
    assert load_settings(tmp_path / "my-site.yaml").site.start_urls == [f"{base}/posts/post-1/"]
