"""Test helpers for the client tests: a scripted aiohttp server on loopback, injected time, a
limiter that records what the client tells it, and a counter of event-loop iterations."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from engine.endpoints.limits import LimiterStatistics

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass
class Step:
    """One scripted answer.

    Attributes:
        status: the HTTP status.
        body: a JSON body, bytes, a function of the request, or None for the default answer.
        headers: extra response headers.
        reset: close the connection without answering.
        delay: seconds before answering.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    reset: bool = False
    delay: float = 0.0


def chat_body(n: int = 1, text: str | None = "ok", **extra: Any) -> dict[str, Any]:
    """A chat completion with ``n`` choices of ``text``."""
    return {
        "id": "gen-123",
        "object": "chat.completion",
        "model": "m-served",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2 * n, "total_tokens": 5 + 2 * n},
        **extra,
    }


class Scripted:
    """An aiohttp server on loopback answering from a script, then with a default answer.

    Attributes:
        requests: ``(path, headers, body)`` of each request, in arrival order.
        arrivals: ``time.monotonic()`` of each arrival.
        answered: ``time.monotonic()`` when each answer was made.
    """

    def __init__(self, default: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.script: deque[Step] = deque()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.arrivals: list[float] = []
        self.answered: list[float] = []
        self.default = default or (lambda req: chat_body(int(req.get("n", 1))))
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    def push(self, *steps: Step) -> None:
        self.script.extend(steps)

    def bodies(self) -> list[dict[str, Any]]:
        """Request bodies, decoded, in arrival order."""
        return [orjson.loads(b) for _, _, b in self.requests]

    @property
    def raw_bodies(self) -> list[bytes]:
        """Request bodies as sent, in arrival order."""
        return [b for _, _, b in self.requests]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.arrivals.append(time.monotonic())
        self.requests.append((request.path, dict(request.headers), raw))
        step = self.script.popleft() if self.script else Step()
        if step.delay:
            await asyncio.sleep(step.delay)
        self.answered.append(time.monotonic())
        if step.reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        body = step.body
        if body is None:
            body = self.default(orjson.loads(raw))
        elif callable(body):
            body = body(request)
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(
            status=step.status,
            body=data,
            headers={"Content-Type": "application/json", **step.headers},
        )

    async def __aenter__(self) -> Scripted:
        app = web.Application()
        app.router.add_post(CHAT, self._handle)
        app.router.add_post(COMPLETIONS, self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class FakeTime:
    """Injected clock and sleep: a sleep records the wait and moves the clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class _Permit:
    def __init__(self, owner: RecordingLimiter, est: int) -> None:
        self.owner = owner
        self.est = est

    def settle(self, used: int) -> None:
        self.owner.settled.append(used)


class _PermitCtx:
    def __init__(self, owner: RecordingLimiter, est: int) -> None:
        self.permit = _Permit(owner, est)

    async def __aenter__(self) -> _Permit:
        return self.permit

    async def __aexit__(self, *exc: object) -> None:
        return None


class RecordingLimiter:
    """A limiter that grants at once and records estimates, settlements and feedback."""

    def __init__(self) -> None:
        self.estimates: list[int] = []
        self.settled: list[int] = []
        self.rate_limited: list[float | None] = []
        self.timeouts = 0
        self.successes = 0

    def permit(self, est_tokens: int = 0, *, requests: int = 1) -> _PermitCtx:
        self.estimates.append(est_tokens)
        return _PermitCtx(self, est_tokens)

    def on_rate_limited(
        self, retry_after: float | None = None, *, permit: object | None = None
    ) -> None:
        self.rate_limited.append(retry_after)

    def on_timeout(self, *, permit: object | None = None) -> None:
        self.timeouts += 1

    def on_success(self) -> None:
        self.successes += 1

    def gate_wait(self) -> float:
        return 0.0

    def statistics(self) -> LimiterStatistics:
        """What it recorded, as a real limiter's snapshot (no limits: 64 slots, no budget)."""
        return LimiterStatistics(
            in_flight=0,
            concurrency_limit=64,
            waiting=0,
            tokens_reserved=0.0,
            tokens_available=math.inf,
            token_debt=0.0,
            gate_open_at=None,
            rate_limited=len(self.rate_limited),
            gate_waits=0,
            requests_admitted=len(self.estimates),
        )


class Iterations:
    """Counts event-loop iterations (a call_soon chain: one step per iteration)."""

    def __init__(self) -> None:
        self.n = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._step)

    def _step(self) -> None:
        self.n += 1
        self._handle = self._loop.call_soon(self._step)

    def stop(self) -> None:
        self._handle.cancel()
