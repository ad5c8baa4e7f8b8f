"""A bounded load test on 127.0.0.1: 200 retrieval-heavy requests, 20 at a time, from one client."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.helpers import SAMPLE_SITE_QUESTIONS
from tests.pipeline.server.helpers import SERVE_SETTINGS

REQUESTS = 200
CONCURRENCY = 20


async def hammer(url: str) -> tuple[list[httpx.Response], float]:
    questions = list(SAMPLE_SITE_QUESTIONS)
    semaphore = asyncio.Semaphore(CONCURRENCY)
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")  # its own rate-limit bucket
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, transport=transport, limits=limits, timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            async with semaphore:
                if i % 10 == 9:
                    return await client.get("/healthz")
                return await client.get("/api", params={"query": questions[i % len(questions)], "retrieval_only": 1})

        started = time.monotonic()
        responses = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        return responses, time.monotonic() - started


def test_load_has_no_5xx_honours_the_rate_limit_and_the_server_stays_up(server):
    responses, elapsed = asyncio.run(hammer(server.url))
    statuses = [r.status_code for r in responses]
    assert len(statuses) == REQUESTS
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 429}
    api_ok = sum(1 for r in responses if r.status_code == 200 and r.url.path == "/api")
    # a token bucket lets through at most burst + rate x elapsed requests
    allowed = SERVE_SETTINGS["rate_limit_burst"] + SERVE_SETTINGS["rate_limit_per_minute"] / 60 * elapsed
    assert SERVE_SETTINGS["rate_limit_burst"] <= api_ok <= allowed + 1, (api_ok, allowed, elapsed)
    limited = [r for r in responses if r.status_code == 429]
    api_requests = sum(1 for r in responses if r.url.path == "/api")
    assert api_ok + len(limited) == api_requests
    # Requests beyond what the bucket allows in the time taken are limited; on a machine slow enough that the
    # bucket kept up, none is due (the 429 itself is pinned down in test_api's rate-limit test).
    if api_requests > allowed + 1:
        assert limited, f"{api_requests} requests in {elapsed:.1f} s, none limited"
    assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
    assert all(r.url.path == "/api" for r in limited)  # health checks are not limited
    for r in responses:
        if r.status_code == 200 and r.url.path == "/api":
            assert r.json()["sourceDocuments"]
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/healthz", timeout=30).json()["ready"] is True
