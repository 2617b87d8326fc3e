"""Endpoint stage: what a server sends is untrusted input: bounds on JSON, usage and echoes.

A response body is read up to ``EndpointConfig.max_response_bytes`` (the transport stops
there); what remains to check once it is parsed lives here:

- :func:`too_deep`: the nesting depth of a parsed JSON document, bounded by
  :data:`MAX_JSON_DEPTH` (orjson itself refuses more than 1,024 levels, but Python's ``repr``
  and orjson's own ``dumps`` of what is kept fail far earlier). It scans the bytes with C-speed
  ``bytes`` methods, never by recursion.
- :func:`read_usage` and :func:`usage_bound`: a ``usage`` object whose figures are missing,
  not integers, negative or absurd is an *anomaly*: it is recorded (the attempt's event
  carries ``usage_anomaly``, the client counts them) and replaced by an estimate, so a server
  cannot put the token budget into a debt that blocks every later call.
- :func:`read_tool_calls`: a chat message's ``tool_calls`` of the wrong shape (not an array,
  an entry without a ``function`` object or a string name, arguments that are neither JSON
  text nor an object, more than :data:`MAX_TOOL_CALLS` calls, names and arguments beyond
  their bounds) are kept as *malformed* calls (:attr:`~engine.types.ToolCall.error`), which
  the environment answers with an error result: the shape never fails the response.
- :func:`scrub_choice`: a server that echoes the API key in a successful answer does not get
  it into completions (text and tokens), hence exports, checkpoints or events.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from ..types import ToolCall, Usage, new_usage
from .redaction import Redactor
from .spend import reported_cost

__all__ = (
    "MAX_JSON_DEPTH",
    "MAX_TOOL_CALLS",
    "USAGE_ANOMALIES",
    "estimated_usage",
    "read_tool_calls",
    "read_usage",
    "scrub_tokens",
    "too_deep",
    "usage_bound",
)

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of arrays and objects accepted in a response (an OpenAI answer with
logprobs nests 6 deep)."""

USAGE_ANOMALIES: Final = ("missing", "malformed", "negative", "huge")
"""The reasons a response's usage is not trusted: no usage object, or token counts absent or
null; a count that is not an integer (a string, a bool, a fraction); a negative count; a
total above :func:`usage_bound` of the request (16 times its reservation, plus 4,096)."""

_USAGE_SLACK: Final = 16
"""A usage total above this many times the request's estimate (plus :data:`_USAGE_FLOOR`)
is not believed: the estimate is prompt characters / 4 plus ``max_tokens`` per choice, and a
byte-level tokenizer spends at most 4 tokens on a character (16 times the estimate)."""
_USAGE_FLOOR: Final = 4096
"""Tokens allowed above the scaled estimate: chat templates and tokenizers that split
finely add tokens the character estimate does not see."""

MAX_TOOL_CALLS: Final = 32
"""Tool calls read from one message; the rest are answered by one malformed call."""
_MAX_TOOL_NAME: Final = 200
"""The longest tool name or call id kept."""
_MAX_TOOL_ARGUMENTS: Final = 65_536
"""The longest arguments text of one call."""

_MAX_COST: Final = 1e6
"""A reported cost above this (in the provider's currency) for one request is not believed."""

_NOT_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_OPEN_CLOSE: Final = bytes.maketrans(b"[{]}", b"(())")


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the valid JSON text ``raw`` nests arrays and objects more than ``limit`` deep.

    Brackets inside strings do not count. Linear in ``len(raw)`` with C-speed passes: the
    escapes that could hide a quote are dropped, everything but brackets and quotes deleted,
    string contents removed, then one level of ``()`` pairs is removed per round, at most
    ``limit`` rounds. A body with at most ``limit`` brackets is not scanned at all.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if b"\\" in raw:  # in valid JSON a backslash only starts an escape inside a string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Removing two adjacent quotes keeps every other character inside or outside a string,
    # so the strings without brackets (nearly all) vanish in one pass.
    s = raw.translate(_OPEN_CLOSE, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in s:
        s = b"".join(s.split(b'"')[::2])  # the odd pieces are inside strings
    for _ in range(limit):
        if not s:
            return False
        s = s.replace(b"()", b"")
    return bool(s)


def _count(v: Any) -> int | str:
    """A token count, or the anomaly it is (``missing``, ``malformed``, ``negative``)."""
    if type(v) is not int:
        if v is None:
            return "missing"
        if type(v) is float and math.isfinite(v) and v.is_integer():
            v = int(v)
        else:
            return "malformed"  # a string, a bool, a fraction, an infinity, a container
    return v if v >= 0 else "negative"


def _optional_count(details: Any, key: str) -> int | str:
    """An optional count inside a details object: 0 when absent."""
    if details is None:
        return 0
    if type(details) is not dict:
        return "malformed"
    v = details.get(key)
    return 0 if v is None else _count(v)


def read_usage(u: Any) -> tuple[Usage, str | None]:
    """The usage a response reports, and its anomaly (None when every figure is sound).

    ``prompt_tokens`` and ``completion_tokens`` must be non-negative integers (an integral
    float is accepted); the cached and reasoning details are optional but must be sound when
    present. With an anomaly, the usage returned is zero and must be replaced
    (:func:`estimated_usage`). The cost is not a token count: one that is absent, invalid
    (:func:`~engine.endpoints.spend.reported_cost` logs it) or above ``_MAX_COST`` is None,
    so the request is priced by its tokens, and the counts still stand.
    """
    if type(u) is not dict:
        return Usage(), "missing"
    p, c = u.get("prompt_tokens"), u.get("completion_tokens")
    if type(p) is int and type(c) is int and p >= 0 and c >= 0:
        # the usual usage object: integer counts (what the general path below decides too)
        pd, cd = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
        cached = 0 if pd is None else _optional_count(pd, "cached_tokens")
        reasoning = 0 if cd is None else _optional_count(cd, "reasoning_tokens")
        if type(cached) is int and type(reasoning) is int:
            cost = u.get("cost")
            if cost is not None:
                cost = reported_cost(cost)
                if cost is not None and cost > _MAX_COST:
                    cost = None
            return new_usage(p, c, cached, reasoning, cost), None
    counts = (
        _count(u.get("prompt_tokens")),
        _count(u.get("completion_tokens")),
        _optional_count(u.get("prompt_tokens_details"), "cached_tokens"),
        _optional_count(u.get("completion_tokens_details"), "reasoning_tokens"),
    )
    for c in counts:
        if type(c) is str:
            return Usage(), c
    cost = reported_cost(u.get("cost"))
    if cost is not None and cost > _MAX_COST:
        cost = None  # not believed: the request is priced by its tokens
    p, c, cached, reasoning = counts
    assert type(p) is int and type(c) is int and type(cached) is int and type(reasoning) is int
    return Usage(p, c, cached, reasoning, cost), None


def usage_bound(estimate: int) -> int:
    """The largest usage total believed for a request whose reservation was ``estimate``."""
    return _USAGE_SLACK * estimate + _USAGE_FLOOR


def estimated_usage(est_prompt: int, texts: list[str], estimate: int) -> Usage:
    """The usage charged in place of an untrusted one: the prompt estimate plus the
    completions at four characters per token, never more than the request's reservation
    ``estimate`` (so an untrusted answer can leave no token debt)."""
    completion = sum(len(t) // 4 + 1 for t in texts)
    completion = max(0, min(completion, estimate - est_prompt))
    return Usage(min(est_prompt, estimate), completion)


def scrub_tokens(tokens: list[str], redact: Redactor) -> list[str] | None:
    """``tokens`` with the key removed where their concatenation carries it, one token per
    token (so logprobs stay aligned): the tokens a key spans keep only their text outside it,
    the first of them gains ``[REDACTED]``. None when they carry no key."""
    text = "".join(tokens)
    spans = redact.spans(text)
    if not spans:
        return None
    out: list[str] = []
    pos = 0
    for tok in tokens:
        start, end = pos, pos + len(tok)
        pos = end
        kept: list[str] = []
        i = start
        for a, b in spans:
            if b <= i or a >= end:
                continue
            if a > i:
                kept.append(text[i:a])
            if a >= start:
                kept.append("[REDACTED]")
            i = max(i, min(b, end))
        if i < end:
            kept.append(text[i:end])
        out.append("".join(kept))
    return out


def read_tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """The ``tool_calls`` of a chat message as :class:`~engine.types.ToolCall` s (see the
    module docstring); ``()`` when absent or null. Calls without a usable id get
    ``call_<i>``."""
    if raw is None:
        return ()
    if type(raw) is not list:
        return (ToolCall("call_0", "", "", "malformed: tool_calls is not an array"),)
    calls = [_tool_call(entry, i) for i, entry in enumerate(raw[:MAX_TOOL_CALLS])]
    if len(raw) > MAX_TOOL_CALLS:
        why = f"malformed: more than {MAX_TOOL_CALLS} tool calls in one message"
        calls.append(ToolCall(f"call_{MAX_TOOL_CALLS}", "", "", why))
    return tuple(calls)


def _tool_call(entry: Any, i: int) -> ToolCall:
    """One entry of ``tool_calls``: ``{"id", "type": "function", "function": {"name",
    "arguments"}}``, arguments as JSON text (an object is accepted and re-encoded)."""
    if type(entry) is not dict:
        return ToolCall(f"call_{i}", "", "", "malformed: a tool call is not an object")
    cid = entry.get("id")
    call_id = cid if type(cid) is str and 0 < len(cid) <= _MAX_TOOL_NAME else f"call_{i}"
    fn = entry.get("function")
    if type(fn) is not dict:
        return ToolCall(call_id, "", "", 'malformed: a tool call has no "function" object')
    name = fn.get("name")
    if type(name) is not str or not name:
        return ToolCall(call_id, "", "", "malformed: a tool call has no function name")
    if len(name) > _MAX_TOOL_NAME:
        why = f"malformed: a function name longer than {_MAX_TOOL_NAME} characters"
        return ToolCall(call_id, name[:_MAX_TOOL_NAME], "", why)
    args = fn.get("arguments")
    if type(args) is dict:
        args = orjson.dumps(args).decode()
    elif args is None:
        args = ""
    elif type(args) is not str:
        why = "malformed: the arguments are neither JSON text nor an object"
        return ToolCall(call_id, name, "", why)
    if len(args) > _MAX_TOOL_ARGUMENTS:
        why = f"malformed: arguments longer than {_MAX_TOOL_ARGUMENTS} characters"
        return ToolCall(call_id, name, "", why)
    return ToolCall(call_id, name, args)
