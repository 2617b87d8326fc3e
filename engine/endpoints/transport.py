"""Endpoint stage: the HTTP transport under the client: session, connector, timers, pacing.

A :class:`Transport` is made on a client's first call, inside the running loop, and holds:

- the client's own keep-alive HTTP/1.1 connections (:class:`~engine.endpoints.wire.HttpPool`,
  the default), or, with ``EndpointConfig.http_client = "aiohttp"``, an aiohttp session over
  a :class:`ReuseAwareConnector`; either tells the current attempt whether its connection
  came from the keep-alive pool and bounds the handshakes in flight;
- a :class:`Watchdog`, the one timer that cancels attempts whose time is up (the attempt
  timeout, or the call's deadline while queued for a permit);
- a :class:`Pacer`, which spreads a burst of calls over event-loop iterations.

Neither has timers of its own: the watchdog enforces both the attempt timeout and the
call's deadline (aiohttp's read timer is rescheduled on every chunk, which is costly per
request).
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import ClientRequest, ClientTimeout
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace
from yarl import URL

from .wire import HttpPool

__all__ = (
    "MAX_HANDSHAKES",
    "START_BUDGET",
    "Alarm",
    "Pacer",
    "ReuseAwareConnector",
    "Transport",
    "Watchdog",
    "read_capped",
)

START_BUDGET = 0.01
"""Seconds of one event-loop iteration that starting calls may take (see :class:`Pacer`)."""

MAX_HANDSHAKES = 64
"""New connections a client opens at once at most (see :class:`ReuseAwareConnector`)."""

USER_AGENT = f"grpo-engine (Python/{sys.version_info[0]}.{sys.version_info[1]})"
"""The ``User-Agent`` of the native connections, unless the endpoint's headers set one."""

KEEPALIVE_TIMEOUT = 4.0
"""Seconds an idle pooled connection is kept; servers (uvicorn, vLLM) drop them at about 5."""


class Alarm:
    """The state of one attempt: its timer entry, and whether it opened a new connection.

    Attributes:
        task: the task running the attempt.
        when: loop time at which the attempt is cancelled.
        cancelling: cancel requests already pending on the task when it was armed.
        fired: whether the watchdog cancelled the task.
        fresh: whether the attempt opened a new connection (set by
            :class:`ReuseAwareConnector`); a connection it did not open came from the
            keep-alive pool.
    """

    __slots__ = ("cancelling", "fired", "fresh", "task", "when")

    def __init__(self, task: asyncio.Task[Any], when: float) -> None:
        self.task = task
        self.when = when
        self.cancelling = task.cancelling()
        self.fired = False
        self.fresh = False

    @property
    def reused(self) -> bool:
        """Whether the attempt's connection (once it has one) came from the keep-alive pool."""
        return not self.fresh


class Watchdog:
    """One timer for every attempt of a client: cancels an attempt's task when its time is up.

    ``asyncio.timeout()`` would put two TimerHandles per attempt on the loop's heap (one for
    the deadline while queued, one rescheduled to the attempt timeout), and the heap orders
    them with Python code, a cost paid on every request. Here arming is a dict insert and
    the single timer wakes at the earliest time armed, which in steady state (requests far
    shorter than their timeouts) is rare. The cancellation is taken back with
    ``Task.uncancel`` exactly as ``asyncio.timeout`` does.
    """

    __slots__ = ("_alarms", "_handle", "_loop", "_wake_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._alarms: dict[asyncio.Task[Any], Alarm] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._wake_at = math.inf

    def arm(self, task: asyncio.Task[Any], when: float) -> Alarm:
        """Cancel ``task`` at loop time ``when`` unless disarmed first (one alarm per task)."""
        return self.add(Alarm(task, when))

    def add(self, alarm: Alarm) -> Alarm:
        """Arm ``alarm`` (made for its task, perhaps a subclass carrying more state)."""
        self._alarms[alarm.task] = alarm
        if alarm.when < self._wake_at:
            self._schedule(alarm.when)
        return alarm

    def alarm_of(self, task: asyncio.Task[Any] | None) -> Alarm | None:
        """The alarm armed for ``task``, if any."""
        return None if task is None else self._alarms.get(task)

    def move(self, alarm: Alarm, when: float) -> None:
        """Move an armed alarm to loop time ``when``."""
        alarm.when = when
        if when < self._wake_at:
            self._schedule(when)

    def disarm(self, alarm: Alarm) -> None:
        """Forget an alarm (a later alarm armed for the same task is kept)."""
        if self._alarms.get(alarm.task) is alarm:
            del self._alarms[alarm.task]

    def close(self) -> None:
        """Cancel the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._wake_at = math.inf

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._wake_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._wake_at = math.inf
        now = self._loop.time() + 1e-6  # call_at may run a hair early
        upcoming = math.inf
        for alarm in list(self._alarms.values()):
            if alarm.when <= now:
                if not alarm.fired:
                    alarm.fired = True
                    alarm.task.cancel()
            elif alarm.when < upcoming:
                upcoming = alarm.when
        if upcoming < math.inf:
            self._schedule(upcoming)


class Pacer:
    """Spreads a burst of calls over event-loop iterations: the calls started in one
    iteration take about ``budget`` seconds at most; the rest wait their turn, first come
    first served, in the iterations that follow.

    A trainer that submits a thousand requests at once makes every one of them runnable in
    the same loop iteration, and each runs up to its first real wait (building its request,
    taking a permit, opening a connection), so that one iteration runs long and nothing else
    (timers, signals, progress, responses already in) runs meanwhile
    (tests/reliability/README.md, "The start burst"). Paced, an iteration starts calls until
    ``budget`` has passed since its first start; later calls queue, and each following
    iteration lets through as many as fit the budget last time. When starts are spread out
    (the steady state), a call pays one clock read.
    """

    __slots__ = ("_budget", "_first", "_loop", "_per", "_started", "_tick_pending", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float) -> None:
        self._loop = loop
        self._budget = budget
        # This iteration's first start (loop time) and the starts in it so far; `_per` is
        # how many queued calls each iteration lets through (what fit the budget last time).
        # `_tick_pending`: this iteration has started some, and `_next_iteration` is due.
        self._first = 0.0
        self._started = 0
        self._per = 1
        self._tick_pending = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def turn(self) -> None:
        """Return when the caller may start: at once, unless this iteration's budget is spent
        (or calls are already waiting)."""
        if not self.start_now():
            await self.queue()

    def start_now(self) -> bool:
        """Start now if this iteration's budget allows it (and nobody waits): True, counted;
        else False, and the caller awaits :meth:`queue` (:meth:`turn` in two steps, so a
        caller that may start pays no coroutine)."""
        if self._waiters:
            return False
        if not self._tick_pending:  # the first start of this iteration
            self._tick_pending = True
            self._first, self._started = self._loop.time(), 1
            self._loop.call_soon(self._next_iteration)
            return True
        if self._loop.time() - self._first < self._budget:
            self._started += 1
            return True
        self._per = max(1, self._started)  # what fit in the budget
        return False

    async def queue(self) -> None:
        """Wait for a turn in the queue (after :meth:`start_now` said no)."""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter  # a cancelled waiter stays queued, done: its turn goes to the next

    def _next_iteration(self) -> None:
        """A new loop iteration: let the next waiters start, as many as fit last time.

        What fit is measured again every iteration while calls queue: the starts let through
        since ``_first`` took until now, scaled to the budget (at most doubling), so a quota
        cut to one by a slow start (a machine short of CPU) grows back once starts are fast
        again instead of holding a long queue at one start per iteration."""
        if self._started and self._waiters:
            elapsed = self._loop.time() - self._first
            fit = self._started * self._budget / elapsed if elapsed > 0 else math.inf
            self._per = max(1, int(min(2 * self._started, fit)))
        granted = 0
        while self._waiters and granted < self._per:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                granted += 1
        if granted:  # they start in the next iteration: new calls queue behind them till then
            self._first, self._started = self._loop.time(), granted
            self._loop.call_soon(self._next_iteration)
        else:
            self._tick_pending = False


class ReuseAwareConnector(aiohttp.TCPConnector):
    """A TCPConnector that tells the current attempt whether it opened a new connection, and
    opens at most ``MAX_HANDSHAKES`` new connections at once.

    A ``ServerDisconnectedError`` on a pooled connection is the stale keep-alive race (the
    server closed the idle connection as we sent on it) and is retried at once. aiohttp's
    tracing can report reuse too, but it costs every request several signal dispatches; here
    nothing runs for a pooled connection: ``_create_connection``, the hook aiohttp's
    connectors call for a new connection only (the same in every aiohttp 3.x this package
    accepts), marks the attempt's alarm (found in the watchdog by the task) as ``fresh``, so
    a connection the attempt did not open came from the pool.

    The handshake limit: a server that accepts in bursts completes hundreds of handshakes
    in the same instant, and each completion resumes a request (transport, protocol,
    sending), all in one loop iteration (tests/reliability/README.md, "The start burst").
    With at most ``MAX_HANDSHAKES`` pending, one iteration resumes at most that many.
    """

    def __init__(self, watchdog: Watchdog | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._watchdog = watchdog
        self._handshakes = asyncio.Semaphore(MAX_HANDSHAKES)

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> ResponseHandler:
        if self._watchdog is not None:
            alarm = self._watchdog.alarm_of(asyncio.current_task())
            if alarm is not None:
                alarm.fresh = True
        async with self._handshakes:
            return await super()._create_connection(req, traces, timeout)


class Transport:
    """One client's connections, attempt watchdog and call pacer, made inside the running loop.

    Args:
        headers: sent on every request.
        pool_size: connections open at once at most.
        native: the routes (name -> URL, one origin) to send over the client's own HTTP/1.1
            connections (:class:`~engine.endpoints.wire.HttpPool`); None uses an aiohttp
            session instead (``EndpointConfig.http_client = "aiohttp"``).

    Attributes:
        lane: the native connection pool, or None.
        heads: each native route's request head (:meth:`HttpPool.head`).
        session: the aiohttp session (no aiohttp timers; the client's default headers), or
            None with the native pool.
        watchdog: cancels attempts whose time is up.
        pacer: spreads a burst of calls over loop iterations.
    """

    __slots__ = ("heads", "lane", "pacer", "session", "watchdog")

    def __init__(
        self, headers: Mapping[str, str], pool_size: int, native: Mapping[str, URL] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self.watchdog = Watchdog(loop)
        self.lane: HttpPool | None = None
        self.heads: dict[str, bytes] = {}
        self.session: aiohttp.ClientSession | None = None
        if native:
            origin = next(iter(native.values()))
            self.lane = HttpPool(origin, headers, limit=pool_size, keepalive=KEEPALIVE_TIMEOUT,
                                 max_handshakes=MAX_HANDSHAKES, user_agent=USER_AGENT)  # fmt: skip
            self.heads = {name: self.lane.head(url) for name, url in native.items()}
        else:
            connector = ReuseAwareConnector(
                self.watchdog,
                limit=pool_size,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
                ttl_dns_cache=300,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
                raise_for_status=False,
            )
        self.pacer = Pacer(loop, START_BUDGET)

    async def aclose(self) -> None:
        """Stop the watchdog and close the connections."""
        self.watchdog.close()
        if self.lane is not None:
            await self.lane.aclose()
        if self.session is not None:
            await self.session.close()


async def read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes | None:
    """The whole body of ``resp``, or None once it would pass ``max_bytes`` (counted after
    decompression), having closed the connection; an announced ``Content-Length`` above the
    cap is refused before reading."""
    length = resp.content_length
    if length is not None and length > max_bytes:
        resp.close()
        return None
    if length is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()  # the parser stops at the announced length
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            resp.close()
            return None
        chunks.append(chunk)
    return b"".join(chunks)
