"""Endpoint stage: learning the window over which a server enforces its per-minute limits.

A provider's "500 requests per minute" may be a bucket that holds a whole minute (send 500 at
once, then 8 a second) or one that holds a second (8 at once, then 8 a second): the same
average rate, very different bursts. A client bucket of one second gives up a minute-window
server's burst; a client bucket of a minute draws 429 storms from a one-second-window one.
:class:`WindowLearner` sizes one client bucket (requests or tokens) to the server's window:

- **From headers** (OpenAI's ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and
  ``x-ratelimit-reset-*``, read by :func:`parse_rate_headers`): ``remaining`` plus what the
  server refills in ``reset`` seconds is a full bucket, so the client's capacity becomes
  ``remaining + reset * limit / 60``, and its level becomes the server's ``remaining``, plus
  what refilled since the request was granted, less what was granted after it.
- **From 429s**, when a server sends no such headers: while the bucket holds senders back,
  it *probes*: it enlarges itself by a small step (1/32 of the starting capacity) and grants
  the step at once; when a request granted after the step has succeeded the step is kept and
  the next one is twice as large. The first 429 that follows a step takes the capacity back
  to before that step and ends the probing. Against a one-second window this costs a few
  429s (one to four in ``benchmarks/bench_ratelimit.py``); against a minute window most of
  the minute's burst is found in about eleven round trips.

Headers are untrusted: a value that is not a finite number in range (or a duration
:func:`~engine.endpoints.retry.parse_duration` reads) is ignored, and whatever they say,
the bucket stays within :class:`~engine.endpoints.budget.TokenBudget`'s ceiling: never more
than ``max_burst_seconds`` of the configured rate at once, refilled at the configured rate.
A hostile server can therefore at most make the client send its configured rate with a burst
of ``max_burst_seconds``, or pause it for one bucket's refill; never unlimited, never stalled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .budget import TokenBudget
from .retry import header_number, lower_keys, parse_duration

__all__ = ("READ_GAP", "RateHeaders", "WindowLearner", "has_rate_headers", "parse_rate_headers")

_MAX_COUNT = 1e15
"""A limit or remaining count above this is junk, not a count."""
_MAX_RESET = 86_400.0
"""Seconds: a reset beyond a day is junk."""
READ_GAP = 0.01
"""Seconds: successful answers with headers are read at most this often per bucket (each
is a lower bound on the server's level; at a thousand answers a second reading them all
would cost more CPU than the freshness is worth). Failed answers are always read."""

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What a response's ``x-ratelimit-*`` headers say about one limit (requests or tokens).

    Attributes:
        limit: ``x-ratelimit-limit-*``: the per-minute limit, or None when absent or junk.
        remaining: ``x-ratelimit-remaining-*``: units left now.
        reset: ``x-ratelimit-reset-*``: seconds until the bucket is full again.
    """

    limit: float | None
    remaining: float
    reset: float


def _count(value: str | None) -> float | None:
    return header_number(value, _MAX_COUNT)


def parse_rate_headers(headers: Mapping[str, str] | None, kind: Kind) -> RateHeaders | None:
    """The ``x-ratelimit-*-{kind}`` headers of a response, validated; None unless both
    ``remaining`` and ``reset`` are usable.

    ``reset`` may be a Go-style duration (``1s``, ``6m0s``, ``20ms``) or plain seconds.
    Junk (negative, NaN, infinities, garbage, above 1e15 or a day) is treated as absent.
    Header names are matched case-insensitively.
    """
    if not headers:
        return None
    headers = lower_keys(headers)
    remaining = _count(headers.get(f"x-ratelimit-remaining-{kind}"))
    if remaining is None:
        return None
    reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
    if reset is None or reset > _MAX_RESET:
        return None
    limit = _count(headers.get(f"x-ratelimit-limit-{kind}"))
    return RateHeaders(limit=limit if limit else None, remaining=remaining, reset=reset)


def has_rate_headers(headers: Mapping[str, str] | None) -> bool:
    """Whether a response carries any usable ``x-ratelimit-*`` counts."""
    return parse_rate_headers(headers, "requests") is not None or (
        parse_rate_headers(headers, "tokens") is not None
    )


class WindowLearner:
    """Sizes one client bucket (requests or tokens) to the window the server enforces.

    The bucket counts the units it grants (``TokenBudget.taken``); each permit remembers the
    count right after its own grant (its *mark*) and the clock time of the grant, so that a
    response can be placed among the grants around it.

    Example::

        learner = WindowLearner(budget, "requests")
        mark, at = await budget.reserve(1), now   # a permit for one request was granted
        ...                                       # its response arrives
        learner.closed += 1                       # no longer in flight
        learner.answered(headers, ok=True, mark=mark, granted_at=at, now=now)

    Attributes:
        budget: the bucket it sizes.
        kind: ``"requests"`` or ``"tokens"``: which headers it reads.
        closed: units of requests answered, or over without an answer, or never sent (the
            limiter adds to it, an answer before it is reported here); the rest of the
            bucket's ``taken`` is in flight.
        mode: ``"unknown"`` until the first answer, ``"headers"`` once a response carried
            usable headers, ``"probing"`` while it learns from 429s, ``"settled"`` after the
            429 that ended the probing (or once the capacity reached its ceiling).
    """

    __slots__ = ("_history", "_last", "_next", "_pending", "budget", "closed", "kind", "mode")

    def __init__(self, budget: TokenBudget, kind: Kind) -> None:
        self.budget = budget
        self.kind: Kind = kind
        self.closed = 0.0
        self.mode = "unknown"
        # Probing: the next step's size, the mark a success must pass to confirm the step
        # outstanding (None when none is), and per step (its first mark, capacity before).
        self._next = budget.capacity / 32.0
        self._pending: float | None = None
        self._history: list[tuple[float, float]] = []
        self._last = -math.inf  # clock time of the last answer whose headers were read

    def __repr__(self) -> str:
        return (
            f"<WindowLearner {self.kind} {self.mode} capacity={self.budget.capacity:g} "
            f"window={self.window():.3g}s>"
        )

    @property
    def granted(self) -> float:
        """Units the bucket granted so far."""
        return self.budget.taken

    @property
    def in_flight(self) -> float:
        """Units granted and neither answered nor over yet."""
        return max(0.0, self.budget.taken - self.budget.abandoned - self.closed)

    def window(self) -> float:
        """The window the bucket is sized to now, seconds of the configured rate."""
        return self.budget.capacity / self.budget.rate

    # ------------------------------------------------------------------ feedback

    def answered(
        self,
        headers: Mapping[str, str] | None,
        *,
        ok: bool,
        mark: float,
        granted_at: float,
        now: float,
    ) -> None:
        """A response to a request granted at ``granted_at`` (with ``mark``) arrived."""
        if self.mode == "headers" and ok and now - self._last < READ_GAP:
            return
        info = parse_rate_headers(headers, self.kind)
        if info is not None:
            self.mode = "headers"
            self._pending = None
            self._last = now
            self._from_headers(info, ok=ok, mark=mark, granted_at=granted_at, now=now)
            return
        if self.mode == "unknown" and ok and not has_rate_headers(headers):
            self.mode = "probing"  # the server says nothing: learn from its 429s
        if self.mode != "probing" or not ok:
            return
        if self._pending is not None and mark > self._pending:
            self._pending = None  # a request granted after the step succeeded: keep it
        self.probe()

    def _from_headers(
        self, info: RateHeaders, *, ok: bool, mark: float, granted_at: float, now: float
    ) -> None:
        """Size the bucket to ``remaining + reset * rate``; move its level only when it is
        surely off: below what the server surely still has, or above what it can have.

        The server counted ``remaining`` when it admitted the request, some time between
        its grant and now: since then it refilled up to ``now - granted_at`` seconds of
        rate, and it charges what was granted after this request. So it holds at least
        ``remaining - after - in_flight`` now (requests still unanswered, which it may have
        admitted after this one although they were granted before) and at most
        ``remaining + refill - after`` (a failed request: at most the lower figure). A level
        between the two is left alone, so the jitter of each request's way to the server is
        not mistaken for news.
        """
        budget = self.budget
        # the server's refill rate: its stated per-minute limit, else our own rate
        rate = info.limit / 60.0 if info.limit else budget.rate
        capacity = min(budget.max_capacity, max(1.0, info.remaining + info.reset * rate))
        if abs(capacity - budget.capacity) > 0.5 + 1e-3 * budget.capacity:  # not rounding
            budget.resize(capacity)
        after = max(0.0, self.granted - mark)  # granted after this request: not counted yet
        low = info.remaining - after - self.in_flight
        high = min(info.remaining + max(0.0, now - granted_at) * rate, budget.capacity) - after
        level = budget.level()
        if level < low:
            budget.sync(low)
        elif level > (high if ok else low):
            budget.sync(high if ok else low)

    def rate_limited(self, mark: float | None) -> None:
        """A 429 for the request with ``mark`` (None: unknown): undo the probe step it
        answers and stop probing; the level drops to zero (the server has nothing left)."""
        budget = self.budget
        if self.mode == "probing":
            m = self.granted if mark is None else mark
            steps = [prior for start, prior in self._history if start < m]
            if steps:
                budget.resize(steps[-1])
        if self.mode in ("probing", "unknown"):
            self.mode = "settled"  # the window is no larger than the bucket is now
            self._pending = None
        if self.mode != "headers":  # with headers, the 429's own counts say where we are
            budget.sync(min(budget.level(), 0.0))

    def probe(self, need: float = 0.0) -> None:
        """While probing, with no step outstanding and senders held back (or a request of
        ``need`` units that does not fit), grant the next step."""
        budget = self.budget
        if self.mode != "probing" or self._pending is not None:
            return
        if budget.capacity >= budget.max_capacity:
            self.mode = "settled"
            return
        if not (budget.waiting or (need and not budget.fits(need))):
            return
        prior = budget.capacity
        step = max(self._next, need)
        grown = budget.grow(step)
        if grown <= 0:
            return
        self._history.append((self.granted, prior))
        self._pending = self.granted + grown
        self._next = 2.0 * step
