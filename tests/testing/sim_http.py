"""Helpers of the simulated-server tests: a server with a plain aiohttp session, and POST."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from engine.testing import (
    SimConfig,
    SimServer,
)

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Tell me about groups."}]}
COMPLETION = {"model": "sim-model", "prompt": "Once upon a time"}


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(
    config: SimConfig | None = None, **kwargs: Any
) -> AsyncIterator[tuple[SimServer, aiohttp.ClientSession]]:
    async with (
        SimServer(config or SimConfig(), **kwargs) as sim,
        aiohttp.ClientSession() as session,
    ):
        yield sim, session


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], Any]:
    """POST and return (status, headers, parsed JSON or the raw bytes if it does not parse)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url, data=data, headers=headers) as resp:
        raw = await resp.read()
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        return resp.status, resp.headers, parsed


def parse_duration(text: str) -> float:
    """Parse a Go-style duration like 6m0s, 1.5s, 12ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", text)
    assert "".join(a + b for a, b in parts) == text, text
    return sum(float(a) * units[b] for a, b in parts)


# --- response shapes ------------------------------------------------------------------------
