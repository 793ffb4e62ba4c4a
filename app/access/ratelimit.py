"""Per-caller request-rate limit (``CXR_RATE_LIMIT``, e.g. ``600/minute``): a token bucket per caller, so
one runaway partner is answered 429 with Retry-After while the others keep their share. Per process: with
CXR_WORKERS > 1 each worker keeps its own buckets."""

from __future__ import annotations

import re
import time
from collections import OrderedDict

from app.errors import ServiceError

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
MAX_CALLERS = 10_000  # buckets kept; the least recently seen caller's bucket is forgotten beyond it


class RateLimitedError(ServiceError):
    code, status = "rate_limited", 429


def parse_rate(text: str) -> tuple[int, float]:
    """``600/minute`` -> (600, 60.0); ValueError saying what a correct value looks like."""
    found = PATTERN.match(text)
    if not found or int(found.group(1)) < 1:
        raise ValueError(f"{text!r} is not a rate: N/second, N/minute or N/hour with N >= 1, e.g. 600/minute")
    return int(found.group(1)), PERIODS[found.group(2)]


class RateLimiter:
    def __init__(self, requests: int, period_s: float) -> None:
        self.capacity = float(requests)
        self.rate = requests / period_s  # tokens per second
        self.text = f"{requests} per {period_s:g} s"
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, last time)

    def check(self, caller: str, now: float | None = None) -> None:
        """Takes one token from the caller's bucket, or raises RateLimitedError with the wait in Retry-After."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(caller, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise RateLimitedError(f"rate limit for caller {caller!r} exceeded ({self.text}); retry in "
                                   f"{max(1, round(wait))} s", retry_after=wait)
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
