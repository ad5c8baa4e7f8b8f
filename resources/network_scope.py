"""Which addresses a crawl may reach. A site on loopback or an intranet is crawled where it is; a crawl that starts
at public hosts must not be steered (by a link or a redirect on a page) to the crawling machine itself, its
network or a cloud metadata service: requests to non-public addresses are refused (reason `private_address`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

PRIVATE_ADDRESS = "private_address"
WEB_SCHEMES = frozenset({"http", "https"})


def is_web_url(url: str) -> bool:
    """Only http(s) URLs are crawled, kept or shown as links."""
    return urlsplit(url).scheme.lower() in WEB_SCHEMES


def resolve_host(host: str) -> list[str]:
    """The addresses `host` resolves to (an address literal resolves to itself)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def is_public_address(address: str) -> bool:
    """Whether an address is on the public internet: not loopback, private, link-local (169.254.169.254, the
    cloud metadata service, is link-local), shared, reserved, multicast or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class NetworkScope:
    """Refuses requests to non-public addresses (see the module doc); `resolve` is injectable for tests."""

    def __init__(self, exempt_origins: list[str], resolve: Callable[[str], list[str]] = resolve_host):
        self.exempt_origins = {origin.lower() for origin in exempt_origins}
        self.resolve = resolve
        self._verdicts: dict[str, str | None] = {}

    def refusal(self, url: str) -> str | None:
        """Why `url` must not be requested, or None."""
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}".lower() in self.exempt_origins:
            return None
        host = (parts.hostname or "").lower()
        if host not in self._verdicts:
            try:
                addresses = self.resolve(host)
            except (OSError, UnicodeError):
                addresses = []  # unresolvable: the download fails on its own, as unreachable
            private = [a for a in addresses if not is_public_address(a)]
            self._verdicts[host] = f"{PRIVATE_ADDRESS}: {host} resolves to {private[0]}" if private else None
        return self._verdicts[host]
