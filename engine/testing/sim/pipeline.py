"""The simulated server's answer to one generation request: parsing, rate limits, the fault
draw, the fake model and the latency."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Collection, Mapping
from typing import Final

import orjson
from aiohttp import web

from .adapters import SimAdapter
from .config import SimConfig, SimCounters
from .faults import EARLY_FAULTS, FaultInjector
from .limits import RateLimits
from .model import default_judge
from .requests import Endpoint, ParsedRequest, Rejected, parse_request
from .responses import JSON_HEADERS, Payload, build_payload, error_response

__all__ = ("GenerationPipeline",)

_BAD_JSON: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly.)"
)


class GenerationPipeline:
    """Answers generation requests as configured, counting them in ``stats``.

    One seeded RNG draws the faults and the latencies; the request number (from 1) feeds the
    fake model. :meth:`close` answers requests that hang on a ``timeout`` fault. A request
    whose ``model`` is in ``adapters`` (the server's loaded LoRA adapters, read live) is
    answered by that adapter.

    Attributes:
        config: the current settings (replace with :meth:`configure`).
    """

    def __init__(
        self,
        config: SimConfig,
        stats: SimCounters,
        clock: Callable[[], float],
        adapters: Mapping[str, SimAdapter] | None = None,
    ) -> None:
        self.config = config
        self._adapters: Mapping[str, SimAdapter] = {} if adapters is None else adapters
        self._stats = stats
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._faults = FaultInjector(config.faults, self._rng)
        self._limits = self._rate_limits(config)
        self._served = self._served_cap(config)
        self._requests = 0
        self._closing = asyncio.Event()

    def configure(self, config: SimConfig, changed: Collection[str]) -> None:
        """Use ``config`` from the next request on; changing ``rpm``, ``tpm`` or
        ``burst_seconds`` (in ``changed``) starts full buckets."""
        old, self.config = self.config, config
        self._faults.configure(config.faults)
        if any(k in changed for k in ("rpm", "tpm", "burst_seconds")):
            self._limits = self._rate_limits(config)
        self._limits.headers = config.rate_headers
        if config.max_concurrency_served != old.max_concurrency_served:
            self._served = self._served_cap(config)

    def open(self) -> None:
        """Start serving: ``timeout`` faults hang again."""
        self._closing = asyncio.Event()

    def close(self) -> None:
        """Answer the requests hanging on a ``timeout`` fault now."""
        self._closing.set()

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

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse | None:
        """Parse, admit, draw a fault, then answer (see :mod:`engine.testing.sim`); None when
        the connection was reset on purpose."""
        parsed = await self._parse(request, endpoint)
        if isinstance(parsed, web.Response):
            return parsed
        adapter = self._adapters.get(parsed.model)
        if adapter is None and self.config.strict_models and parsed.model not in self.config.models:
            return error_response(
                404, f"The model `{parsed.model}` does not exist.", type_="NotFoundError",
                param="model", code=404,
            )  # fmt: skip
        n_out = parsed.n if self.config.honor_n else 1
        prompt_tokens = sum(len(text) // 4 + 1 for text in parsed.prompts)
        cost = prompt_tokens + len(parsed.prompts) * n_out * parsed.max_tokens
        limited, limit_headers = self._limits.admit(cost)
        if limited is not None:
            self._stats.rate_limited += 1
            return limited
        fault = self._faults.draw()
        if fault is not None:
            self._stats.faults[fault] += 1
            if fault in EARLY_FAULTS:
                return self._faults.early_response(fault)
            if fault == "short_n":
                n_out //= 2
        return await self._answer(
            request, parsed, fault, n_out, prompt_tokens, limit_headers, adapter
        )

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
        adapter: SimAdapter | None,
    ) -> web.StreamResponse | None:
        """Run the model, wait the latency (or hang), then send the payload or the late fault."""
        self._requests += 1
        if parsed.is_judge:
            self._stats.judge_requests += 1
        # error_200 alternates: an error body (even turns), choices that finished in error (odd)
        error_choices = fault == "error_200" and self._faults.turn(fault) % 2 == 1
        try:
            payload = self._payload(parsed, n_out, prompt_tokens, error_choices, adapter)
        except Exception as e:  # a plugged model or judge failed: a 500 like a real server's
            self._stats.model_errors += 1
            return error_response(500, f"model error: {e!r}", type_="server_error")
        if fault == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.config.faults.hang_seconds)
        else:
            await self._serve_latency(payload.longest)
        if fault is not None and fault not in ("timeout", "short_n"):
            return await self._faults.late_response(fault, request, payload.body, error_choices)
        usage = payload.body["usage"]
        self._stats.choices += len(payload.body["choices"])
        self._stats.prompt_tokens += usage["prompt_tokens"]
        self._stats.completion_tokens += usage["completion_tokens"]
        if self.config.usage_cost is not None:
            tokens = usage["prompt_tokens"] + usage["completion_tokens"]
            usage["cost"] = self.config.usage_cost * tokens
        body = orjson.dumps(payload.body)
        return web.Response(body=body, headers={**JSON_HEADERS, **limit_headers})

    def _payload(
        self,
        parsed: ParsedRequest,
        n_out: int,
        prompt_tokens: int,
        error_choices: bool,
        adapter: SimAdapter | None,
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
            adapter=adapter,
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
        s = self._stats
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
