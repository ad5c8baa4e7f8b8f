"""pipeline/server/limits.py: who the client is (forwarded headers believed only from trusted proxies), rate-limit
buckets that expire and stay bounded, the daily answer cap."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from mebot.pipeline.server.limits import ClientIdentity, DailyAnswers, TokenBuckets, forwarded_chain, parse_address

DAY = 86_400.0


def headers(*pairs: tuple[str, str]) -> Headers:
    return Headers(raw=[(name.lower().encode(), value.encode()) for name, value in pairs])


@pytest.mark.parametrize(
    "trusted, peer, sent, client",
    [
        # no trusted proxies (the default): every forwarded header is ignored, whoever sends it
        ([], "127.0.0.1", [("X-Forwarded-For", "1.2.3.4")], "127.0.0.1"),
        ([], "127.0.0.1", [("Forwarded", "for=1.2.3.4")], "127.0.0.1"),
        # a header from an address that is not a trusted proxy is ignored
        (["10.0.0.1"], "203.0.113.9", [("X-Forwarded-For", "1.2.3.4")], "203.0.113.9"),
        # from a trusted proxy: the address it saw, read from the right
        (["127.0.0.1"], "127.0.0.1", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4"),
        (["127.0.0.1"], "127.0.0.1", [("X-Forwarded-For", "6.6.6.6, 1.2.3.4")], "1.2.3.4"),  # 6.6.6.6: client-made
        (["10.0.0.0/8"], "10.0.0.2", [("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 10.0.0.7")], "1.2.3.4"),
        (["10.0.0.0/8"], "10.0.0.2", [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "10.0.0.5")], "1.2.3.4"),
        # RFC 7239, quoted IPv6 with a port; Forwarded wins over X-Forwarded-For
        (["::1"], "::1", [("Forwarded", 'for="[2001:db8::7]:4711";proto=https')], "2001:db8::7"),
        (["127.0.0.1"], "127.0.0.1", [("Forwarded", "for=1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")], "1.2.3.4"),
        # nothing usable: the last address known (the proxy itself)
        (["127.0.0.1"], "127.0.0.1", [("X-Forwarded-For", "not-an-address")], "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", [], "127.0.0.1"),
    ],
)
def test_the_client_address_believes_forwarded_headers_only_from_trusted_proxies(trusted, peer, sent, client):
    assert ClientIdentity(trusted).address(peer, headers(*sent)) == client


def test_ipv6_clients_are_keyed_by_their_64_network_and_ipv4_by_address():
    identity = ClientIdentity()
    assert identity.key("2001:db8:1:2:aaaa::1", headers()) == identity.key("2001:db8:1:2:bbbb::9", headers())
    assert identity.key("2001:db8:1:2::1", headers()) == "2001:db8:1:2::/64"
    assert identity.key("192.0.2.1", headers()) == "192.0.2.1"
    assert identity.key(None, headers()) == "unknown"


@pytest.mark.parametrize(
    "value, address",
    [("1.2.3.4", "1.2.3.4"), ("1.2.3.4:80", "1.2.3.4"), ("[::1]:80", "::1"), ('"[::1]"', "::1"), ("unknown", None)],
)
def test_parse_address(value: str, address: str | None):
    parsed = parse_address(value)
    assert (str(parsed) if parsed else None) == address


def test_forwarded_chain_reads_every_for_in_order():
    sent = headers(("Forwarded", "for=1.1.1.1;by=x, for=2.2.2.2"), ("Forwarded", "for=3.3.3.3"))
    assert forwarded_chain(sent) == ["1.1.1.1", "2.2.2.2", "3.3.3.3"]


def test_a_bucket_allows_the_burst_then_limits_then_refills():
    buckets = TokenBuckets(per_minute=60, burst=3)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(1.0)
    assert buckets.take("a", now=1.0) == 0.0
    assert buckets.take("b", now=1.0) == 0.0  # its own bucket


def test_buckets_stay_bounded_under_100000_addresses_and_a_limited_client_stays_limited():
    buckets = TokenBuckets(per_minute=60, burst=2, max_clients=10_000)
    for _ in range(3):
        buckets.take("198.51.100.1", now=0.0)
    for n in range(100_000):
        buckets.take(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", now=0.0)
        if n % 1000 == 0:
            assert buckets.take("198.51.100.1", now=0.0) > 0  # still limited while the crowd calls
    assert len(buckets) <= 10_000


def test_buckets_expire_once_refilled():
    buckets = TokenBuckets(per_minute=60, burst=2)
    for n in range(5000):
        buckets.take(f"client-{n}", now=0.0)
    buckets.take("late", now=buckets.refill_s + 0.1)
    assert len(buckets) == 1


def test_daily_answers_cap_each_client_per_utc_day_and_stay_bounded():
    daily = DailyAnswers(per_day=2, max_clients=1000)
    assert [daily.take("a", now=DAY * 3) for _ in range(3)] == [True, True, False]
    assert daily.take("b", now=DAY * 3)
    assert daily.take("a", now=DAY * 4)  # a new UTC day
    for n in range(100_000):
        daily.take(f"client-{n}", now=DAY * 4)
    assert len(daily) <= 1000


def test_daily_answers_off_when_zero():
    daily = DailyAnswers(per_day=0)
    assert all(daily.take("a") for _ in range(100))
    assert len(daily) == 0
