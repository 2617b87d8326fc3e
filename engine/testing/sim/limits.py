"""The simulated server's enforced rate limits: RPM and TPM token buckets, 429s and headers."""

from __future__ import annotations

import math
from collections.abc import Callable

from aiohttp import web

from .responses import error_response, format_duration

__all__ = ("Bucket", "RateLimits")


class Bucket:
    """A token bucket: ``capacity`` units refilled at ``rate`` per second, full at start.

    Attributes:
        limit: the advertised per-minute limit.
        rate: refill, units per second.
        capacity: the largest burst.
        level: units available now.
        updated: clock reading of the last refill.
    """

    __slots__ = ("capacity", "level", "limit", "rate", "updated")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute * burst_seconds / 60.0)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what the time since the last refill earned, up to the capacity."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` is available (0 if it is now); call after :meth:`refill`."""
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate

    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate


class RateLimits:
    """The requests and tokens buckets of one server (either may be absent), charged at
    admission and never refunded.

    Attributes:
        requests: the RPM bucket, or None for no limit.
        tokens: the TPM bucket, or None for no limit.
        headers: whether responses carry ``x-ratelimit-*`` headers.
    """

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        burst_seconds: float,
        *,
        headers: bool,
        clock: Callable[[], float],
    ) -> None:
        now = clock()
        self.requests = Bucket(rpm, burst_seconds, now) if rpm else None
        self.tokens = Bucket(tpm, burst_seconds, now) if tpm else None
        self.headers = headers
        self._clock = clock

    def admit(self, tokens: int) -> tuple[web.Response | None, dict[str, str]]:
        """Charge one request and ``tokens``; returns (a 429 or None, rate-limit headers)."""
        rb, tb = self.requests, self.tokens
        if rb is None and tb is None:
            return None, {}
        now = self._clock()
        wait_r = wait_t = 0.0
        if rb is not None:
            rb.refill(now)
            wait_r = rb.wait_for(1)
        if tb is not None:
            tb.refill(now)
            if tokens > tb.capacity:
                return self._too_large(tb, tokens), {}
            wait_t = tb.wait_for(tokens)
        if max(wait_r, wait_t) > 0:
            return self._limited(wait_r, wait_t, tokens), {}
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= tokens
        return None, self.limit_headers()

    def limit_headers(self) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` of the configured limits."""
        if not self.headers:
            return {}
        headers = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = f"{bucket.limit:.0f}"
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_in())
        return headers

    def _too_large(self, bucket: Bucket, tokens: int) -> web.Response:
        return error_response(
            429,
            f"Request too large: {tokens} tokens requested, the token limit is "
            f"{bucket.limit:g} per minute with a burst of {bucket.capacity:g}.",
            type_="tokens",
            code="rate_limit_exceeded",
            headers=self.limit_headers(),
        )

    def _limited(self, wait_r: float, wait_t: float, tokens: int) -> web.Response:
        wait = max(wait_r, wait_t)
        kind = "requests" if wait_r >= wait_t else "tokens"
        bucket = self.requests if kind == "requests" else self.tokens
        assert bucket is not None
        headers = {
            "retry-after": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
            **self.limit_headers(),
        }
        message = (
            f"Rate limit reached for {kind} per min (RPM/TPM): Limit {bucket.limit:g}, "
            f"Used {bucket.capacity - bucket.level:.0f}, Requested "
            f"{1 if kind == 'requests' else tokens}. Please try again in "
            f"{format_duration(wait)}."
        )
        return error_response(429, message, type_=kind, code="rate_limit_exceeded", headers=headers)
