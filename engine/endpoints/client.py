"""Endpoint stage: the rate-limited OpenAI-compatible client used by generation and judges.

One :class:`Client` owns its connections (:mod:`~engine.endpoints.wire`, or an aiohttp
session with ``EndpointConfig.http_client = "aiohttp"``) and talks to ``/v1/chat/completions`` or
``/v1/completions`` of one endpoint (OpenRouter, OpenAI, vLLM, llama.cpp, the simulated server)::

    async with Client(config.endpoint, limits=config.limits, retry=config.retry,
                      events=events) as client:
        out = await client.complete("2+2=", n=8, group_id="g0", policy_version=3)
        texts = [c.text for c in out.choices]

A call is layered like httpx's send: :meth:`Client.complete` builds the body once,
``_gather`` collects ``n`` choices (:mod:`~engine.endpoints.fanout`; a call for one choice, the
common one, goes straight to its request), ``_request`` retries one request, and
:class:`~engine.endpoints.attempts.AttemptRunner` runs one attempt under the watchdog, holding
a limiter permit around the send. For every call, in order:

1. Renders the request body once (:mod:`~engine.endpoints.payload`) and reuses the same
   bytes on every retry.
2. Before each attempt takes a permit from the limiter (request rate, token budget,
   concurrency, the shared 429 gate) for the estimated tokens.
3. Sends and classifies the response (:func:`~engine.endpoints.parsing.parse_response`).
4. Retries by the rules of :mod:`~engine.endpoints.retry`, waiting what the server asks (at
   most ``RetryConfig.max_server_wait``) or a full-jitter backoff, within the per-call
   deadline.
5. Emits one event per attempt (:class:`~engine.endpoints.attempts.AttemptEvents`).

Retries:

- A 429 (or a 429 code inside a 200 body) is reported to the limiter with the server's wait,
  which closes the shared gate so every sender pauses; the task then waits in the gate, not
  in its own sleep. A 429 without a usable wait reports ``None`` (the limiter's own pause)
  and the task also sleeps its jittered backoff.
- A ``ServerDisconnectedError`` on a reused keep-alive connection (the server closed it as
  we sent) is resent once at once; on a fresh connection it is a transport error.
- An HTTP 200 whose body is not JSON (cut short) or has no choices is retried.
- The deadline covers queueing for permits, attempts and waits; when the next wait (its own,
  or the shared 429 pause it would queue behind) would end past it, the call raises
  :class:`~engine.errors.DeadlineExceeded` at once, its event written.
- What the server sends is untrusted (:mod:`~engine.endpoints.guards`): redirects are not
  followed (a 3xx is a response error naming the location), bodies are read up to
  ``EndpointConfig.max_response_bytes``, JSON nested deeper than 64 levels is refused, an
  unsound usage is replaced by an estimate and counted (``usage_anomalies``), and the key is
  redacted from the choices' text.
- Permits are settled with the response's ``usage`` (``settle(0)`` when the server answered
  an error); after a timeout or a dropped connection the reservation is kept, since the
  server may have done the work.

With a ``seed``, fanned-out requests get ``seed + i`` so they do not all sample the same
completion.

Keys: the API key lives only in the session's Authorization header. Every message built from
upstream text passes through the client's :class:`~engine.endpoints.redaction.Redactor`,
errors are raised without chaining aiohttp exceptions (whose text may hold URLs and
headers), and events never carry the key, the auth header or the prompt text.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import structlog
from yarl import URL

from ..config.sections import EndpointConfig, LimitsConfig, RetryConfig
from ..errors import (
    ClientClosedError,
    ConfigError,
    DeadlineExceeded,
    EndpointError,
)
from ..telemetry.events import EventLog
from ..telemetry.logs import get_logger
from .attempts import AttemptEvents, AttemptRunner, CallContext
from .fanout import ChoiceCaps, chunks, merge
from .limits import Limiter, LimiterProtocol, LimiterStatistics
from .parsing import Completion, Failure, Result, new_completion, parse_response
from .payload import Prompt, build_body, encode, estimate_tokens, prompt_chars
from .providers import ResolvedEndpoint, resolve_endpoint
from .redaction import Redactor, strip_url
from .retry import backoff_delay, server_wait
from .spend import HOSTED_PROVIDERS, SpendMeter
from .transport import Transport
from .wire import check_headers

__all__ = ("Client", "ClientStatistics")


_log = get_logger("engine.endpoints.client")


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of a client's counters (see :meth:`Client.statistics`).

    Attributes:
        calls: :meth:`Client.complete` calls started.
        failures: calls that raised.
        requests: logical requests sent (each fanned-out request counts).
        attempts: HTTP attempts, retries included.
        retries: retries by reason (``rate_limit``, ``server``, ``transport``, ``timeout``,
            ``conflict``, ``response``, ``rejected``, ``disconnect_reused``).
        fanned_out: calls where ``n`` was served by more than one request.
        ignores_n: endpoint (``base_url mode model``) -> most choices it returned for one
            request; 1 means it ignores ``n`` (gone once a later probe came back whole).
        limiter: the limiter's own ``statistics()`` snapshot.
        usage_anomalies: successful responses whose usage was not trusted (replaced by an
            estimate), by reason (``missing``, ``malformed``, ``negative``, ``huge``).
        waits_capped: server-given waits cut to ``RetryConfig.max_server_wait``.
    """

    calls: int
    failures: int
    requests: int
    attempts: int
    retries: Mapping[str, int]
    fanned_out: int
    ignores_n: Mapping[str, int]
    limiter: LimiterStatistics | None = None
    usage_anomalies: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    waits_capped: int = 0


class Client:
    """Rate-limited client for one OpenAI-compatible endpoint.

    Example::

        async with Client(EndpointConfig(base_url=sim.base_url), limits=LimitsConfig(rpm=600),
                          events=EventLog("out/events.jsonl")) as client:
            out = await client.complete("Say hi", n=4, group_id="g1", policy_version=0)

    Args:
        endpoint: the endpoint config; provider presets are applied by :func:`resolve_endpoint`.
        limits: a :class:`~engine.endpoints.limits.Limiter` (share one between clients to share a
            budget), or a LimitsConfig to build one; None builds one from ``LimitsConfig()``.
        retry: retry policy; None uses ``RetryConfig()``.
        events: per-attempt events go here; None records none.
        api_key: the key; None reads ``env[key_env]``.
        env: environment for presets and the key; None uses ``os.environ``.
        clock: monotonic seconds for latency and deadlines (tests inject a fake one).
        sleep: awaited for backoff waits (tests inject one that records instead of sleeping).
        rng: source of backoff jitter.
        spend: prices each answered request and refuses new ones once its budget is spent;
            share one between the generation and judge clients of a run. None: a meter of
            the client's own (built-in prices, no budget).

    Raises:
        ConfigError: the endpoint is unusable, or the key variable (a hosted preset's, or the
            ``api_key_env`` a local endpoint names) is unset.
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        limits: LimitsConfig | LimiterProtocol | None = None,
        retry: RetryConfig | None = None,
        events: EventLog | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        spend: SpendMeter | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._endpoint = endpoint
        self._resolved = resolve_endpoint(endpoint, env)
        key = _api_key(self._resolved, api_key, env)
        self._redact = Redactor(key)
        self._retry = retry or RetryConfig()
        self._limiter, self._owned_limiter, self._pool_size = _limiter_for(limits, self._retry)
        self._events = AttemptEvents(events, self._redact)
        self._clock = clock or time.monotonic
        self.spend = spend if spend is not None else SpendMeter()
        self._runner = AttemptRunner(
            self._limiter, endpoint.timeout, self._clock, self._redact, self._events,
            endpoint.max_response_bytes, self.spend,
            hosted=self._resolved.provider in HOSTED_PROVIDERS,
        )  # fmt: skip
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._headers = _headers(self._resolved, key)
        self._urls = {
            mode: _url(self._resolved.base_url, suffix)
            for mode, suffix in (("chat", "chat/completions"), ("completions", "completions"))
        }
        # the endpoint keys of the configured model (one tuple per call saved)
        self._keys = {m: (self._resolved.base_url, m, self._resolved.model) for m in self._urls}
        # Made on first use, inside the running loop.
        self._transport: Transport | None = None
        self._closed = False
        self._caps = ChoiceCaps()
        self._calls = 0
        self._failures = 0
        self._requests = 0
        self._attempts = 0
        self._fanned_out = 0
        self._retries: Counter[str] = Counter()
        self._waits_capped = 0

    def __repr__(self) -> str:
        ep = self._resolved
        return (
            f"Client(provider={ep.provider!r}, base_url={strip_url(ep.base_url)!r}, "
            f"model={ep.model!r}, closed={self._closed})"
        )

    @property
    def endpoint(self) -> ResolvedEndpoint:
        """The resolved endpoint (no key)."""
        return self._resolved

    @property
    def limiter(self) -> LimiterProtocol:
        """The limiter every attempt takes a permit from."""
        return self._limiter

    def share_limiter(self, limiter: LimiterProtocol) -> None:
        """Take every later attempt's permit from ``limiter`` (a limit shared beyond this
        client, e.g. a cluster's limiter actor); a limiter the client made is still closed
        with it. Call it before requests are in flight."""
        self._limiter = limiter
        self._runner._limiter = limiter

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        self._transport_or_raise()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session (and a limiter the client made); later calls raise
        :class:`ClientClosedError`. Idempotent."""
        self._closed = True
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()
        if self._owned_limiter is not None:
            await self._owned_limiter.aclose()

    def _transport_or_raise(self) -> Transport:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._transport is None:
            native = None
            if self._endpoint.http_client == "native":
                native = {mode: url for mode, (url, _) in self._urls.items()}
            self._transport = Transport(self._headers, self._pool_size, native)
        return self._transport

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of the counters and the limiter's statistics."""
        return ClientStatistics(
            calls=self._calls,
            failures=self._failures,
            requests=self._requests,
            attempts=self._attempts,
            retries=MappingProxyType(dict(self._retries)),
            fanned_out=self._fanned_out,
            ignores_n=self._caps.snapshot(),
            limiter=self._limiter.statistics(),
            usage_anomalies=MappingProxyType(dict(self._runner.usage_anomalies)),
            waits_capped=self._waits_capped,
        )

    # ------------------------------------------------------------------ the call

    async def complete(
        self,
        prompt: Prompt,
        *,
        n: int = 1,
        kind: str = "generation",
        group_id: str | None = None,
        sample_index: int | None = None,
        policy_version: int | None = None,
        mode: Literal["chat", "completions"] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        logprobs: bool | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        deadline: float | None = None,
        model: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        episode: str | None = None,
        turn: int | None = None,
    ) -> Completion:
        """Sample ``n`` completions of ``prompt``: a :class:`Completion` of exactly ``n`` choices.

        Args:
            prompt: a string, or chat messages (chat mode only).
            n: completions wanted; asked natively, fanned out when the endpoint ignores it.
            kind, group_id, sample_index, policy_version: identity in events (None: the
                group bound in structlog's context).
            mode: ``chat`` or ``completions``; None uses the endpoint config.
            max_tokens, temperature, logprobs, stop: None uses the endpoint config.
            seed: sampling seed; fanned-out requests get ``seed + i``.
            response_format: passed through (e.g. ``{"type": "json_object"}``).
            extra_body: merged into the request body last (e.g. vLLM's ``return_token_ids``).
            deadline: seconds for the whole call, queueing and retries included; None uses
                ``EndpointConfig.deadline``.
            model: the model named in the request and its events (e.g. a LoRA adapter).
            tools: OpenAI ``tools`` (chat mode); calls come back in ``Choice.tool_calls``.
            episode, turn: recorded in the events (multi-turn, :mod:`engine.environments`).

        Raises:
            EndpointError: a subclass saying why, with status, attempt and endpoint.
            ClientClosedError: the client was closed.
            ValueError: ``n`` < 1, or chat messages or tools in completions mode.
        """
        transport = self._transport or self._transport_or_raise()  # None once closed
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not transport.pacer.start_now():  # a burst of calls: wait for a later iteration
            await transport.pacer.queue()
        mode = mode or self._endpoint.mode
        t0 = self._clock()
        max_tokens = self._endpoint.max_tokens if max_tokens is None else max_tokens
        model = model or self._resolved.model
        body = build_body(self._endpoint, model, prompt, mode, max_tokens=max_tokens,
                          temperature=temperature, logprobs=logprobs, stop=stop,
                          response_format=response_format, extra_body=extra_body,
                          tools=tools)  # fmt: skip
        ctx = self._call_context(transport, prompt, mode, model, max_tokens, t0, deadline,
                                 kind=kind, group_id=group_id, sample_index=sample_index,
                                 policy_version=policy_version)  # fmt: skip
        ctx.episode, ctx.turn = episode, turn  # None outside multi-turn rollouts
        self._calls += 1
        try:
            if n == 1:  # the common call, its first attempt awaited here (one level less)
                data = encode(body, 1, seed)
                est = ctx.est_prompt + ctx.max_tokens
                self._requests += 1
                self._attempts += 1
                outcome = await self._runner.run(ctx, data, est, 1, 1, False)
                head = (outcome if isinstance(outcome, Result)
                        else await self._retry_from(ctx, data, est, 1, outcome))  # fmt: skip
            else:
                return self._completion(await self._gather(ctx, body, n, seed), n, t0)
        except BaseException:
            self._failures += 1
            raise
        return self._one(head, t0)

    def _call_context(
        self,
        transport: Transport,
        prompt: Prompt,
        mode: Literal["chat", "completions"],
        model: str,
        max_tokens: int,
        t0: float,
        deadline: float | None,
        *,
        kind: str,
        group_id: str | None,
        sample_index: int | None,
        policy_version: int | None,
    ) -> CallContext:
        """What the call's requests share, the deadline on both clocks among it."""
        if group_id is None:  # the rollout stage binds the group it works for
            group_id = structlog.contextvars.get_contextvars().get("group_id")
        budget = self._endpoint.deadline if deadline is None else deadline
        loop = asyncio.get_running_loop()
        url, path = self._urls[mode]
        if type(prompt) is str:  # what estimate_tokens and prompt_chars say of a string
            chars = len(prompt)
            est = chars // 4 + 1
        else:
            est, chars = estimate_tokens(prompt), prompt_chars(prompt)
        lane = transport.lane
        return CallContext(
            session=transport.session,
            url=url,
            path=path,
            key=self._keys[mode]
            if model is self._resolved.model
            else (self._resolved.base_url, mode, model),
            model=model,
            kind=kind,
            group_id=group_id,
            sample_index=sample_index,
            policy_version=policy_version,
            est_prompt=est,
            max_tokens=max_tokens,
            prompt_chars=chars,
            t_end=t0 + budget,
            loop=loop,
            watchdog=transport.watchdog,
            loop_end=loop.time() + budget,
            lane=lane,
            head=transport.heads[mode] if lane is not None else b"",
        )

    def _one(self, head: Result, t0: float) -> Completion:
        """The result of a call for one choice: its request's first choice (what
        :meth:`_completion` makes of one part)."""
        choices = head.choices
        return new_completion(
            choices if len(choices) <= 1 else choices[:1],
            head.usage,
            head.id,
            head.model,
            self._clock() - t0,
            head.attempts,
            1,
            head.request_id,
            head.prompt_token_ids,
        )

    def _completion(self, parts: list[Result], n: int, t0: float) -> Completion:
        """The call's result: the requests' choices merged into exactly ``n``."""
        if len(parts) > 1:
            self._fanned_out += 1
        choices, usage, attempts = merge(parts, n)
        head = parts[0]
        return Completion(
            choices=choices,
            usage=usage,
            id=head.id,
            model=head.model,
            latency=self._clock() - t0,
            attempts=attempts,
            requests=len(parts),
            request_id=head.request_id,
            prompt_token_ids=head.prompt_token_ids,
        )

    # ------------------------------------------------------------------ n choices

    async def _gather(
        self, ctx: CallContext, body: dict[str, Any], n: int, seed: int | None
    ) -> list[Result]:
        """The results of the requests that together return at least ``n`` choices."""
        if n == 1:
            parts = [await self._request(ctx, body, 1, seed)]
        elif self._caps.fan_out_at_once(ctx.key, self._endpoint.use_n):
            sizes = chunks(n, self._caps.get(ctx.key) or 1)
            parts = await self._fan_out(ctx, body, sizes, seed, 0)
        else:
            parts = await self._ask_natively(ctx, body, n, seed)
        return await self._top_up(ctx, body, n, seed, parts)

    async def _ask_natively(
        self, ctx: CallContext, body: dict[str, Any], n: int, seed: int | None
    ) -> list[Result]:
        """Ask for ``n`` in one request; fan the rest out when it comes back short."""
        capped = self._caps.get(ctx.key) is not None
        first = await self._request(ctx, body, n, seed)
        got = len(first.choices)
        if got < n:
            if self._caps.answered_short(ctx.key, got):
                _log.info("endpoint.ignores_n", endpoint=ctx.path, model=self._resolved.model,
                          asked=n, got=got)  # fmt: skip
            return [first, *await self._fan_out(ctx, body, chunks(n - got, got), seed, 1)]
        if capped:
            self._caps.answered_whole(ctx.key)
            _log.info("endpoint.honours_n", endpoint=ctx.path, model=self._resolved.model, n=n)
        return [first]

    async def _top_up(
        self,
        ctx: CallContext,
        body: dict[str, Any],
        n: int,
        seed: int | None,
        parts: list[Result],
    ) -> list[Result]:
        """Ask again for the choices still missing.

        A fanned-out request can come back short as well (an endpoint that honours ``n`` only
        sometimes); every request returns at least one choice, else it failed, so this ends.
        """
        got = sum(len(p.choices) for p in parts)
        while got < n:
            sizes = chunks(n - got, self._caps.get(ctx.key) or 1)
            more = await self._fan_out(ctx, body, sizes, seed, len(parts))
            parts += more
            got += sum(len(p.choices) for p in more)
        return parts

    async def _fan_out(
        self,
        ctx: CallContext,
        body: dict[str, Any],
        sizes: list[int],
        seed: int | None,
        seed_offset: int,
    ) -> list[Result]:
        """Run one request per size concurrently; the first failure cancels the rest."""
        tasks = [
            asyncio.ensure_future(
                self._request(ctx, body, k, None if seed is None else seed + seed_offset + i)
            )
            for i, k in enumerate(sizes)
        ]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if pending:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # retrieve every exception (so none is reported as never retrieved); raise the first
        errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if errors:
            raise errors[0]
        return [t.result() for t in tasks]

    # ------------------------------------------------------------------ one request

    async def _request(
        self, ctx: CallContext, body: dict[str, Any], n: int, seed: int | None
    ) -> Result:
        """One logical request with retries. The body bytes are built once."""
        data = encode(body, n, seed)
        est = ctx.est_prompt + ctx.max_tokens * n
        self._requests += 1
        self._attempts += 1
        outcome = await self._runner.run(ctx, data, est, n, 1, False)
        if isinstance(outcome, Result):
            return outcome
        return await self._retry_from(ctx, data, est, n, outcome)

    async def _retry_from(
        self, ctx: CallContext, data: bytes, est: int, n: int, outcome: Failure
    ) -> Result:
        """Retry a request whose first attempt failed with ``outcome``, until one succeeds
        (its result) or the failure is final (raised, its event written)."""
        attempt = 1
        used_immediate = False
        while True:
            if isinstance(outcome.error, DeadlineExceeded):
                raise outcome.error  # its event was emitted with the attempt
            used_immediate = used_immediate or outcome.immediate
            wait, hint, reason = self._retry_wait(outcome, attempt)
            if outcome.rate_limited:
                # every sender pauses, not only this one
                self._limiter.on_rate_limited(hint, permit=outcome.permit)
            self._raise_if_final(ctx, outcome, n, attempt, wait)
            self._note_retry(ctx, outcome, n, attempt, wait, reason)
            if wait > 0 and not (outcome.rate_limited and hint is not None):
                # on a 429 with a server-given wait the limiter's shared gate does the waiting
                await self._sleep(wait)
            attempt += 1
            self._attempts += 1
            result = await self._runner.run(ctx, data, est, n, attempt, used_immediate)
            if isinstance(result, Result):
                return result
            outcome = result

    def _retry_wait(self, outcome: Failure, attempt: int) -> tuple[float, float | None, str]:
        """The wait before the next attempt, the server's wait if it gave one, and the reason.

        A stale reused connection is resent at once; otherwise the server's wait, cut to
        ``RetryConfig.max_server_wait``, replaces the full-jitter backoff.
        """
        if outcome.immediate:
            return 0.0, None, "disconnect_reused"
        hint = server_wait(outcome.headers, outcome.error_body)
        if hint is not None:
            cap = self._retry.max_server_wait
            if hint > cap:  # a server's word is not law: one 429 must not stall every sender
                self._waits_capped += 1
                _log.info("endpoint.server_wait_capped", asked=hint, cap=cap)
                hint = cap
            return hint, hint, outcome.error.error_class
        retry = self._retry
        wait = backoff_delay(attempt, retry.backoff_base, retry.backoff_cap, self._rng)
        return wait, None, outcome.error.error_class

    def _parse(
        self,
        raw: bytes,
        status: int,
        headers: Mapping[str, str],
        n: int,
        attempt: int,
        path: str,
    ) -> Result | Failure:
        """Classify one HTTP response with this client's redactor (``n`` is not used)."""
        return parse_response(raw, status, headers, attempt, path, self._redact)

    def _raise_if_final(
        self, ctx: CallContext, outcome: Failure, n: int, attempt: int, wait: float
    ) -> None:
        """Raise when the failure is not retryable, the attempts are spent, or the wait would
        end past the deadline; the failure's event is emitted first."""
        err = outcome.error
        if not err.retryable or attempt >= self._retry.max_attempts:
            self._events.failure(ctx, outcome, n, attempt, None)
            raise err
        if self._clock() + wait > ctx.t_end:
            self._events.failure(ctx, outcome, n, attempt, None)
            raise DeadlineExceeded(
                f"giving up: the next wait ({wait:.3g} s) would pass the deadline; "
                f"last error: {_bare_message(err)}",
                status=err.status,
                attempt=attempt,
                endpoint=ctx.path,
            )

    def _note_retry(
        self, ctx: CallContext, outcome: Failure, n: int, attempt: int, wait: float, reason: str
    ) -> None:
        """Record a failure that will be retried after ``wait`` seconds."""
        err = outcome.error
        self._events.failure(ctx, outcome, n, attempt, wait)
        self._retries[reason] += 1
        _log.debug("endpoint.retry", endpoint=ctx.path, attempt=attempt, status=err.status,
                   error_class=err.error_class, retry_in=wait, error=str(err))  # fmt: skip


def _api_key(ep: ResolvedEndpoint, api_key: str | None, env: Mapping[str, str]) -> str | None:
    """The key given, else the one in ``env[ep.key_env]``.

    Raises:
        ConfigError: a key variable is named (a hosted preset's, or a local ``api_key_env``)
            but unset.
    """
    key = api_key if api_key is not None else (env.get(ep.key_env) or None)
    if key is None and ep.key_env:
        raise ConfigError(
            f"no API key: set the environment variable {ep.key_env}",
            key="endpoint.api_key_env",
        )
    return key


def _limiter_for(
    limits: LimitsConfig | LimiterProtocol | None, retry: RetryConfig
) -> tuple[LimiterProtocol, Limiter | None, int]:
    """The limiter to use, the one the client made and must close (None for a shared one),
    and the connection pool size (the concurrency limit)."""
    if limits is None or isinstance(limits, LimitsConfig):
        limits = limits or LimitsConfig()
        # the 429 gate's own pause (a 429 without a usable wait) follows our backoff
        base, cap = retry.backoff_base, retry.backoff_cap
        gate = (base, max(base, cap)) if base > 0 else (1.0, 60.0)
        limiter = Limiter(limits, gate_backoff=gate[0], gate_backoff_cap=gate[1])
        return limiter, limiter, limits.max_concurrency
    return limits, None, int(limits.statistics().concurrency_limit or 64)


def _headers(ep: ResolvedEndpoint, key: str | None) -> dict[str, str]:
    """The session's headers: JSON both ways, the provider's, and the key's Authorization."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(ep.headers)
    try:
        check_headers(headers)
    except ValueError as exc:
        raise ConfigError(f"endpoint headers: {exc}", key="endpoint.provider") from None
    if key is not None:
        if any(c in key for c in "\r\n\x00"):
            where = f" in ${ep.key_env}" if ep.key_env else ""
            raise ConfigError(
                f"the API key{where} holds a line break or NUL: check how it was set",
                key="endpoint.api_key_env",
            )
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _url(base_url: str, suffix: str) -> tuple[URL, str]:
    """The URL of an API route, and its path (shown in events and errors)."""
    url = f"{base_url}/{suffix}"
    return URL(url), urllib.parse.urlsplit(url).path


def _bare_message(err: EndpointError) -> str:
    """An EndpointError's message without the ``(endpoint, status, attempt)`` suffix it adds."""
    return str(err).rsplit(" (", 1)[0]
