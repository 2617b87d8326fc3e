"""The simulated OpenAI-compatible server: binding, routes and request accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

import orjson
from aiohttp import web

from .adapters import SimAdapter
from .config import Faults, SimConfig, SimCounters, SimStatistics
from .lora import AdapterRegistry, parse_json, route_missing
from .pipeline import GenerationPipeline
from .requests import Endpoint
from .responses import JSON_HEADERS, unauthorized

__all__ = ("SimServer",)

_DEFAULT_CONFIG: Final = SimConfig()
"""The settings of a server made without any (frozen, so sharing it is safe)."""


class SimServer:
    """The simulated OpenAI-compatible server, running in the current event loop: binds, routes,
    counts, and hands generation requests to its :class:`~.pipeline.GenerationPipeline`.

    ``async with SimServer(SimConfig(...)) as sim:`` binds ``127.0.0.1`` on a free port (or
    ``port``) and sets ``sim.base_url`` to ``http://127.0.0.1:PORT/v1``. ``clock`` (seconds,
    monotonic) drives the rate-limit buckets and the busy-time integrals; inject one to test
    limits without sleeping.

    Attributes:
        config: the current settings; replaced whole by :meth:`reconfigure`.
        host: the interface to bind.
        port: the requested port; the bound one once started.
        counters: the live counters; :meth:`statistics` returns a frozen, consistent copy.
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
        self.counters = SimCounters()
        self._clock = clock
        self._lora = AdapterRegistry()
        self._pipeline = GenerationPipeline(config, self.counters, clock, self._lora.loaded)
        self._peers: set[object] = set()  # peer addresses seen, for counters.connections
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
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
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
        self._pipeline.open()
        self.port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._base_url = f"http://{host}:{self.port}/v1"
        self.counters.started_at = self.counters.updated_at = self._clock()
        return self._base_url

    async def close(self) -> None:
        """Stop serving; requests that hang on a ``timeout`` fault are answered first."""
        if self._runner is None:
            return
        self._pipeline.close()
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
        self.config = replace(self.config, **changes)
        self._pipeline.configure(self.config, changes)

    def set_faults(self, faults: Faults | None = None, **rates: float) -> None:
        """Set the fault rates: a whole :class:`Faults`, or keyword rates (others become 0)."""
        self.reconfigure(faults=faults if faults is not None else Faults(**rates))

    @property
    def adapters(self) -> dict[str, SimAdapter]:
        """The loaded LoRA adapters by name, in load order (a copy)."""
        return dict(self._lora.loaded)

    def statistics(self) -> SimStatistics:
        """A frozen copy of the counters with the busy-time integrals brought up to now."""
        self.counters.integrate(self._clock())
        return self.counters.snapshot()

    # -- accounting -----------------------------------------------------------------------

    def _count(self, request: web.Request) -> None:
        s = self.counters
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
        self.counters.by_status[response.status] += 1
        return response

    # -- simple endpoints -----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        self._count(request)
        self.counters.by_status[200] += 1
        return web.Response(body=b'{"status":"ok"}', headers=JSON_HEADERS)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        if not self._authorized(request):
            return self._respond(unauthorized())
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "sim"}
            for m in self.config.models
        ]
        data += self._lora.cards()
        body = orjson.dumps({"object": "list", "data": data})
        return self._respond(web.Response(body=body, headers=JSON_HEADERS))

    async def _load_lora(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        if not self._authorized(request):
            return self._respond(unauthorized())
        if not self.config.runtime_lora:
            return self._respond(route_missing())
        body = parse_json(await request.read())
        return self._respond(await self._lora.load(body, self.config))

    async def _unload_lora(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        if not self._authorized(request):
            return self._respond(unauthorized())
        if not self.config.runtime_lora:
            return self._respond(route_missing())
        body = parse_json(await request.read())
        return self._respond(await self._lora.unload(body))

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
        s = self.counters
        s.integrate(self._clock())
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            if self._authorized(request):
                response = await self._pipeline.handle(request, endpoint)
            else:
                response = unauthorized()
        except asyncio.CancelledError:
            s.cancelled += 1
            raise
        finally:
            s.integrate(self._clock())
            s.in_flight -= 1
        if response is None:  # the connection was reset on purpose: nothing was sent
            return web.Response()
        return self._respond(response)
