"""Who a visitor is, and how much they may ask: the server's defences against strangers (pipeline/server/app.py).

`ClientIdentity` believes a forwarded header only from `serve.trusted_proxies` and keys IPv6 clients by their
/64; `TokenBuckets` and `DailyAnswers` stay bounded however many addresses call; `SecurityHeaders` are the
headers every response carries. What each limit answers: docs/running-in-public.md."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN_CLIENT = "unknown"
MAX_FORWARDED_HOPS = 32  # a longer chain is not a real proxy's

# The page loads its script and style sheet from this server and talks to this server only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """`serve.trusted_proxies` as networks (a bare address is a network of one)."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


def parse_address(value: str) -> Address | None:
    """An address from a header value: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:80`, `"[2001:db8::1]"`."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def forwarded_chain(headers: Any) -> list[str]:
    """The addresses the request passed, the client first: RFC 7239 `Forwarded` (its `for=`), else
    `X-Forwarded-For`. Every header line counts, in order."""
    forwarded = headers.getlist("forwarded")
    if forwarded:
        chain = []
        for element in ",".join(forwarded).split(","):
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    chain.append(value)
        return chain
    return [part for line in headers.getlist("x-forwarded-for") for part in line.split(",")]


class ClientIdentity:
    """The client address of a request (see the module doc)."""

    def __init__(self, trusted_proxies: Iterable[str] = ()):
        self.trusted = parse_networks(trusted_proxies)

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def address(self, peer: str | None, headers: Any) -> str:
        """`peer`: the connecting address (the ASGI scope's client host)."""
        current = parse_address(peer or "")
        if current is None:
            return peer or UNKNOWN_CLIENT
        if not self.trusted or not self.is_trusted(current):
            return str(current)
        for hop in reversed(forwarded_chain(headers)[-MAX_FORWARDED_HOPS:]):
            hop_address = parse_address(hop)
            if hop_address is None:  # "unknown", an obfuscated name: the proxy before it is the last we know
                break
            current = hop_address
            if not self.is_trusted(current):
                break
        return str(current)

    def key(self, peer: str | None, headers: Any) -> str:
        """The rate-limit key: the address, or its /64 network for IPv6."""
        address = self.address(peer, headers)
        parsed = parse_address(address)
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
        return address


class TokenBuckets:
    """Per-client token buckets: `burst` requests at once, refilled at `per_minute` / 60 per second. A bucket
    that has refilled is forgotten (a new one would be the same); at most `max_clients` are kept."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self.refill_s = self.burst / self.rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, updated at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, now: float | None = None) -> float:
        """0 if the request may go ahead (a token is taken), else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        tokens, updated = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # the most recently used last
        self._expire(now)
        return wait

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest, (_, updated) = next(iter(buckets.items()))
            if len(buckets) <= self.max_clients and now - updated < self.refill_s:
                return
            del buckets[oldest]


def utc_day(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


class DailyAnswers:
    """Generated answers per client for the current UTC day; yesterday's counts are dropped at the first call of a
    new day, and at most `max_clients` are kept (the least recently used go first)."""

    def __init__(self, per_day: int, max_clients: int = 100_000):
        self.per_day = per_day
        self.max_clients = max_clients
        self.day = ""
        self._counts: MutableMapping[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    def take(self, client: str, now: float | None = None) -> bool:
        """Whether `client` may have another answer today (counted when it may); always True when off (0)."""
        if self.per_day <= 0:
            return True
        day = utc_day(now)
        if day != self.day:
            self.day, self._counts = day, OrderedDict()
        used = self._counts.pop(client, 0)
        self._counts[client] = min(used + 1, self.per_day)
        while len(self._counts) > self.max_clients:
            del self._counts[next(iter(self._counts))]
        return used < self.per_day


class SecurityHeaders:
    """ASGI middleware: every HTTP response (pages, API, errors, streams) gets SECURITY_HEADERS."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app
        self.extra = [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [header for header in self.extra if header[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
