"""Endpoint stage: the request body of a call, and the token estimate its permit reserves.

The body is rendered once per request (orjson) and the same bytes are sent on every retry.
Before each attempt the client takes a permit for ``prompt_tokens + max_tokens * n`` tokens,
with prompt tokens estimated by :func:`estimate_tokens`; the estimate is settled against the
real ``usage`` once it is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson

from ..config.sections import EndpointConfig
from .parsing import Choice, text_of

__all__ = ("Prompt", "build_body", "encode", "estimate_tokens", "prompt_chars", "settle_estimate")

Prompt = str | Sequence[Mapping[str, Any]]
"""A prompt string, or chat messages (``{"role": ..., "content": ...}``)."""


def estimate_tokens(prompt: Prompt) -> int:
    """Prompt tokens estimated as ``len(text) // 4 + 1`` (per message for chat messages).

    Four characters per token is the usual figure for English under BPE tokenizers; it only
    sizes the token-budget reservation, which is settled against the real ``usage`` afterwards.
    """
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    total = 0
    for m in prompt:
        content = m.get("content")
        total += (len(content) if isinstance(content, str) else len(str(content or ""))) // 4 + 1
    return total


def prompt_chars(prompt: Prompt) -> int:
    """The prompt's length in characters (what events record instead of the text)."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(text_of(m.get("content"))) for m in prompt)


def settle_estimate(est_prompt: int, choices: Sequence[Choice]) -> int:
    """Tokens to settle when the server sent no usage: the prompt estimate plus the
    completions at four characters per token."""
    return est_prompt + sum(len(c.text) // 4 + 1 for c in choices)


def build_body(
    endpoint: EndpointConfig,
    model: str,
    prompt: Prompt,
    mode: Literal["chat", "completions"],
    *,
    max_tokens: int,
    temperature: float | None,
    logprobs: bool | None,
    stop: Sequence[str] | None,
    response_format: Mapping[str, Any] | None,
    extra_body: Mapping[str, Any] | None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The body shared by a call's requests; a None argument takes the endpoint config's value.

    ``tools`` (chat mode only) is the OpenAI ``tools`` parameter, sent as given.

    Raises:
        ValueError: chat messages, or tools, in completions mode.
    """
    want_logprobs = endpoint.logprobs if logprobs is None else logprobs
    body: dict[str, Any] = {"model": model}
    if mode == "chat":
        if isinstance(prompt, str):
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["messages"] = [dict(m) for m in prompt]
        if want_logprobs:
            body["logprobs"] = True
        if tools:
            body["tools"] = [dict(t) for t in tools]
    else:
        if not isinstance(prompt, str):
            raise ValueError("completions mode takes a prompt string, not chat messages")
        if tools:
            raise ValueError("completions mode has no tools parameter: use the text protocol")
        body["prompt"] = prompt
        if want_logprobs:
            body["logprobs"] = 1
    body["max_tokens"] = max_tokens
    body["temperature"] = endpoint.temperature if temperature is None else temperature
    if endpoint.top_p != 1.0:
        body["top_p"] = endpoint.top_p
    stops = endpoint.stop if stop is None else stop
    if stops:
        body["stop"] = list(stops)
    if response_format is not None:
        body["response_format"] = dict(response_format)
    if extra_body:
        body.update(extra_body)
    return body


def encode(body: dict[str, Any], n: int, seed: int | None) -> bytes:
    """The bytes of one request: the shared body with its own ``n`` and ``seed``."""
    if n != 1 or seed is not None:
        body = dict(body)
        if n != 1:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
    return orjson.dumps(body)
