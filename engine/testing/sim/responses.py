"""Response bodies of the simulated server: OpenAI-style errors and the 200 payload."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from .adapters import SimAdapter
from .config import ModelFn, SimRequest
from .model import (
    chat_logprobs,
    completion_logprobs,
    default_tokens,
    finish,
    prompt_token_ids,
    token_id,
)
from .requests import ParsedRequest
from .script import SimReply, chat_tool_calls, reply_text, turn_of

__all__ = (
    "JSON_HEADERS",
    "Payload",
    "build_payload",
    "error_response",
    "format_duration",
    "unauthorized",
)

JSON_HEADERS: Final = {"Content-Type": "application/json"}
_UPSTREAM_ERROR: Final = {"code": 502, "message": "Upstream provider error (simulated)"}


def format_duration(seconds: float) -> str:
    """Go-style duration as in OpenAI's ``x-ratelimit-reset-*``: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(minutes), 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{s}s"
    if minutes:
        return f"{minutes}m{s}s"
    return f"{s}s"


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style ``{"error": {...}}`` response."""
    body = orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
    return web.Response(status=status, body=body, headers={**JSON_HEADERS, **(headers or {})})


def unauthorized() -> web.Response:
    """The 401 of a wrong or missing API key."""
    return error_response(
        401,
        "Incorrect API key provided.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="sim"'},
    )


@dataclass(frozen=True, slots=True)
class Payload:
    """A 200 response body and the longest choice's token count (which the latency scales with).

    Attributes:
        body: the JSON-ready response.
        longest: completion tokens of the longest choice.
    """

    body: dict[str, Any]
    longest: int


def build_payload(
    p: ParsedRequest,
    fn: ModelFn | None,
    *,
    n_out: int,
    prompt_tokens: int,
    server_seed: int,
    number: int,
    error_choices: bool,
    adapter: SimAdapter | None = None,
) -> Payload:
    """The 200 payload of request number ``number``: ``n_out`` choices per prompt from ``fn``
    (None: the default model), or choices that finished in error when ``error_choices``;
    ``adapter`` (the LoRA adapter the request names) salts the words and shifts the
    log-probabilities."""
    chat = p.endpoint == "chat"
    choices: list[dict[str, Any]] = []
    lengths: list[int] = []
    for pi, prompt in enumerate(p.prompts):
        for j in range(n_out):
            tokens, reason, calls = _choice_tokens(
                p, fn, prompt, j, n_out, server_seed, number, adapter
            )
            if error_choices:
                tokens, reason, calls = [], "error", None
            index = pi * n_out + j
            choice = _choice(p, prompt, tokens, reason, index, error_choices, adapter)
            if calls is not None:
                choice["message"]["tool_calls"] = calls
                choice["finish_reason"] = "tool_calls"
            choices.append(choice)
            lengths.append(len(tokens))
    completion_tokens = sum(lengths)
    body: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-sim{number}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": p.model,
        "system_fingerprint": "fp_sim",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
    if chat and p.token_ids:
        body["prompt_token_ids"] = prompt_token_ids(p.prompts[0])
    return Payload(body, max(lengths, default=0))


def _choice_tokens(
    p: ParsedRequest,
    fn: ModelFn | None,
    prompt: str,
    index: int,
    n_out: int,
    server_seed: int,
    number: int,
    adapter: SimAdapter | None,
) -> tuple[list[str], str, Any]:
    """One choice's tokens, finish reason and chat ``tool_calls`` (None: no calls)."""
    if fn is not None:
        req = SimRequest(
            p.endpoint, p.model, prompt, p.messages, index, n_out, p.max_tokens,
            p.temperature, p.seed, p.stop, server_seed, number, p.is_judge, p.body, adapter,
        )  # fmt: skip
        out = fn(req)
        if not isinstance(out, SimReply):
            return (*finish(out, p.stop, p.max_tokens), None)
        if p.endpoint != "chat":
            return (*finish(reply_text(out), p.stop, p.max_tokens), None)
        tokens, reason = finish(out.content, p.stop, p.max_tokens)
        return tokens, reason, chat_tool_calls(out, turn_of(req))
    # the default model without building a SimRequest: the fast path
    salt = adapter.digest if adapter is not None else b""
    tokens = default_tokens(prompt, p.temperature, p.seed, server_seed, number, index, salt)
    if p.stop:
        return (*finish("".join(tokens), p.stop, p.max_tokens), None)
    if len(tokens) > p.max_tokens:
        return tokens[: p.max_tokens], "length", None
    return tokens, "stop", None


def _choice(
    p: ParsedRequest,
    prompt: str,
    tokens: list[str],
    reason: str,
    index: int,
    error: bool,
    adapter: SimAdapter | None,
) -> dict[str, Any]:
    """One choice object; ``error`` adds the error field of a choice that failed upstream."""
    text = "".join(tokens)
    shift = adapter.logprob_shift if adapter is not None else 0
    choice: dict[str, Any] = {"index": index}
    if p.endpoint == "chat":
        choice["message"] = {"role": "assistant", "content": text}
        choice["logprobs"] = (
            None if p.top_logprobs is None else chat_logprobs(tokens, p.top_logprobs, shift)
        )
    else:
        choice["text"] = text
        choice["logprobs"] = (
            None
            if p.top_logprobs is None
            else completion_logprobs(tokens, p.top_logprobs, len(prompt), shift)
        )
    choice["finish_reason"] = reason
    if error:
        choice["error"] = dict(_UPSTREAM_ERROR)
    if p.token_ids:
        choice["token_ids"] = [token_id(t) for t in tokens]
        if p.endpoint != "chat":
            choice["prompt_token_ids"] = prompt_token_ids(prompt)
    return choice
