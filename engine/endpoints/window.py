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
  it *probes*: it enlarges itself by a small step (1/32 of its capacity) and grants the
  step at once; when a request granted after the step has succeeded the step is kept and
  the next one is twice as large. A 429 that answers a step takes the capacity back to
  before it, plus the units of the step that answers already proved, and marks the
  window as below where the 429 came. Against a one-second window this costs a few 429s;
  against a minute window the burst is found in about eleven round trips.
- **Probing again**: a bucket can only be too small after it sat full (a busy bucket
  never fills, and then its size does not matter, only its rate), so the bucket counts
  what its refill spills while full (``TokenBudget.spilled``): the units a server with a
  larger window may have banked, the *credit*. A 429 empties it. Once it holds the
  smallest step's worth times a backoff, the next burst that holds senders back probes
  again: steps from 1/32 of the capacity, doubling, never beyond the credit and, once a
  429 said where the window ends, never beyond half the way there (a bisection). Each
  failed probe doubles the backoff (up to a ceiling's worth of quiet), a kept step resets
  it; so a window that grew is found after the next quiet spell, a 429 from a transient
  (another tenant) does not pin the burst, and a one-second window draws ever fewer 429s.
- **Too large**: a 429 that answers no step but comes while the burst of a full bucket is
  being spent places the window (what went through since the bucket was full, less the
  refill since) and the capacity goes 1/64 below it, never below half the starting one: a
  window that shrank costs one burst's 429s (at most the requests in flight).

Headers are untrusted: a value that is not a finite number in range (or a duration
:func:`~engine.endpoints.retry.parse_duration` reads) is ignored, and whatever they say,
the bucket stays within :class:`~engine.endpoints.budget.TokenBudget`'s ceiling: never more
than ``max_burst_seconds`` of the configured rate at once, refilled at the configured rate.
A hostile server can therefore at most make the client send its configured rate with a burst
of ``max_burst_seconds``, or pause it for one bucket's refill; never unlimited, never stalled.
Its 429s can shrink the burst to half the starting bucket, never the rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .budget import TokenBudget
from .retry import header_number, lower_keys, parse_duration

__all__ = (
    "READ_GAP",
    "RateHeaders",
    "WindowLearner",
    "has_rate_headers",
    "parse_rate_headers",
    "rate_headers_of",
)

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


_REMAINING = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")


def rate_headers_of(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """``headers`` with lower-case names if they name a ``remaining`` count (the one header
    :func:`parse_rate_headers` needs before anything else), else None: what every bucket's
    learner reads, worked out once per response. Most servers send none, and then no bucket
    parses anything."""
    if not headers:
        return None
    headers = lower_keys(headers)
    a, b = _REMAINING
    return headers if a in headers or b in headers else None


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
            usable headers, ``"probing"`` while it learns from 429s (at first, and again
            after a quiet spell: see :meth:`probe`), ``"settled"`` in between (after a 429,
            or once the capacity reached its ceiling).
    """

    __slots__ = (
        "_backoff",
        "_base",
        "_credit",
        "_episode",
        "_failed",
        "_floor",
        "_hi",
        "_history",
        "_last",
        "_next",
        "_ok",
        "_over",
        "_pending",
        "budget",
        "closed",
        "kind",
        "mode",
    )

    def __init__(self, budget: TokenBudget, kind: Kind) -> None:
        self.budget = budget
        self.kind: Kind = kind
        self.closed = 0.0
        self.mode = "unknown"
        # Probing: the next step's size, the mark a success must pass to confirm the step
        # outstanding (None when none is), and per step of this round of probing (its first
        # mark, the capacity before it, the units it added).
        self._next = budget.capacity / 32.0
        self._pending: float | None = None
        self._history: list[tuple[float, float, float]] = []
        # What 429s taught: `_hi` a capacity the window is below (inf: none known);
        # `_failed` the last failed step (its first mark, the capacity before it, the mark
        # of its first 429) for the successes still on their way; `_backoff` how many
        # smallest steps' worth of quiet the next round of probing waits for (doubling per
        # failed probe); `_episode` the grant count at the last 429 handled (the 429s of
        # requests granted before it belong to the same episode).
        self._floor = budget.capacity / 2.0  # the smallest capacity a 429 can shrink it to
        self._hi = math.inf
        self._failed: tuple[float, float, float] | None = None
        self._backoff = 1.0
        self._episode = -1.0
        self._over = False  # the episode's first 429 was a burst's overshoot
        self._ok = -1.0  # the highest mark of a success so far
        # Credit: what the server may hold beyond our level (a bound), `_credit` plus what
        # our bucket spilled since `_base` (its spill count then). A fresh server is full:
        # infinite until the first 429 (which empties both).
        self._credit = math.inf
        self._base = budget.spilled
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

    @property
    def credit(self) -> float:
        """Units the server may hold beyond the bucket's level (a bound): infinite before the
        first 429, then what the bucket spilled (sat full) since the last 429, less the
        probe steps granted from it; as of now."""
        self.budget.level()  # refilled to now: the spill count is current
        return self._credit + self.budget.spilled - self._base

    @property
    def upper(self) -> float:
        """A capacity the server's window is below, learned from 429s (inf: none known)."""
        return self._hi

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
        if not ok or self.mode not in ("probing", "settled"):
            return
        if mark > self._ok:
            self._ok = mark
        failed = self._failed
        if failed is not None and failed[0] < mark < failed[2]:
            self._lift(failed, mark)
        if self._pending is not None and mark > self._pending:
            # a request granted after the step succeeded: keep it
            self._pending = None
            self._backoff = 1.0
            if self.budget.capacity >= self._hi:
                self._hi = math.inf  # the window grew (or the 429 that said so was a fluke)
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

    def rate_limited(self, mark: float | None, granted_at: float | None = None) -> None:
        """A 429 for the request with ``mark``, granted at clock time ``granted_at`` (None:
        unknown).

        Without headers: the level drops to zero (the server has nothing left) and so does
        the credit; probing stops. The first 429 of an episode (for a request granted after
        the previous episode's first 429) that answers a probe step takes the capacity back
        to before the step and marks the window as below where the 429 came
        (:attr:`upper`); one that answers no step but a burst from a full bucket shrinks the
        capacity below what the server let through since (never below the starting
        capacity). Either doubles the quiet the next round of probing waits for."""
        budget = self.budget
        if self.mode == "headers":
            return  # with headers, the 429's own counts say where we are
        budget.level()  # refilled: the spill count is current
        m = self.granted if mark is None else mark
        if m > self._episode:
            self._episode = self.granted
            failed = self._fail(m)
            self._over = (
                self._credit != math.inf
                and granted_at is not None
                and self._overshot(m, granted_at)
            )
            if self._over and not failed:
                self._backoff = min(2.0 * self._backoff, 2.0**40)
            self._credit, self._base = 0.0, budget.spilled
        elif self._failed is not None and self._failed[0] < m < self._failed[2]:
            start, prior, _ = self._failed  # a later 429 of the failed step: lower bound
            self._failed = (start, prior, m)
            self._hi = min(self._hi, prior + (m - start))
        elif self._over and granted_at is not None:
            self._overshot(m, granted_at)  # a 429 of the same burst, granted earlier
        if self.mode in ("probing", "unknown"):
            self.mode = "settled"  # the window is no larger than the bucket is now
        self._pending = None
        budget.sync(min(budget.level(), 0.0))

    def _fail(self, m: float) -> bool:
        """If the 429 with mark ``m`` answers a probe step of this round (one of the step's
        own units, or any request after the step before a success confirmed it), undo the
        step; whether it did."""
        history = self._history
        k = len(history) - 1
        while k >= 0 and history[k][0] >= m:
            k -= 1
        if k < 0:
            return False
        start, prior, grown = history[k]
        latest_open = k == len(history) - 1 and self._pending is not None
        if m > start + grown and not latest_open:
            return False
        self._hi = min(self._hi, prior + (m - start))
        self._failed = (start, prior, m)
        self.budget.resize(prior)
        if start < self._ok < m:  # units of the step already known to have gone through
            self._lift(self._failed, self._ok)
        self._backoff = min(2.0 * self._backoff, 2.0**40)
        self._history = []
        return True

    def _overshot(self, m: float, granted_at: float) -> bool:
        """A 429 for a request granted while the burst of a full bucket was being spent
        (within one bucket's refill time of it being full).

        The bucket was full at ``budget.full_at`` with ``full_mark`` granted; the server
        refused the units up to ``m`` although it had refilled for ``granted_at - full_at``
        seconds since: it held less than ``m - full_mark`` less that refill then. Had its
        window been larger than the bucket, it would not have been emptier than it; so if
        that is not above the bucket (by more than the clocks' jitter, 1/32), the server was
        full and that is a bound on its window: the capacity goes 1/64 below it (a margin: a
        bucket the very size of the server's draws a 429 now and then), never below half
        the starting capacity."""
        budget = self.budget
        prior = budget.capacity
        since = granted_at - budget.full_at
        if not since <= prior / budget.rate:
            return False  # not full within a bucket's refill (or never): no burst to place
        bound = m - budget.full_mark - budget.rate * max(0.0, since)
        if not bound <= prior + prior / 32.0 or prior <= self._floor:
            return False  # not a burst the server could not hold: no news about the window
        bound = min(bound, prior)  # (within 1/32 above: timing, not news; call it the bucket)
        self._hi = min(self._hi, max(bound, self._floor))
        budget.resize(max(self._floor, bound - bound / 64.0))
        return True

    def _lift(self, failed: tuple[float, float, float], mark: float) -> None:
        """A success for a unit of the failed step granted before its first 429: the window
        holds at least the units up to it (the capacity grows; the level does not)."""
        start, prior, _ = failed
        proven = prior + (mark - start)
        if proven > self.budget.capacity:
            self.budget.resize(min(proven, self._hi))

    def probe(self, need: float = 0.0) -> None:
        """With no step outstanding and senders held back (or a request of ``need`` units
        that does not fit), grant the next step, if there is credit for it.

        At first (a fresh server's bucket is full) steps start at 1/32 of the capacity and
        double with each success. After a 429 a new round starts once the bucket has spilled
        (sat full) the smallest step's worth times the backoff: only then may the server hold
        more than the bucket (a busy bucket never fills, and its size does not matter). In
        a round, steps again start at 1/32 of the capacity and double, but never beyond the
        credit, and once a 429 said where the window ends, never beyond half the way there
        (a bisection: at least one unit, or ``need``)."""
        mode = self.mode
        if mode != "probing" and mode != "settled":
            return
        budget = self.budget
        if mode == "probing":
            if self._pending is not None:
                return
        elif self._credit + budget.spilled - self._base < min(
            budget.capacity / 32.0 * self._backoff, budget.max_capacity
        ):
            return
        if budget.capacity >= budget.max_capacity:
            self.mode = "settled"
            return
        if not (budget.waiting or (need and not budget.fits(need))):
            return
        if mode == "settled":  # a new round
            self._next = budget.capacity / 32.0
            self._history = []
        step = self._step(need)
        if step is None:
            self.mode = "settled"  # no credit left for a step that could tell anything
            return
        prior, start = budget.capacity, self.granted  # before grow() serves the waiters
        grown = budget.grow(step)
        if grown <= 0:
            return
        self.mode = "probing"
        self._history.append((start, prior, grown))
        self._pending = start + grown
        self._credit -= grown
        self._next = 2.0 * step
        self._failed = None

    def _step(self, need: float) -> float | None:
        """The next step's size within the credit and the bisection; None when too small."""
        budget = self.budget
        step = max(self._next, need)
        if self._hi != math.inf:
            step = min(step, max(need, 1.0, (self._hi - budget.capacity) / 2.0))
        step = min(step, self._credit + budget.spilled - self._base)
        return step if step > 0 and step >= need else None
