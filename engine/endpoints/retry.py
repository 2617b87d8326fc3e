"""Endpoint stage: the retry rules, the waits a server asks for, and errors by HTTP status.

A failed attempt is retried when :func:`should_retry` says so:

- A wait the server gives (``retry-after-ms``, ``retry-after``, ``x-ratelimit-reset-*``, or
  OpenRouter's ``error.metadata.retry_after_seconds``: :func:`server_wait`) replaces the
  backoff; otherwise full jitter, ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``
  (:func:`backoff_delay`).
- :func:`status_error` picks the :class:`~engine.errors.EndpointError` subclass of an HTTP
  status, and :func:`code_status` reads the status hidden in an error object of a 200 body.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import (
    AuthenticationError,
    ConflictError,
    EndpointError,
    EndpointTimeout,
    RateLimitError,
    RequestRejected,
    ResponseError,
    ServerError,
)

__all__ = (
    "NEVER_RETRY_STATUSES",
    "RETRY_STATUSES",
    "backoff_delay",
    "code_status",
    "header_number",
    "is_in_flight_budget_error",
    "lower_keys",
    "parse_duration",
    "parse_retry_after",
    "retry_after_in_body",
    "server_wait",
    "should_retry",
    "status_error",
)

RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
"""HTTP statuses retried (unless ``x-should-retry: false`` says otherwise)."""
NEVER_RETRY_STATUSES: frozenset[int] = frozenset({400, 401, 403, 404, 422})
"""Statuses never retried by status alone (``x-should-retry: true`` still wins)."""

_MAX_HINT = 86_400.0
"""Seconds: a server-given wait above one day is junk (an epoch, say), not a wait."""

_DUR_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go writes micro as U+00B5
    "μs": 1e-6,  # and sometimes as U+03BC
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_DUR_UNIT = r"(ns|us|µs|μs|ms|s|m|h)"  # ms before m and s
_DUR_PART = re.compile(_DUR_NUM + _DUR_UNIT)
_DUR_FULL = re.compile(f"(?:{_DUR_NUM}{_DUR_UNIT})+")


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1h2m3.5s``, ``12ms``, ``0.5s``) or a bare number.

    Returns None for anything else: empty, negative (``-1``), NaN, infinities, garbage.
    """
    if value is None:
        return None
    s = value.strip()
    if not s:
        return None
    try:
        x = float(s)
    except ValueError:
        pass
    else:
        return x if math.isfinite(x) and x >= 0 else None
    if _DUR_FULL.fullmatch(s) is None:
        return None
    return sum(float(num) * _DUR_UNITS[unit] for num, unit in _DUR_PART.findall(s))


def lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with lower-case names, unless it is already a case-insensitive multidict."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers  # already case-insensitive
    return {k.lower(): v for k, v in headers.items()}


def header_number(value: str | None, high: float) -> float | None:
    """A header's value as a finite number in ``[0, high]``, else None (absent or junk)."""
    if value is None:
        return None
    try:
        x = float(value.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) and 0 <= x <= high else None


def _seconds(value: str | None) -> float | None:
    """A non-negative finite number of seconds, else None."""
    return header_number(value, _MAX_HINT)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait before retrying, or None when it does not say.

    Looked up in order, the first usable value wins:

    1. ``retry-after-ms``: milliseconds (OpenAI).
    2. ``retry-after``: seconds, or an HTTP date compared with ``now`` (Unix time,
       default ``time.time()``); a date in the past means 0.
    3. ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``: durations such as
       ``6m0s`` or ``12ms`` (:func:`parse_duration`). When ``x-ratelimit-remaining-*`` says
       which budget is exhausted (``0``), that budget's reset is used; otherwise the longer.

    Junk (``-1``, empty, garbage, NaN, more than a day) is skipped, so the caller falls back
    to its backoff. Header names are matched case-insensitively.
    """
    h = lower_keys(headers)
    ms = _seconds(h.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    ra = h.get("retry-after")
    if ra is not None:
        secs = _seconds(ra)
        if secs is not None:
            return secs
        try:
            when = parsedate_to_datetime(ra.strip())
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            delta = when.timestamp() - (time.time() if now is None else now)
            if delta <= _MAX_HINT:
                return max(0.0, delta)
    resets: list[float] = []
    exhausted: list[float] = []
    for budget in ("requests", "tokens"):
        d = parse_duration(h.get(f"x-ratelimit-reset-{budget}"))
        if d is None or d > _MAX_HINT:
            continue
        resets.append(d)
        remaining = h.get(f"x-ratelimit-remaining-{budget}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            exhausted.append(d)
    if exhausted:
        return max(exhausted)
    if resets:
        return max(resets)
    return None


def retry_after_in_body(error: Mapping[str, Any] | None) -> float | None:
    """OpenRouter relays an upstream 429's wait as ``error.metadata.retry_after_seconds``."""
    if not error:
        return None
    meta = error.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    v = meta.get("retry_after_seconds")
    if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= _MAX_HINT:
        return float(v)
    return None


def is_in_flight_budget_error(error: Mapping[str, Any] | None) -> bool:
    """Whether a 402 body is OpenRouter's temporary in-flight budget limit (retryable).

    OpenRouter answers 402 both for an exhausted balance or key limit (permanent until someone
    adds credits: never retried) and for ``in_flight_budget_exhausted``: the running and
    recently completed paid requests fill the account's in-flight spending budget; it clears
    as they settle and comes with ``Retry-After``. We detect the temporary case from the body:
    ``error.metadata.limit_source == "openrouter_in_flight_budget"``, or an error code/type
    naming ``in_flight_budget``, or a message mentioning an "in-flight"/"in flight" budget.
    ``weight_exceeds_budget`` (one request larger than the whole budget) is permanent.
    """
    if not error:
        return False
    meta = error.get("metadata")
    if isinstance(meta, Mapping) and meta.get("limit_source") == "openrouter_in_flight_budget":
        return True
    words = " ".join(
        str(error.get(k) or "") for k in ("code", "type", "message") if error.get(k)
    ).lower()
    if "weight_exceeds_budget" in words:
        return False
    return "in_flight_budget" in words or bool(re.search(r"in[- ]flight\b.*budget", words))


def code_status(error: Mapping[str, Any] | None) -> int | None:
    """The HTTP-like status inside an error object (``code: 429`` or ``"rate_limit_exceeded"``)."""
    if not error:
        return None
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str):
        c = code.strip().lower()
        if c.isdecimal():  # not isdigit: int() rejects superscripts such as '²'
            return int(c)
        if "rate_limit" in c or "too_many_requests" in c:
            return 429
        if "overloaded" in c:
            return 529
        if c in ("server_error", "internal_error", "internal_server_error"):
            return 500
        if c in ("service_unavailable", "unavailable"):
            return 503
        if "timeout" in c:
            return 408
    return None


def should_retry(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    error: Mapping[str, Any] | None = None,
) -> bool:
    """The retry rule. ``status`` None means no response (connection error or timeout).

    1. ``x-should-retry: true|false`` decides first, whatever the status.
    2. Connection errors and timeouts are retried.
    3. 408, 409, 425, 429, 500, 502, 503, 504, 529 are retried (:data:`RETRY_STATUSES`).
    4. 402 only when it is OpenRouter's in-flight budget limit (:func:`is_in_flight_budget_error`).
    5. Everything else, notably 400, 401, 403, 404 and 422, is not.
    """
    if headers:
        xs = lower_keys(headers).get("x-should-retry")
        if xs is not None:
            v = xs.strip().lower()
            if v == "true":
                return True
            if v == "false":
                return False
    if status is None:
        return True
    if status == 402:
        return is_in_flight_budget_error(error)
    return status in RETRY_STATUSES


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter backoff after failed attempt ``attempt`` (1-based).

    ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``.
    """
    return rng.uniform(0.0, min(cap, base * 2.0 ** (attempt - 1)))


def server_wait(headers: Mapping[str, str] | None, error: Mapping[str, Any] | None) -> float | None:
    """The wait a failed response asks for: its headers first, then its error body."""
    wait = parse_retry_after(headers) if headers is not None else None
    return retry_after_in_body(error) if wait is None else wait


def status_error(
    status: int, message: str, attempt: int, endpoint: str, retryable: bool
) -> EndpointError:
    """The EndpointError subclass for an HTTP status."""
    cls: type[EndpointError]
    if status == 429:
        cls = RateLimitError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 408:
        cls = EndpointTimeout
    elif status in (409, 425):
        cls = ConflictError
    elif status >= 500:
        cls = ServerError
    elif 400 <= status < 500:
        cls = RequestRejected
    else:
        cls = ResponseError
    return cls(message, status=status, attempt=attempt, endpoint=endpoint, retryable=retryable)
