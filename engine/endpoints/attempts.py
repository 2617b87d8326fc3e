"""Endpoint stage: one HTTP attempt, what the attempts of one call share, and their events.

:class:`AttemptRunner` runs one attempt: a permit from the limiter, the send under the
client's :class:`~engine.endpoints.transport.Watchdog`, the classification of the response,
the settlement of the permit. The run's :class:`~engine.endpoints.spend.SpendMeter` admits
each attempt just before it is sent (refusing it once the budget is spent) and is told what
an answered attempt cost.

Every attempt (a success, a failure, or a cancellation after it was sent) is one event in the
:class:`~engine.telemetry.events.EventLog`, with its ``cost_usd`` (0 unless it was answered)
and, when answered, its ``cost_source``. Events never carry the key, the auth header or
the prompt text (only its length).

What the server sends is untrusted (:mod:`~engine.endpoints.guards`): redirects are not
followed, the body is read up to ``max_bytes`` and no further, and a usage that is missing,
malformed, negative or absurd is replaced by an estimate before it settles the permit (the
success event then carries ``usage_anomaly``). A request that the shared 429 pause would
hold past its deadline fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import aiohttp
from yarl import URL

from ..errors import (
    BudgetSpent,
    DeadlineExceeded,
    EndpointError,
    EndpointTimeout,
    RequestRejected,
    ResponseError,
    TransportError,
)
from ..telemetry.events import EventLog
from ..telemetry.logs import get_logger
from ..types import Usage
from .fanout import EndpointKey
from .guards import estimated_usage, usage_bound
from .limits import Limiter, LimiterProtocol, Permit, PermitProtocol
from .parsing import Failure, Result, parse_response
from .redaction import Redactor
from .spend import SpendMeter
from .transport import Alarm, Watchdog, read_capped
from .wire import Disconnected, HttpPool, ProtocolError

__all__ = ("AttemptEvents", "AttemptRunner", "CallContext")

_log = get_logger("engine.endpoints.attempts")

_NO_USAGE = Usage()
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class CallContext:
    """What every request of one :meth:`~engine.endpoints.client.Client.complete` call shares.

    Attributes:
        session: the client's aiohttp session (None with its own connections, ``lane``).
        url: where requests are posted; ``path`` is its path, shown in events and errors.
        key: the endpoint ``(base_url, mode, model)`` whose ``n`` behaviour is remembered.
        model: the model named in the requests (recorded in events).
        kind, group_id, sample_index, policy_version: identity recorded in events.
        est_prompt: estimated prompt tokens; ``max_tokens``: completion tokens per choice.
        prompt_chars: the prompt's length, recorded instead of its text.
        t_end: the call's deadline on the client's (injectable) clock.
        loop: the running loop; ``loop_end`` is the same deadline on its clock.
        watchdog: cancels attempts whose time is up.
        episode, turn: the episode and turn of a multi-turn rollout the call is for (recorded
            in its events only when set).
        lane: the client's own connections (``http_client = "native"``), and ``head`` the
            request head of this call's route on them.
    """

    session: aiohttp.ClientSession | None
    url: URL
    path: str
    key: EndpointKey
    model: str
    kind: str
    group_id: str | None
    sample_index: int | None
    policy_version: int | None
    est_prompt: int
    max_tokens: int
    prompt_chars: int
    t_end: float
    loop: asyncio.AbstractEventLoop
    watchdog: Watchdog
    loop_end: float
    episode: str | None = None
    turn: int | None = None
    lane: HttpPool | None = None
    head: bytes = b""


class AttemptEvents:
    """Emits one event per request attempt; does nothing without an event log."""

    __slots__ = ("_events", "_redact")

    def __init__(self, events: EventLog | None, redact: Redactor) -> None:
        self._events = events
        self._redact = redact

    def track(self, ctx: CallContext) -> AbstractContextManager[None]:
        """Counts the attempt as in flight while it is sent and answered."""
        ev = self._events
        return contextlib.nullcontext() if ev is None else ev.track(ctx.kind)

    @property
    def in_flight(self) -> Counter[str] | None:
        """The event log's in-flight counts by kind (what :meth:`track` counts in), or None
        without an event log."""
        ev = self._events
        return None if ev is None else ev.in_flight

    def success(
        self,
        ctx: CallContext,
        r: Result,
        status: int,
        latency: float,
        attempt: int,
        n: int,
        cost: tuple[float, str] = (0.0, "none"),
        queue_wait: float = 0.0,
    ) -> None:
        """An attempt that returned choices; ``cost``: its USD and where that came from."""
        ev = self._events
        if ev is None:
            return
        ev.emit_event(_fields(ctx, status, latency, queue_wait, attempt, n, r.usage, cost[0],
                              cost[1], None, None, r.request_id or r.id,
                              r.usage_anomaly))  # fmt: skip

    def failure(
        self, ctx: CallContext, f: Failure, n: int, attempt: int, retry_in: float | None
    ) -> None:
        """A failed attempt; ``retry_in`` is the wait before the next one, None when final."""
        h = f.headers
        self._emit(
            ctx,
            status=f.error.status,
            latency=f.latency,
            attempt=attempt,
            n=n,
            error_class=f.error.error_class,
            retry_in=retry_in,
            request_id=self._redact.id(h.get("x-request-id")) if h is not None else None,
            queue_wait=f.queue_wait,
        )

    def cancelled(
        self,
        ctx: CallContext,
        n: int,
        attempt: int,
        status: int | None,
        latency: float,
        cost: tuple[float, str] | None = None,
        queue_wait: float = 0.0,
    ) -> None:
        """An attempt cancelled from outside (a fanned-out sibling failed, a straggler, a
        shutdown) after it was sent: recorded as ``error_class: "cancelled"``, since the
        server may have done (and billed) the work; ``cost`` when its answer had come."""
        self._emit(ctx, status=status, latency=latency, attempt=attempt, n=n,
                   error_class="cancelled", cost=cost, queue_wait=queue_wait)  # fmt: skip

    def _emit(
        self,
        ctx: CallContext,
        *,
        status: int | None,
        latency: float,
        attempt: int,
        n: int,
        usage: Usage | None = None,
        error_class: str | None = None,
        retry_in: float | None = None,
        request_id: str | None = None,
        usage_anomaly: str | None = None,
        cost: tuple[float, str] | None = None,
        queue_wait: float = 0.0,
    ) -> None:
        ev = self._events
        if ev is None:
            return
        ev.emit_event(
            _fields(ctx, status, latency, queue_wait, attempt, n, usage or _NO_USAGE,
                    cost[0] if cost is not None else 0.0, cost[1] if cost is not None else None,
                    error_class, retry_in, request_id, usage_anomaly)
        )  # fmt: skip


def _fields(
    ctx: CallContext,
    status: int | None,
    latency: float,
    queue_wait: float,
    attempt: int,
    n: int,
    u: Usage,
    cost_usd: float,
    cost_source: str | None,
    error_class: str | None,
    retry_in: float | None,
    request_id: str | None,
    usage_anomaly: str | None,
) -> dict[str, Any]:
    """The fields of one attempt's event, in their order in ``events.jsonl`` (built once and
    handed to :meth:`~engine.telemetry.events.EventLog.emit_event`)."""
    fields: dict[str, Any] = {
        "kind": ctx.kind,
        "endpoint": ctx.path,
        "model": ctx.model,
        "group_id": ctx.group_id,
        "sample_index": ctx.sample_index,
        "policy_version": ctx.policy_version,
        "status": status,
        "latency": latency,
        "queue_wait": queue_wait,
        "attempt": attempt,
        "n": n,
        "prompt_chars": ctx.prompt_chars,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens,
        "cost": u.cost,
        "cost_usd": cost_usd,
        "cost_source": cost_source,
        "error_class": error_class,
        "retry_in": retry_in,
        "request_id": request_id,
        "usage_anomaly": usage_anomaly,
    }
    if ctx.episode is not None:
        fields["episode"] = ctx.episode
        fields["turn"] = ctx.turn
    return fields


class _AttemptState(Alarm):
    """What one attempt has got to (its alarm in the watchdog, one object per attempt): its
    permit, when it was sent, the response status and headers, the outcome once decided and
    what it cost. ``by_attempt``: the watchdog was moved from the call's deadline to the
    attempt's own timeout. ``t_start``: when it began to queue."""

    __slots__ = ("by_attempt", "cost", "headers", "outcome", "permit", "status", "t_send",
                 "t_start")  # fmt: skip

    def __init__(self, task: asyncio.Task[Any], when: float, t_start: float) -> None:
        # Alarm's fields, set here rather than by a call to its __init__ (once per attempt)
        self.task = task
        self.when = when
        self.cancelling = task.cancelling()
        self.fired = False
        self.fresh = False
        self.permit: PermitProtocol | None = None
        self.t_start = t_start
        self.t_send: float | None = None
        self.by_attempt = False
        self.status: int | None = None
        self.headers: Mapping[str, str] = _NO_HEADERS  # until a response has some
        self.outcome: Result | Failure | None = None
        self.cost: tuple[float, str] = (0.0, "none")


class AttemptRunner:
    """Runs one HTTP attempt of a request: permit, send, classify, report.

    A failure is returned, not raised, so the caller decides on a retry outside any
    ``except`` block. The limiter hears of every success and timeout; the event of a
    success, a deadline or a cancellation after sending is emitted here, other failures by
    the caller's retry loop.

    Args:
        limiter: where each attempt takes its permit.
        timeout: seconds an attempt may take once it holds a permit.
        clock: the client's clock, for latency.
        redact: applied to every message built from upstream text.
        events: where attempt events go.
        max_bytes: the largest response body read.
        spend: admits each attempt before it is sent and counts what it cost; None: a meter
            of its own with the built-in prices and no budget.
        hosted: the endpoint is a hosted provider's (the built-in prices apply).

    Attributes:
        usage_anomalies: responses whose usage was not trusted, by reason.
    """

    __slots__ = ("_clock", "_events", "_hosted", "_in_flight", "_limiter", "_max_bytes",
                 "_redact", "_spend", "_timeout", "usage_anomalies")  # fmt: skip

    def __init__(
        self,
        limiter: LimiterProtocol,
        timeout: float,
        clock: Callable[[], float],
        redact: Redactor,
        events: AttemptEvents,
        max_bytes: int = 64 * 1024 * 1024,
        spend: SpendMeter | None = None,
        *,
        hosted: bool = False,
    ) -> None:
        self._limiter = limiter
        self._timeout = timeout
        self._clock = clock
        self._redact = redact
        self._events = events
        self._in_flight = events.in_flight  # the event log's counter (one per log), or None
        self._max_bytes = max_bytes
        self.usage_anomalies: Counter[str] = Counter()
        self._spend = spend if spend is not None else SpendMeter()
        self._hosted = hosted

    async def run(
        self, ctx: CallContext, data: bytes, est: int, n: int, attempt: int, used_immediate: bool
    ) -> Result | Failure:
        """Attempt ``attempt`` of a request under the watchdog: the call's deadline while
        queued for a permit, then the attempt's own timeout if that ends first.
        ``used_immediate``: the request was already resent at once after a stale connection."""
        paused = self._paused_past_deadline(ctx, n, attempt)
        if paused is not None:
            return paused
        task = asyncio.current_task(ctx.loop)
        assert task is not None
        state = _AttemptState(task, ctx.loop_end, self._clock())
        ctx.watchdog.add(state)
        try:
            spend = self._spend
            limiter = self._limiter
            if spend.exhausted:  # asked before the permit: no queueing for a refused request
                state.outcome = Failure(spend.refusal(ctx.path, attempt))
            elif type(limiter) is Limiter and (fast := limiter.permit_now(est)) is not None:
                # uncontended: the permit without a context manager's two coroutines
                try:
                    await self._send(ctx, state, fast, data, est, attempt, used_immediate)
                finally:
                    limiter.release(fast)
            else:
                async with limiter.permit(est) as permit:
                    await self._send(ctx, state, permit, data, est, attempt, used_immediate)
        except asyncio.CancelledError:
            if not state.fired or task.uncancel() > state.cancelling:
                if state.t_send is not None:  # sent, or being sent: the server may have it
                    latency = self._clock() - state.t_send
                    wait = state.t_send - state.t_start
                    self._events.cancelled(ctx, n, attempt, state.status, latency,
                                           state.cost if state.outcome else None,
                                           wait)  # fmt: skip
                raise  # not ours, or someone else cancelled as well
            state.fired = False  # handled: the cancellation is taken back
            state.outcome = self._timed_out(state, attempt, ctx.path)
        finally:
            ctx.watchdog.disarm(state)
        if state.fired:  # it fired, but code below us swallowed the CancelledError
            task.uncancel()
        return self._report(ctx, state, n, attempt)

    def _paused_past_deadline(self, ctx: CallContext, n: int, attempt: int) -> Failure | None:
        """The failure of an attempt the shared 429 pause would hold past the call's deadline
        (its event emitted), or None: a server's wait is not sat out to no purpose."""
        pause = self._limiter.gate_wait()
        if pause <= 0 or ctx.loop.time() + pause <= ctx.loop_end:
            return None
        message = f"the server's rate-limit pause ({pause:.3g} s) ends past the deadline"
        failure = Failure(DeadlineExceeded(message, attempt=attempt, endpoint=ctx.path))
        self._events.failure(ctx, failure, n, attempt, None)
        return failure

    async def _send(
        self,
        ctx: CallContext,
        state: _AttemptState,
        permit: PermitProtocol,
        data: bytes,
        est: int,
        attempt: int,
        used_immediate: bool,
    ) -> None:
        """With ``permit`` held: send, read the whole response, classify and settle; the
        outcome (and an answer's cost) goes into ``state``.

        The spend meter was asked before the permit (no queueing for a refused request) and
        is asked again just before sending; an admitted attempt is counted in flight until
        it ends. Timeouts and transport errors keep the reservation: the server may have
        done the work. The send and the read are one await on the client's own connections
        (:meth:`~engine.endpoints.wire.HttpPool.post`), or one more coroutine over aiohttp
        (:meth:`_post_aiohttp`); the attempt is counted in the event log's ``in_flight``
        while it is sent and answered.
        """
        state.permit = permit
        spend = self._spend
        try:
            spend.admit(ctx.path, attempt)  # asks whether a budget is spent, and refuses
        except BudgetSpent as exc:
            permit.settle(0)
            state.outcome = Failure(exc)
            return
        try:
            self._start_send(ctx, state)
            in_flight = self._in_flight
            kind = ctx.kind
            if in_flight is not None:
                in_flight[kind] += 1
            raw: bytes | Failure | None
            lane = ctx.lane
            try:
                if lane is not None:  # the client's own connections (wire.HttpPool)
                    state.status, state.headers, raw = await lane.post(
                        ctx.head, data, self._max_bytes, state
                    )
                else:
                    raw = await self._post_aiohttp(ctx, state, data)
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                if isinstance(exc, ProtocolError) and exc.status is not None:
                    state.status = exc.status  # the head had come: the answer's status
                # a connection this attempt did not open came from the keep-alive pool
                resend_now = not state.fresh and not used_immediate
                raw = self._send_failure(exc, attempt, ctx.path, resend_now)
            finally:
                if in_flight is not None:
                    in_flight[kind] -= 1
            self._classify(ctx, state, permit, raw, est, attempt)
        finally:
            spend.finish(state.cost[0])

    async def _post_aiohttp(
        self, ctx: CallContext, state: _AttemptState, data: bytes
    ) -> bytes | None:
        """Send over the aiohttp session (``http_client = "aiohttp"``): the body, read up to
        the cap (None beyond); the status and headers go into ``state``."""
        session = ctx.session
        assert session is not None
        async with session.post(ctx.url, data=data, allow_redirects=False) as resp:
            state.status = resp.status
            state.headers = resp.headers
            length = resp.content_length
            if (
                length is not None
                and length <= self._max_bytes
                and ("Content-Encoding" not in resp.headers)
            ):
                return await resp.read()  # what read_capped does for such a body
            return await read_capped(resp, self._max_bytes)

    def _start_send(self, ctx: CallContext, state: _AttemptState) -> None:
        """The attempt is being sent: its send time, and the watchdog moved to the attempt's
        own timeout when that ends before the call's deadline."""
        state.t_send = self._clock()
        attempt_end = ctx.loop.time() + self._timeout
        if attempt_end < ctx.loop_end:
            state.by_attempt = True
            ctx.watchdog.move(state, attempt_end)

    def _classify(
        self,
        ctx: CallContext,
        state: _AttemptState,
        permit: PermitProtocol,
        raw: bytes | Failure | None,
        est: int,
        attempt: int,
    ) -> None:
        """The outcome of a response body (None: it passed the cap) or of a failed send, into
        ``state``; the permit settled with what the answer used (0 for an error answer)."""
        if raw is None:
            message = (f"response body larger than {self._max_bytes} bytes "
                       "(endpoint.max_response_bytes): reading stopped")  # fmt: skip
            error = ResponseError(message, status=state.status, attempt=attempt,
                                  endpoint=ctx.path, retryable=False)  # fmt: skip
            raw = Failure(error, state.headers)
        if isinstance(raw, Failure):
            raw.permit = permit
            state.outcome = raw
            return
        outcome = parse_response(raw, state.status or 0, state.headers, attempt, ctx.path,
                                 self._redact)  # fmt: skip
        if type(permit) is Permit:  # the window learning reads the answer's rate-limit counts
            permit.answered(state.headers, isinstance(outcome, Result))
        if isinstance(outcome, Result):
            permit.settle(self._trusted_usage(ctx, outcome, est))
            state.cost = self._spend.cost(outcome.usage, ctx.model, hosted=self._hosted)
        else:
            permit.settle(0)  # the server answered an error: no tokens were spent
            outcome.permit = permit
        state.outcome = outcome

    def _send_failure(self, exc: Exception, attempt: int, path: str, resend_now: bool) -> Failure:
        """The failure of a send that raised ``exc``: a disconnect (resent at once when
        ``resend_now``: a reused connection, not resent before), a lower layer's timeout
        (our own timer cancels), a transport error, or a request aiohttp refused to send (a
        bad header value...)."""
        message = self._redact.exception(exc)
        if isinstance(exc, aiohttp.ServerDisconnectedError | Disconnected):
            error: EndpointError = TransportError(message, attempt=attempt, endpoint=path)
            return Failure(error, immediate=resend_now)
        if isinstance(exc, TimeoutError):
            return Failure(EndpointTimeout(message, attempt=attempt, endpoint=path))
        if isinstance(exc, aiohttp.ClientError | OSError):
            return Failure(TransportError(message, attempt=attempt, endpoint=path))
        return Failure(RequestRejected(message, attempt=attempt, endpoint=path))

    def _trusted_usage(self, ctx: CallContext, result: Result, est: int) -> int:
        """The tokens to settle a successful attempt with: the usage the server reported
        unless it is unsound or beyond :func:`~engine.endpoints.guards.usage_bound` of the
        reservation ``est``, in which case the result's usage becomes an estimate that never
        exceeds ``est`` and the anomaly is counted (and carried by the attempt's event)."""
        used = result.usage.total_tokens
        if result.usage_anomaly is None and used > usage_bound(est):
            result.usage_anomaly = "huge"
        if result.usage_anomaly is not None:
            self.usage_anomalies[result.usage_anomaly] += 1
            if self.usage_anomalies[result.usage_anomaly] == 1:  # once per reason and client
                _log.warning("endpoint.usage_anomaly", endpoint=ctx.path,
                             reason=result.usage_anomaly, replaced_by="estimate")  # fmt: skip
            texts = [c.text for c in result.choices]
            result.usage = estimated_usage(ctx.est_prompt, texts, est)
            return result.usage.total_tokens
        if used:
            return used
        return estimated_usage(ctx.est_prompt, [c.text for c in result.choices], est).total_tokens

    def _timed_out(self, state: _AttemptState, attempt: int, path: str) -> Result | Failure:
        """The watchdog cancelled the attempt: its own timeout, or the call's deadline
        (queued or in flight). An answer already decided stands (the time ran out as the
        permit was released)."""
        if isinstance(state.outcome, Result):
            return state.outcome
        if state.by_attempt:
            message = f"no complete response within {self._timeout:g} s"
            failure = Failure(EndpointTimeout(message, attempt=attempt, endpoint=path))
            failure.permit = state.permit
            return failure
        where = "queued for a permit" if state.t_send is None else "in flight"
        return Failure(DeadlineExceeded(f"deadline passed while {where}", status=state.status,
                                        attempt=attempt, endpoint=path))  # fmt: skip

    def _report(
        self, ctx: CallContext, state: _AttemptState, n: int, attempt: int
    ) -> Result | Failure:
        """Tell the limiter how the attempt went; emit the event of a success or a deadline
        (other failures are recorded by the retry loop)."""
        outcome = state.outcome
        assert outcome is not None
        now = self._clock()
        latency = 0.0 if state.t_send is None else now - state.t_send
        queue_wait = (now if state.t_send is None else state.t_send) - state.t_start
        if isinstance(outcome, Result):
            self._limiter.on_success()
            self._events.success(ctx, outcome, state.status or 200, latency, attempt, n,
                                 state.cost, queue_wait)  # fmt: skip
            return outcome
        outcome.latency = latency
        outcome.queue_wait = queue_wait
        err = outcome.error
        if isinstance(err, EndpointTimeout) and err.status is None:
            self._limiter.on_timeout(permit=outcome.permit)
        elif isinstance(err, DeadlineExceeded):
            self._events.failure(ctx, outcome, n, attempt, None)
        return outcome
