"""Waiting politely on a remote endpoint: retry delays (full-jitter backoff, Retry-After) and client-side
requests/tokens-per-minute pacing."""

from __future__ import annotations

import email.utils
import random
import threading
import time

RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
RETRY_AFTER_MAX_S = 300.0  # a Retry-After beyond this is taken as this


def backoff_delay_s(attempt: int, *, base_s: float = RETRY_BASE_S, cap_s: float = RETRY_CAP_S) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] for retry number `attempt` (0-based)."""
    return random.uniform(0.0, min(cap_s, base_s * (2**attempt)))


def retry_after_s(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After in seconds or as a date, or retry-after-ms)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RatePacer:
    """Spaces out work so that at most `per_minute` units start per minute (thread-safe, no bursts).

    `acquire(n)` books n units and sleeps until the previous bookings have had their time: with 120 requests
    per minute, calls start 0.5 s apart. `refund(n)` returns units booked but not used (a call that used fewer
    tokens than estimated).
    """

    def __init__(self, per_minute: float):
        self.seconds_per_unit = 60.0 / per_minute
        self._lock = threading.Lock()
        self._next_free = 0.0  # monotonic time from which new work may start

    def acquire(self, units: float = 1.0) -> float:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + units * self.seconds_per_unit
        wait = start - now
        if wait > 0:
            time.sleep(wait)
        return wait

    def refund(self, units: float) -> None:
        if units <= 0:
            return
        with self._lock:
            self._next_free = max(time.monotonic(), self._next_free - units * self.seconds_per_unit)
