"""The hostile faults of the simulated server (:data:`~.config.HOSTILE_KINDS`): answers a
client must not trust. Unsound usage, a body past any sane size, JSON nested past any sane
depth, the caller's key echoed in the completions, a redirect to another origin."""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from .config import BAD_USAGES, HOSTILE_KINDS, Faults
from .responses import JSON_HEADERS

__all__ = ("HOSTILE", "hostile_response")

HOSTILE: Final = frozenset(HOSTILE_KINDS)
_CHUNK: Final = 64 * 1024
_DEEPEST: Final = 100_000
"""The depth of a ``deep_json`` fault on its odd turns (orjson refuses past 1,024)."""


async def hostile_response(
    fault: str, turn: int, faults: Faults, request: web.Request, payload: dict[str, Any]
) -> web.StreamResponse:
    """The answer of hostile fault ``fault`` on its ``turn``-th time (from 0) to ``request``,
    whose normal body is ``payload``."""
    if fault == "bad_usage":
        usage = BAD_USAGES[turn % len(BAD_USAGES)]
        body = {k: v for k, v in payload.items() if k != "usage"}
        if usage is not None:
            body["usage"] = usage
        return web.Response(body=orjson.dumps(body), headers=JSON_HEADERS)
    if fault == "oversized":
        padded = orjson.dumps({**payload, "padding": " " * faults.oversize_bytes})
        if turn % 2 == 0:
            return web.Response(body=padded, headers=JSON_HEADERS)
        return await _chunked(request, padded)
    if fault == "deep_json":
        depth = faults.deep_levels if turn % 2 == 0 else _DEEPEST
        raw = orjson.dumps(payload)
        body = b'{"deep":' + b"[" * depth + b"]" * depth + b"," + raw[1:]
        return web.Response(body=body, headers=JSON_HEADERS)
    if fault == "echo_key":
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip() or "no-key-sent"
        return web.Response(body=orjson.dumps(_echo(payload, key)), headers=JSON_HEADERS)
    location = f"{faults.redirect_to.rstrip('/')}{request.path}?token=sim-redirect-secret"
    return web.Response(status=307, headers={"Location": location})


async def _chunked(request: web.Request, body: bytes) -> web.StreamResponse:
    """``body`` sent in chunks with no length announced; a client that hangs up ends it."""
    response = web.StreamResponse(headers=JSON_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for i in range(0, len(body), _CHUNK):
            await response.write(body[i : i + _CHUNK])
        await response.write_eof()
    except (ConnectionError, RuntimeError):  # the client stopped reading and closed
        pass
    return response


def _echo(payload: dict[str, Any], key: str) -> dict[str, Any]:
    """``payload`` with ``key`` appended to every choice: its text, and its tokens split in
    two (so no single token holds the whole key) with log-probabilities and ids to match."""
    pieces = [" " + key[:6], key[6:]]
    choices = []
    for c in payload["choices"]:
        c = dict(c)
        if "message" in c:
            c["message"] = {**c["message"], "content": c["message"]["content"] + " " + key}
        else:
            c["text"] = c["text"] + " " + key
        lp = c.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            extra = [{"token": t, "logprob": -0.5, "top_logprobs": []} for t in pieces]
            c["logprobs"] = {**lp, "content": lp["content"] + extra}
        elif isinstance(lp, dict) and isinstance(lp.get("tokens"), list):
            c["logprobs"] = {**lp, "tokens": lp["tokens"] + pieces,
                             "token_logprobs": lp["token_logprobs"] + [-0.5, -0.5]}  # fmt: skip
        if isinstance(c.get("token_ids"), list):
            c["token_ids"] = c["token_ids"] + [7, 8]
        choices.append(c)
    return {**payload, "choices": choices}
