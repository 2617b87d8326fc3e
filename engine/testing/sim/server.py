"""The simulated OpenAI-compatible server: routes, accounting and the generation pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

import orjson
from aiohttp import web

from .config import Faults, SimConfig, SimCounters, SimStatistics
from .faults import EARLY_FAULTS, FaultInjector
from .limits import RateLimits
from .model import default_judge
from .requests import Endpoint, ParsedRequest, Rejected, parse_request
from .responses import JSON_HEADERS, Payload, build_payload, error_response, unauthorized

__all__ = ("SimServer",)

_DEFAULT_CONFIG: Final = SimConfig()
"""The settings of a server made without any (frozen, so sharing it is safe)."""

_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly.)"
)


class SimServer:
    """The simulated OpenAI-compatible server, running in the current event loop.

    ``async with SimServer(SimConfig(...)) as sim:`` binds ``127.0.0.1`` on a free port (or
    ``port``) and sets ``sim.base_url`` to ``http://127.0.0.1:PORT/v1``. ``clock`` (seconds,
    monotonic) drives the rate-limit buckets and the busy-time integrals; inject one to test
    limits without sleeping.

    Attributes:
        config: the current settings; replaced whole by :meth:`reconfigure`.
        host: the interface to bind.
        port: the requested port; the bound one once started.
        stats: the live counters; :meth:`statistics` returns a frozen, consistent copy.
    """

    def __init__(
        self,
        config: SimConfig = _DEFAULT_CONFIG,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.stats = SimCounters()
        self._clock = clock
        self._rng = random.Random(config.seed)  # fault and latency draws
        self._faults = FaultInjector(config.faults, self._rng)
        self._limits = self._rate_limits(config)
        self._requests = 0  # generation requests so far: the fake model's request_number
        self._peers: set[object] = set()  # peer addresses seen, for stats.connections
        self._served = self._served_cap(config)
        self._closing: asyncio.Event | None = None  # set on close: hanging requests answer
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._created = int(time.time())  # "created" of the listed models

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; available once started."""
        if self._base_url is None:
            raise RuntimeError("SimServer is not started")
        return self._base_url

    async def start(self) -> str:
        """Bind and serve in the current event loop; returns :attr:`base_url`."""
        if self._runner is not None:
            raise RuntimeError("SimServer already started")
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/sim/stats", self._stats)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,  # a client that hangs up cancels its request
            keepalive_timeout=self.config.keepalive_timeout,
            shutdown_timeout=0.5,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self._runner = runner
        self._closing = asyncio.Event()
        self.port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._base_url = f"http://{host}:{self.port}/v1"
        self.stats.started_at = self.stats.updated_at = self._clock()
        return self._base_url

    async def close(self) -> None:
        """Stop serving; requests that hang on a ``timeout`` fault are answered first."""
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- live changes ---------------------------------------------------------------------

    def reconfigure(self, **changes: Any) -> None:
        """Replace config fields while serving, e.g. ``sim.reconfigure(rpm=60, latency=0.01)``.

        Changing ``rpm``, ``tpm`` or ``burst_seconds`` starts full buckets; ``keepalive_timeout``
        only applies to a server started afterwards.
        """
        old, new = self.config, replace(self.config, **changes)
        self.config = new
        self._faults.configure(new.faults)
        if any(k in changes for k in ("rpm", "tpm", "burst_seconds")):
            self._limits = self._rate_limits(new)
        self._limits.headers = new.rate_headers
        if new.max_concurrency_served != old.max_concurrency_served:
            self._served = self._served_cap(new)

    def set_faults(self, faults: Faults | None = None, **rates: float) -> None:
        """Set the fault rates: a whole :class:`Faults`, or keyword rates (others become 0)."""
        self.reconfigure(faults=faults if faults is not None else Faults(**rates))

    def statistics(self) -> SimStatistics:
        """A frozen copy of the counters with the busy-time integrals brought up to now."""
        self.stats.integrate(self._clock())
        return self.stats.snapshot()

    def _rate_limits(self, config: SimConfig) -> RateLimits:
        return RateLimits(
            config.rpm,
            config.tpm,
            config.burst_seconds,
            headers=config.rate_headers,
            clock=self._clock,
        )

    @staticmethod
    def _served_cap(config: SimConfig) -> asyncio.Semaphore | None:
        cap = config.max_concurrency_served
        return asyncio.Semaphore(cap) if cap is not None else None

    # -- accounting -----------------------------------------------------------------------

    def _count(self, request: web.Request) -> None:
        s = self.stats
        s.requests += 1
        s.by_endpoint[request.path] += 1
        transport = request.transport
        if transport is not None:
            peer = transport.get_extra_info("peername")
            if peer not in self._peers:
                self._peers.add(peer)
                s.connections += 1

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def _respond(self, response: web.StreamResponse) -> web.StreamResponse:
        self.stats.by_status[response.status] += 1
        return response

    # -- simple endpoints -----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        self._count(request)
        self.stats.by_status[200] += 1
        return web.Response(body=b'{"status":"ok"}', headers=JSON_HEADERS)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        if not self._authorized(request):
            return self._respond(unauthorized())
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "sim"}
            for m in self.config.models
        ]
        body = orjson.dumps({"object": "list", "data": data})
        return self._respond(web.Response(body=body, headers=JSON_HEADERS))

    async def _stats(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self.statistics().as_dict())
        return web.Response(body=body, headers=JSON_HEADERS)

    # -- generation -----------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "completions")

    async def _generation(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        """One generation request, counted in flight while it is handled."""
        self._count(request)
        s = self.stats
        s.integrate(self._clock())
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            response = await self._generate(request, endpoint)
        except asyncio.CancelledError:
            s.cancelled += 1
            raise
        finally:
            s.integrate(self._clock())
            s.in_flight -= 1
        if response is None:  # the connection was reset on purpose: nothing was sent
            return web.Response()
        return self._respond(response)

    async def _generate(
        self, request: web.Request, endpoint: Endpoint
    ) -> web.StreamResponse | None:
        """Authorize, parse, admit, draw a fault, then answer (see :mod:`engine.testing.sim`)."""
        if not self._authorized(request):
            return unauthorized()
        parsed = await self._parse(request, endpoint)
        if isinstance(parsed, web.Response):
            return parsed
        n_out = parsed.n if self.config.honor_n else 1
        prompt_tokens = sum(len(text) // 4 + 1 for text in parsed.prompts)
        cost = prompt_tokens + len(parsed.prompts) * n_out * parsed.max_tokens
        limited, limit_headers = self._limits.admit(cost)
        if limited is not None:
            self.stats.rate_limited += 1
            return limited
        fault = self._faults.draw()
        if fault is not None:
            self.stats.faults[fault] += 1
            if fault in EARLY_FAULTS:
                return self._faults.early_response(fault)
            if fault == "short_n":
                n_out //= 2
        return await self._answer(request, parsed, fault, n_out, prompt_tokens, limit_headers)

    async def _parse(
        self, request: web.Request, endpoint: Endpoint
    ) -> ParsedRequest | web.Response:
        """The validated request, or the 400 that answers it."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, _BAD_JSON)
        try:
            return parse_request(body, endpoint, request.headers.get("x-sim-role") == "judge")
        except Rejected as e:
            code = "invalid_value" if e.param else None
            return error_response(400, str(e), param=e.param, code=code)

    async def _answer(
        self,
        request: web.Request,
        parsed: ParsedRequest,
        fault: str | None,
        n_out: int,
        prompt_tokens: int,
        limit_headers: dict[str, str],
    ) -> web.StreamResponse | None:
        """Run the model, wait the latency (or hang), then send the payload or the late fault."""
        self._requests += 1
        if parsed.is_judge:
            self.stats.judge_requests += 1
        # error_200 alternates: an error body (even turns), choices that finished in error (odd)
        error_choices = fault == "error_200" and self._faults.turn(fault) % 2 == 1
        try:
            payload = self._payload(parsed, n_out, prompt_tokens, error_choices)
        except Exception as e:  # a plugged model or judge failed: a 500 like a real server's
            self.stats.model_errors += 1
            return error_response(500, f"model error: {e!r}", type_="server_error")
        if fault == "timeout":
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.config.faults.hang_seconds)
        else:
            await self._serve_latency(payload.longest)
        if fault is not None and fault not in ("timeout", "short_n"):
            return await self._faults.late_response(fault, request, payload.body, error_choices)
        usage = payload.body["usage"]
        self.stats.choices += len(payload.body["choices"])
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage["completion_tokens"]
        body = orjson.dumps(payload.body)
        return web.Response(body=body, headers={**JSON_HEADERS, **limit_headers})

    def _payload(
        self, parsed: ParsedRequest, n_out: int, prompt_tokens: int, error_choices: bool
    ) -> Payload:
        config = self.config
        fn = (config.judge or default_judge) if parsed.is_judge else config.model
        return build_payload(
            parsed,
            fn,
            n_out=n_out,
            prompt_tokens=prompt_tokens,
            server_seed=config.seed,
            number=self._requests,
            error_choices=error_choices,
        )

    async def _serve_latency(self, longest: int) -> None:
        """Sleep the drawn latency, inside the served-concurrency cap when there is one."""
        config = self.config
        delay = config.latency
        if delay and config.latency_sigma:
            delay *= math.exp(config.latency_sigma * self._rng.gauss(0.0, 1.0))
        delay += config.per_token_latency * longest
        served = self._served
        if served is None:
            if delay > 0:
                await asyncio.sleep(delay)
            return
        s = self.stats
        s.queued += 1
        s.max_queued = max(s.max_queued, s.queued)
        try:
            await served.acquire()
        finally:
            s.queued -= 1
        try:
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            served.release()
