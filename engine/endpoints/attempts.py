"""Endpoint stage: what the attempts of one call share, and the event each attempt emits.

Every attempt (a success, a failure, or a cancellation after it was sent) is one event in the
:class:`~engine.telemetry.events.EventLog`. Events never carry the key, the auth header or
the prompt text (only its length).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from yarl import URL

from ..telemetry.events import EventLog
from ..types import Usage
from .fanout import EndpointKey
from .parsing import Failure, Result
from .redaction import Redactor
from .transport import Watchdog

__all__ = ("AttemptEvents", "CallContext")

_NO_USAGE = Usage()


@dataclass(slots=True)
class CallContext:
    """What every request of one :meth:`~engine.endpoints.client.Client.complete` call shares.

    Attributes:
        session: the client's aiohttp session.
        url: where requests are posted; ``path`` is its path, shown in events and errors.
        key: the endpoint ``(base_url, mode, model)`` whose ``n`` behaviour is remembered.
        kind, group_id, sample_index, policy_version: identity recorded in events.
        est_prompt: estimated prompt tokens; ``max_tokens``: completion tokens per choice.
        prompt_chars: the prompt's length, recorded instead of its text.
        t_end: the call's deadline on the client's (injectable) clock.
        loop: the running loop; ``loop_end`` is the same deadline on its clock.
        watchdog: cancels attempts whose time is up.
    """

    session: aiohttp.ClientSession
    url: URL
    path: str
    key: EndpointKey
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


class AttemptEvents:
    """Emits one event per request attempt; does nothing without an event log."""

    __slots__ = ("_events", "_model", "_redact")

    def __init__(self, events: EventLog | None, model: str, redact: Redactor) -> None:
        self._events = events
        self._model = model
        self._redact = redact

    def success(
        self, ctx: CallContext, r: Result, status: int, latency: float, attempt: int, n: int
    ) -> None:
        """An attempt that returned choices."""
        self._emit(ctx, status=status, latency=latency, attempt=attempt, n=n, usage=r.usage,
                   request_id=r.request_id or r.id)  # fmt: skip

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
        )

    def cancelled(
        self, ctx: CallContext, n: int, attempt: int, status: int | None, latency: float
    ) -> None:
        """An attempt cancelled from outside (a fanned-out sibling failed, a straggler, a
        shutdown) after it was sent: recorded as ``error_class: "cancelled"``, since the
        server may have done (and billed) the work."""
        self._emit(ctx, status=status, latency=latency, attempt=attempt, n=n,
                   error_class="cancelled")  # fmt: skip

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
    ) -> None:
        ev = self._events
        if ev is None:
            return
        u = usage or _NO_USAGE
        ev.emit(
            kind=ctx.kind,
            endpoint=ctx.path,
            model=self._model,
            group_id=ctx.group_id,
            sample_index=ctx.sample_index,
            policy_version=ctx.policy_version,
            status=status,
            latency=latency,
            attempt=attempt,
            n=n,
            prompt_chars=ctx.prompt_chars,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens,
            cost=u.cost,
            error_class=error_class,
            retry_in=retry_in,
            request_id=request_id,
        )
