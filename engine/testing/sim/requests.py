"""Request validation of the simulated server: a JSON body in, a :class:`ParsedRequest` out, or a
:class:`Rejected` that becomes a 400, as a real OpenAI-compatible server would answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from .model import is_judge_call

__all__ = ("Endpoint", "ParsedRequest", "Rejected", "parse_request")

Endpoint = Literal["chat", "completions"]

_DEFAULT_MAX_TOKENS: Final = {"chat": 256, "completions": 16}


class Rejected(Exception):
    """A request parameter is invalid (answered 400); ``param`` names it when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class ParsedRequest:
    """A validated generation request.

    Attributes:
        endpoint: which endpoint was called.
        model: the ``model`` the request named.
        prompts: the completions prompts, or the chat messages' texts joined by blank lines.
        messages: the chat messages as sent; None for completions.
        n: choices asked for per prompt.
        max_tokens: the completion cap in words.
        temperature: sampling temperature (1.0 when not sent).
        seed: the request's ``seed``, if any.
        stop: stop sequences.
        top_logprobs: alternatives per token; None when no log-probabilities were asked for.
        token_ids: whether token ids were asked for (``return_token_ids``).
        is_judge: whether this is a judge call.
        body: the parsed JSON body.
    """

    endpoint: Endpoint
    model: str
    prompts: list[str]
    messages: tuple[Mapping[str, Any], ...] | None
    n: int
    max_tokens: int
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    top_logprobs: int | None
    token_ids: bool
    is_judge: bool
    body: Mapping[str, Any]


def parse_request(body: Any, endpoint: Endpoint, judge_header: bool) -> ParsedRequest:
    """Validate a request body like a real server; raises :class:`Rejected`.

    ``judge_header`` (the request carried ``x-sim-role: judge``) makes it a judge call;
    otherwise :func:`~engine.testing.sim.model.is_judge_call` decides from the body.
    """
    if not isinstance(body, dict):
        raise Rejected("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected("you must provide a model parameter", "model")
    prompts, messages, cap_name = _prompts(body, endpoint)
    if body.get("stream"):
        raise Rejected("the simulated server does not stream; send stream=false", "stream")
    extra = body.get("extra_body")
    return ParsedRequest(
        endpoint=endpoint,
        model=model,
        prompts=prompts,
        messages=messages,
        n=_int_param(body, "n", 1, 1, 128),
        max_tokens=_int_param(body, cap_name, _DEFAULT_MAX_TOKENS[endpoint], 1, 1 << 20),
        temperature=_temperature(body),
        seed=_int_param(body, "seed", None, -(1 << 63), (1 << 64) - 1),
        stop=_stop(body),
        top_logprobs=_top_logprobs(body, endpoint),
        token_ids=body.get("return_token_ids") is True
        or (isinstance(extra, dict) and extra.get("return_token_ids") is True),
        is_judge=judge_header or is_judge_call(body, prompts),
        body=body,
    )


def _prompts(
    body: Mapping[str, Any], endpoint: Endpoint
) -> tuple[list[str], tuple[Mapping[str, Any], ...] | None, str]:
    """(prompt texts, chat messages or None, the name of the token cap parameter)."""
    if endpoint == "chat":
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise Rejected("'messages' must be a non-empty array", "messages")
        prompts = ["\n\n".join(_message_text(i, m) for i, m in enumerate(raw))]
        cap = "max_completion_tokens" if body.get("max_completion_tokens") is not None else None
        return prompts, tuple(raw), cap or "max_tokens"
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt], None, "max_tokens"
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt, None, "max_tokens"
    raise Rejected("'prompt' must be a string or a non-empty array of strings", "prompt")


def _int_param(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Rejected(
            f"{value!r} is not valid for '{name}': expected an integer in [{lo}, {hi}]", name
        )
    return value


def _message_text(i: int, message: Any) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise Rejected(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise Rejected(
                    f"messages[{i}].content parts must be typed objects", f"messages[{i}]"
                )
            if part["type"] == "text":
                parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    if content is None and message["role"] == "assistant":
        return ""
    raise Rejected(f"messages[{i}].content must be a string or an array of parts", f"messages[{i}]")


def _temperature(body: Mapping[str, Any]) -> float:
    temperature = body.get("temperature")
    if temperature is None:
        return 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise Rejected(f"{temperature!r} is not valid for 'temperature'", "temperature")
    if not 0 <= temperature <= 2:
        raise Rejected("'temperature' must be in [0, 2]", "temperature")
    return float(temperature)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise Rejected("'stop' must be a string or an array of at most 4 strings", "stop")


def _top_logprobs(body: Mapping[str, Any], endpoint: Endpoint) -> int | None:
    if endpoint != "chat":
        return _int_param(body, "logprobs", None, 0, 20)
    want = body.get("logprobs")
    if want not in (None, True, False):
        raise Rejected("'logprobs' must be a boolean", "logprobs")
    top = _int_param(body, "top_logprobs", 0, 0, 20)
    if body.get("top_logprobs") is not None and not want:
        raise Rejected("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    return top if want else None
