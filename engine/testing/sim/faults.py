"""Fault injection of the simulated server: one seeded draw per generation request, and the
broken (or hostile: :data:`~.config.HOSTILE_KINDS`) responses each fault kind sends."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Final

import orjson
from aiohttp import web

from .config import ALL_FAULT_KINDS, Faults
from .hostile import HOSTILE, hostile_response
from .responses import JSON_HEADERS, error_response, format_duration

__all__ = ("EARLY_FAULTS", "FaultInjector")

EARLY_FAULTS: Final = frozenset({"rate_limit", "rate_limit_bare", "rate_limit_junk", "overloaded"})
"""Faults answered at once, before any processing."""
_SERVER_ERROR_CYCLE: Final = (500, 502, 503)
_BAD_GATEWAY_HTML: Final = b"<html><head><title>502 Bad Gateway</title></head><body></body></html>"


class FaultInjector:
    """Draws a fault per request from ``rng`` and builds the response it sends.

    Faults that come in several forms (``server_error``, ``truncated``, ``error_200``) take
    them in turn, counted per kind.

    Attributes:
        faults: the current rates (replace with :meth:`configure`).
    """

    def __init__(self, faults: Faults, rng: random.Random) -> None:
        self._rng = rng
        self._turns: Counter[str] = Counter()
        self._table: list[tuple[float, str]] = []
        self.faults = faults
        self.configure(faults)

    def configure(self, faults: Faults) -> None:
        """Use new rates from the next draw on."""
        self.faults = faults
        table, total = [], 0.0
        for kind in ALL_FAULT_KINDS:
            rate = getattr(faults, kind)
            if rate > 0:
                total += rate
                table.append((total, kind))
        self._table = table

    def draw(self) -> str | None:
        """The fault of this request, or None (no RNG draw when every rate is 0)."""
        if not self._table:
            return None
        u = self._rng.random()
        for cumulative, kind in self._table:
            if u < cumulative:
                return kind
        return None

    def turn(self, kind: str) -> int:
        """How many times ``kind`` acted before (for faults that alternate their forms)."""
        turn = self._turns[kind]
        self._turns[kind] += 1
        return turn

    def early_response(self, fault: str) -> web.Response:
        """The response of a fault in :data:`EARLY_FAULTS` (rate limits, overload)."""
        if fault == "rate_limit":
            wait = self.faults.retry_after
            headers = {
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": format_duration(wait),
            }
            return error_response(
                429,
                f"Rate limit reached (simulated). Please try again in {format_duration(wait)}.",
                type_="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if fault == "rate_limit_junk":
            headers = {
                "retry-after": "-1",
                "retry-after-ms": "soon",
                "x-ratelimit-remaining-requests": "-1",
                "x-ratelimit-reset-requests": "-1",
            }
            return error_response(
                429, "Too many requests (simulated).", type_="rate_limit_error", headers=headers
            )
        if fault == "overloaded":
            return error_response(529, "Overloaded (simulated).", type_="overloaded_error")
        return error_response(429, "Too many requests (simulated).", type_="rate_limit_error")

    async def late_response(
        self, fault: str, request: web.Request, payload: dict[str, Any], error_choices: bool
    ) -> web.StreamResponse | None:
        """The response of a fault that strikes after the latency; None for a reset."""
        if fault in HOSTILE:
            return await hostile_response(fault, self.turn(fault), self.faults, request, payload)
        if fault == "error_200":
            if error_choices:
                return web.Response(body=orjson.dumps(payload), headers=JSON_HEADERS)
            error = {"message": "Upstream provider error (simulated)", "type": "server_error"}
            body = orjson.dumps({"error": {**error, "code": 502}})
            return web.Response(body=body, headers=JSON_HEADERS)
        if fault == "server_error":
            return self._server_error()
        if fault == "malformed":
            body = b'{"id": "' + payload["id"].encode() + b'", "choices": [{"index": 0,, "text": }'
            return web.Response(body=body, headers=JSON_HEADERS)
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            return None
        return await self._truncated(request, payload)

    def _server_error(self) -> web.Response:
        status = _SERVER_ERROR_CYCLE[self.turn("server_error") % len(_SERVER_ERROR_CYCLE)]
        if status == 502:
            return web.Response(
                status=502, body=_BAD_GATEWAY_HTML, headers={"Content-Type": "text/html"}
            )
        message = "The server had an error while processing your request (simulated)."
        if status == 503:
            message = "The server is overloaded or not ready yet (simulated)."
        return error_response(status, message, type_="server_error")

    async def _truncated(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        """Half the body: in turn, with a valid length, and with the full length announced
        before the connection drops."""
        transport = request.transport
        full = orjson.dumps(payload)
        half = full[: len(full) // 2]
        if self.turn("truncated") % 2 == 0 or transport is None:
            return web.Response(body=half, headers=JSON_HEADERS)
        response = web.StreamResponse(headers=JSON_HEADERS)
        response.content_length = len(full)
        await response.prepare(request)
        await response.write(half)
        transport.abort()
        return response
