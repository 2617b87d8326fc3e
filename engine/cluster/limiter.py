"""One rate limit for every shard: the limiter actor's buckets and gate, and the shards' leases.

The provider's RPM and TPM limits hold for all of a run's requests, whichever shard sends
them. One Ray actor (:class:`SharedBuckets` inside :func:`limiter_actor`) holds the requests
and tokens buckets (``limits.rpm``, ``limits.tpm``, each ``limits.burst_seconds`` deep) and
the 429 gate. A round trip to it costs milliseconds, so a shard does not ask it per request:
its :class:`LeasedLimiter` (what the shard's :class:`~engine.endpoints.client.Client` takes
its permits from, a :class:`~engine.endpoints.limits.LimiterProtocol`) leases permits in
chunks of ``cluster.lease_requests`` and gives back what it has not used after
``cluster.lease_ttl`` seconds, or at once when a 429 pauses everyone.

**429s.** A shard that sees a 429 closes its own gate for the server's wait (the client's
usual ``on_rate_limited``) and tells the actor, which closes the shared gate until the same
deadline (a later one wins; without a wait, the default backoff doubles per episode) and
wakes every shard's watcher (:meth:`SharedBuckets.watch`, a long poll): each closes its
local gate for what is left of the pause and returns its unused permits. No lease is granted
while the shared gate is closed.

**The actor dying.** Leases raise while the actor is gone; a shard then grants nothing:
its requests wait (admission stops) and it retries every ``_RETRY`` seconds until Ray has
restarted the actor (``max_restarts=-1``), whose buckets start as a fresh limiter's do
(``burst_seconds`` of rate), so its return is never an unlimited burst. Permits a shard held
when the actor died are spent; nothing is granted beyond them.

The actor's buckets and gate are the ones a local :class:`~engine.endpoints.limits.Limiter`
uses (one implementation): two :class:`~engine.endpoints.budget.TokenBudget` (FIFO, full at
start, a request larger than the bucket's depth granted when it is full and leaving it in
debt) and a :class:`~engine.endpoints.gate.RateLimitGate`.
Token estimates are reserved per permit and settled with the real usage (the difference is
charged or, with ``limits.tpm_refund``, refunded to the actor).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from ..config.sections import LimitsConfig
from ..endpoints.budget import TokenBudget
from ..endpoints.client import Client
from ..endpoints.gate import RateLimitGate
from ..endpoints.limits import LimiterStatistics, PermitProtocol
from ..endpoints.timing import Clock, Timing
from ..errors import ClientClosedError
from ..telemetry.logs import get_logger
from ._ray import ray_module

__all__ = (
    "DriverLimit",
    "LeasedLimiter",
    "SharedBuckets",
    "driver_clients",
    "limiter_actor",
    "share_limit",
)

_log = get_logger("engine.cluster.limiter")

_RETRY = 0.25
"""Seconds between a shard's tries to reach a limiter actor that is gone."""
_WATCH = 2.0
"""Longest a watcher's long poll waits for news before it re-polls."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Permits granted by the actor: ``requests`` requests and ``tokens`` tokens."""

    requests: int
    tokens: float
    epoch: int


class SharedBuckets:
    """The state of the limiter actor: RPM and TPM buckets and the 429 gate, for all shards.

    Both buckets are the client's own :class:`~engine.endpoints.budget.TokenBudget` (one of
    ``rpm`` request units, one of ``tpm`` tokens, each ``burst_seconds`` deep, FIFO), so a
    lease is admitted by the same bucket a local :class:`~engine.endpoints.limits.Limiter`
    uses. Plain Python (Ray wraps it as an async actor in :func:`limiter_actor`), so its
    logic is the same in a test on one loop; it belongs to the loop it is first used on.

    Args:
        limits: ``rpm``, ``tpm`` and ``burst_seconds`` are read.
        backoff: the first default pause after a 429 without a wait, seconds.
        backoff_cap: the longest default pause.
        clock: monotonic seconds; default the running loop's (a virtual-time loop in tests).
    """

    def __init__(
        self,
        limits: LimitsConfig,
        *,
        backoff: float = 1.0,
        backoff_cap: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self._timing = Timing(clock)
        burst = limits.burst_seconds
        self._requests = (
            TokenBudget(limits.rpm, burst_seconds=burst, clock=clock) if limits.rpm else None
        )
        self._tokens = (
            TokenBudget(limits.tpm, burst_seconds=burst, clock=clock) if limits.tpm else None
        )
        self._gate = RateLimitGate(self._timing, backoff, backoff_cap)
        self._epoch = 0  # 429 episodes: a watcher wakes when it moves
        self._news = asyncio.Event()
        self._serve = asyncio.Lock()  # leases are served first come, first served
        self.granted = 0
        self.returned = 0
        self.rate_limited = 0

    def pause_left(self) -> float:
        """Seconds until the shared gate opens; 0 while open."""
        now = self._timing.now_or_none()
        at = self._gate.open_at(now)
        return 0.0 if at is None or now is None else at - now

    async def lease(self, need: int, want: int, tokens_per_request: float) -> Lease:
        """At least ``need`` and at most ``want`` request permits, with ``tokens_per_request``
        tokens each, once the gate is open and the buckets hold them (``need`` waits its
        turn in the buckets; the rest of ``want`` is added only where it is there now)."""
        need = max(1, need)
        want = max(need, want)
        tpr = max(0.0, tokens_per_request)
        async with self._serve:
            await self._gate.wait()
            if self._requests is not None:
                await self._requests.reserve(need)
            if self._tokens is not None and tpr > 0:
                await self._tokens.reserve(need * tpr)
            extra = await self._extra(want - need, tpr)
            await self._gate.wait()  # a 429 while waiting: these permits wait it out
            k = need + extra
            self.granted += k
            return Lease(k, k * tpr, self._epoch)

    async def _extra(self, most: int, tpr: float) -> int:
        """Take up to ``most`` more permits that the buckets hold now, without waiting."""
        k = most
        if self._requests is not None:
            k = min(k, math.floor(self._requests.level() + 1e-9))
        if self._tokens is not None and tpr > 0:
            k = min(k, math.floor(self._tokens.level() / tpr + 1e-9))
        if k <= 0:
            return 0
        # both fit and nobody queues (leases are served one at a time): no wait
        if self._requests is not None:
            await self._requests.reserve(k)
        if self._tokens is not None and tpr > 0:
            await self._tokens.reserve(k * tpr)
        return k

    def give_back(self, requests: int, tokens: float) -> None:
        """Unused permits returned by a shard (never above the buckets' depth)."""
        self.returned += requests
        if self._requests is not None and requests > 0:
            self._requests.refund(requests)
        if self._tokens is not None and tokens > 0:
            self._tokens.refund(tokens)

    def charge(self, tokens: float) -> None:
        """Settle a permit: ``tokens`` more than reserved were used (negative: a refund)."""
        if self._tokens is None or not math.isfinite(tokens):
            return
        if tokens > 0:
            self._tokens.charge(tokens)
        elif tokens < 0:
            self._tokens.refund(-tokens)

    def rate_limited_for(self, retry_after: float | None) -> float:
        """A shard saw a 429: close the gate for everyone; the pause left, seconds."""
        self.rate_limited += 1
        before = self._gate.open_at(self._timing.now())
        self._gate.close_for(retry_after)
        after = self._gate.open_at(self._timing.now())
        if after is not None and (before is None or after > before):  # the pause grew
            self._epoch += 1
            self._news.set()
            self._news = asyncio.Event()
        return self.pause_left()

    def success(self) -> None:
        """A request succeeded after a 429: the next default pause starts from the first."""
        self._gate.reset_backoff()

    async def watch(self, epoch: int, poll: float = _WATCH) -> tuple[int, float]:
        """Return ``(epoch, pause left)`` once the gate closed after ``epoch`` (or after
        ``poll`` seconds with no news)."""
        if self._epoch == epoch:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), poll)
        return self._epoch, self.pause_left()

    def statistics(self) -> dict[str, float]:
        """Counters and levels, for tests and benchmarks."""
        out: dict[str, float] = {
            "granted": self.granted,
            "returned": self.returned,
            "rate_limited": self.rate_limited,
            "pause_left": self.pause_left(),
            "epoch": self._epoch,
        }
        if self._requests is not None:
            out["requests_level"] = self._requests.level()
        if self._tokens is not None:
            out["tokens_level"] = self._tokens.level()
        return out


def limiter_actor(
    limits: LimitsConfig,
    *,
    name: str | None = None,
    backoff: float = 1.0,
    backoff_cap: float = 60.0,
) -> Any:
    """Start the limiter actor (an async Ray actor around :class:`SharedBuckets`), restarted
    by Ray whenever it dies; returns its handle."""
    ray = ray_module()

    class LimiterActor:
        def __init__(self) -> None:
            self._b: SharedBuckets | None = None

        def _buckets(self) -> SharedBuckets:
            if self._b is None:  # made on the actor's event loop
                self._b = SharedBuckets(limits, backoff=backoff, backoff_cap=backoff_cap)
            return self._b

        async def lease(self, need: int, want: int, tpr: float) -> tuple[int, float, int]:
            got = await self._buckets().lease(need, want, tpr)
            return got.requests, got.tokens, got.epoch

        async def give_back(self, requests: int, tokens: float) -> None:
            self._buckets().give_back(requests, tokens)

        async def charge(self, tokens: float) -> None:
            self._buckets().charge(tokens)

        async def rate_limited(self, retry_after: float | None) -> float:
            return self._buckets().rate_limited_for(retry_after)

        async def success(self) -> None:
            self._buckets().success()

        async def watch(self, epoch: int, poll: float = _WATCH) -> tuple[int, float]:
            return await self._buckets().watch(epoch, poll)

        async def statistics(self) -> dict[str, float]:
            return self._buckets().statistics()

        async def pid(self) -> int:
            import os

            return os.getpid()

    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_concurrency": 1000}
    if name is not None:
        options["name"] = name
    return ray.remote(LimiterActor).options(**options).remote()


# ----------------------------------------------------------------------------- the shard side


class _LeasedPermit:
    """One request's permit from a :class:`LeasedLimiter`; settle it with the real usage."""

    __slots__ = ("_limiter", "_settled", "requests", "reserved", "waited")

    def __init__(self, limiter: LeasedLimiter, reserved: int, requests: int, waited: float):
        self._limiter = limiter
        self.reserved = reserved
        self.requests = requests
        self.waited = waited
        self._settled = False

    def settle(self, used_tokens: int) -> None:
        """Record the real usage: the difference from the estimate goes to the actor."""
        if self._settled:
            return
        self._settled = True
        self._limiter._settle(self.reserved, used_tokens)


class LeasedLimiter:
    """A shard's limiter: permits leased in chunks from the limiter actor (module docstring).

    Implements :class:`~engine.endpoints.limits.LimiterProtocol`, so a
    :class:`~engine.endpoints.client.Client` takes it as ``limits=``. Concurrency is the
    shard's own (``limits.max_concurrency``); RPM, TPM and the 429 gate are the cluster's.
    Use it on one event loop; close it with :meth:`aclose` (unused permits go back).

    Args:
        actor: the limiter actor's handle (:func:`limiter_actor`).
        limits: ``max_concurrency``, ``tpm`` and ``tpm_refund`` are read.
        lease_requests: requests leased at a time.
        lease_ttl: seconds unused permits are kept before they go back.
    """

    def __init__(
        self,
        actor: Any,
        limits: LimitsConfig,
        *,
        lease_requests: int = 4,
        lease_ttl: float = 0.5,
        backoff: float = 1.0,
        backoff_cap: float = 60.0,
    ) -> None:
        self._actor = actor
        self._max = limits.max_concurrency
        self._tpm = bool(limits.tpm)
        self._refund = limits.tpm_refund
        self._chunk = lease_requests
        self._ttl = lease_ttl
        self._timing = Timing(None)
        self._gate = RateLimitGate(self._timing, backoff, backoff_cap)
        self._slots: asyncio.Semaphore | None = None
        self._pool_requests = 0
        self._pool_tokens = 0.0
        self._pool_since = 0.0
        self._epoch = 0
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._pending: set[Any] = set()
        # statistics
        self._in_flight = 0
        self._waiting = 0
        self._reserved = 0
        self._rate_limited = 0
        self._gate_waits = 0
        self._admitted = 0
        self._leases = 0
        self._unreachable = 0
        self._saw_429 = False

    # ------------------------------------------------------------------ protocol

    def permit(
        self, est_tokens: int = 0, *, requests: int = 1
    ) -> AbstractAsyncContextManager[PermitProtocol]:
        """A permit once the cluster's limits allow it (leasing more from the actor as needed).

        Raises:
            ClientClosedError: the limiter is closed.
        """
        if self._closed:
            raise ClientClosedError("limiter is closed")
        return self._permit(max(0, est_tokens), max(1, requests))

    @contextlib.asynccontextmanager
    async def _permit(self, est_tokens: int, requests: int) -> AsyncIterator[_LeasedPermit]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        started = self._timing.now()
        self._waiting += 1
        granted = False
        try:
            waited = await self._gate.wait()
            async with self._slots:
                self._in_flight += 1
                try:
                    await self._take(requests, est_tokens)
                    waited = await self._gate.wait() or waited
                    if self._closed:
                        raise ClientClosedError("limiter is closed")
                    granted = True
                    self._waiting -= 1
                    self._gate_waits += int(waited)
                    self._admitted += requests
                    self._reserved += est_tokens
                    waited_s = self._timing.now() - started
                    try:
                        yield _LeasedPermit(self, est_tokens, requests, waited_s)
                    finally:
                        self._reserved -= est_tokens
                finally:
                    self._in_flight -= 1
        finally:
            if not granted:
                self._waiting -= 1

    async def _take(self, requests: int, est_tokens: int) -> None:
        """Take ``requests`` permits and ``est_tokens`` tokens from the pool, leasing more
        while it holds too few. Every waiting permit may have its own lease in flight, so a
        slow round trip to the actor never caps the shard at one lease at a time."""
        tpr = est_tokens / requests if self._tpm else 0.0
        while True:
            if self._closed:
                raise ClientClosedError("limiter is closed")
            enough_tokens = not self._tpm or self._pool_tokens >= est_tokens
            if self._pool_requests >= requests and enough_tokens:
                self._pool_requests -= requests
                self._pool_tokens -= est_tokens
                return
            await self._gate.wait()
            need = max(1, requests - self._pool_requests)
            if self._tpm and tpr > 0 and self._pool_tokens < est_tokens:
                need = max(need, math.ceil((est_tokens - self._pool_tokens) / tpr))
            want = max(need, self._chunk)
            try:
                got, tokens, epoch = await self._actor.lease.remote(need, want, tpr)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the actor is gone: grant nothing until it is back
                self._unreachable += 1
                if self._unreachable == 1 or self._unreachable % 40 == 0:
                    _log.warning("limiter.unreachable", error=type(exc).__name__,
                                 tries=self._unreachable)  # fmt: skip
                await asyncio.sleep(_RETRY)
                continue
            self._leases += 1
            if self._pool_requests <= 0:
                self._pool_since = self._timing.now()
            self._pool_requests += got
            self._pool_tokens += tokens
            if epoch > self._epoch:
                self._epoch = epoch

    def on_rate_limited(
        self, retry_after: float | None = None, *, permit: PermitProtocol | None = None
    ) -> None:
        """A 429: pause this shard now, and every shard through the actor."""
        self._rate_limited += 1
        self._saw_429 = True
        self._gate.close_for(retry_after)
        self._give_back()
        self._send(self._actor.rate_limited.remote(retry_after))

    def on_timeout(self, *, permit: PermitProtocol | None = None) -> None:
        """A timeout: nothing to do (the shard's concurrency is fixed)."""

    def on_success(self) -> None:
        """A success; after a 429 it resets the shared default backoff (once)."""
        self._gate.reset_backoff()
        if self._saw_429:
            self._saw_429 = False
            self._send(self._actor.success.remote())

    def gate_wait(self) -> float:
        """Seconds until this shard's view of the 429 gate opens; 0 while open."""
        now = self._timing.now_or_none()
        at = self._gate.open_at(now)
        return 0.0 if at is None or now is None else at - now

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot (tokens_available: the tokens leased and not yet used)."""
        now = self._timing.now_or_none()
        return LimiterStatistics(
            in_flight=self._in_flight,
            concurrency_limit=self._max,
            waiting=self._waiting,
            tokens_reserved=float(self._reserved),
            tokens_available=max(self._pool_tokens, 0.0) if self._tpm else math.inf,
            token_debt=0.0,
            gate_open_at=self._gate.open_at(now),
            rate_limited=self._rate_limited,
            gate_waits=self._gate_waits,
            requests_admitted=self._admitted,
        )

    @property
    def leases(self) -> int:
        """Leases granted by the actor so far."""
        return self._leases

    async def aclose(self) -> None:
        """Give unused permits back and stop the watcher; later permits raise."""
        if self._closed:
            return
        self._closed = True
        self._gate.shut()
        self._give_back()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        pending = list(self._pending)
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5.0)

    async def __aenter__(self) -> LeasedLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals

    def _settle(self, reserved: int, used: int) -> None:
        if not self._tpm:
            return
        delta = used - reserved
        if delta > 0 or (delta < 0 and self._refund):
            self._send(self._actor.charge.remote(float(delta)))

    def _give_back(self) -> None:
        """Return the unused pool to the actor."""
        requests, tokens = self._pool_requests, self._pool_tokens
        if requests <= 0 and tokens <= 0:
            return
        self._pool_requests, self._pool_tokens = 0, 0.0
        self._send(self._actor.give_back.remote(max(0, requests), max(0.0, tokens)))

    def _send(self, ref: Any) -> None:
        """Keep a fire-and-forget call's result until it lands (its failure is ignored: an
        actor that is gone has lost its buckets anyway)."""
        try:
            fut = asyncio.wrap_future(ref.future())
        except RuntimeError:  # no running loop (called at teardown)
            return
        self._pending.add(fut)
        fut.add_done_callback(self._landed)

    def _landed(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled():
            fut.exception()  # retrieved: no "never retrieved" warning

    async def _watch(self) -> None:
        """Long-poll the actor for 429 pauses; return permits idle for ``lease_ttl``."""
        while not self._closed:
            try:
                poll = min(_WATCH, self._ttl)
                ref = self._actor.watch.remote(self._epoch, poll)
                epoch, pause = await asyncio.wait_for(asyncio.wrap_future(ref.future()),
                                                      poll + _WATCH)  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:  # gone or slow: try again shortly
                await asyncio.sleep(_RETRY)
                continue
            if epoch > self._epoch:
                self._epoch = epoch
                if pause > 0:
                    self._gate.close_for(pause)
                    self._give_back()
            self._expire()

    def _expire(self) -> None:
        """Give back permits nobody has asked for within ``lease_ttl``."""
        idle = self._timing.now() - self._pool_since >= self._ttl and self._waiting == 0
        if self._pool_requests > 0 and idle:
            self._give_back()


# ----------------------------------------------------------------------------- the driver side


def driver_clients(*parts: Any) -> list[Client]:
    """The endpoint clients of the driver's parts: a policy's ``client`` and ``proposer``
    (its evaluation and reflection requests) and the ``client`` of each of a rewarder's
    judges; each once."""
    found: dict[int, Client] = {}
    for part in parts:
        holders = [part, *(spec.judge for spec in getattr(part, "judges", ()))]
        for holder in holders:
            for attr in ("client", "proposer"):
                c = getattr(holder, attr, None)
                if isinstance(c, Client):
                    found.setdefault(id(c), c)
    return list(found.values())


class DriverLimit:
    """The driver's clients on the limiter actor for the length of a run (:func:`share_limit`);
    :meth:`aclose` gives the unused permits back and gives each client its own limiter again.

    Attributes:
        limiter: the one :class:`LeasedLimiter` the clients share.
    """

    def __init__(self, clients: list[Client], limiter: LeasedLimiter) -> None:
        self.limiter = limiter
        self._before = [(c, c.limiter) for c in clients]
        for client in clients:
            client.share_limiter(limiter)

    async def aclose(self) -> None:
        """Close the shared limiter; the clients take their own permits again."""
        await self.limiter.aclose()
        for client, before in self._before:
            client.share_limiter(before)


def share_limit(clients: list[Client], actor: Any, limits: LimitsConfig,
                *, lease_requests: int = 4, lease_ttl: float = 0.5) -> DriverLimit:  # fmt: skip
    """Put the driver's ``clients`` on the limiter actor: one :class:`LeasedLimiter` for all
    of them, so their requests count against the same RPM/TPM limit and 429 gate as the
    shards'. Close it (:meth:`DriverLimit.aclose`) when the run ends."""
    limiter = LeasedLimiter(actor, limits, lease_requests=lease_requests, lease_ttl=lease_ttl)
    return DriverLimit(clients, limiter)
