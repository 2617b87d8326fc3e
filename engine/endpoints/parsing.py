"""Endpoint stage: what an endpoint answers, parsed: choices, usage, ids and error objects.

:func:`parse_response` classifies one HTTP response as a :class:`Result` (the choices of one
request) or a :class:`Failure` (an :class:`~engine.errors.EndpointError` decided but not yet
raised). It reads both logprob shapes (chat ``content[].logprob`` and completions
``token_logprobs``), usage details (cached and reasoning tokens, cost) and vLLM token ids,
and treats an HTTP 200 that carries an ``error`` object, or a choice with
``finish_reason: "error"``, as a failure. Text from upstream reaches an error only through
the client's :class:`~engine.endpoints.redaction.Redactor`.

Parsed JSON comes from orjson, so objects are exactly ``dict`` and arrays ``list``: the checks
use ``type(x) is dict`` rather than ``isinstance(x, Mapping)``, which goes through the ABC
machinery and is slow on this hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import EndpointError, ResponseError
from ..types import ToolCall, Usage
from .guards import MAX_JSON_DEPTH, read_tool_calls, read_usage, scrub_tokens, too_deep
from .limits import PermitProtocol
from .redaction import Redactor, strip_url
from .retry import code_status, should_retry, status_error

_PRECUT = 10_000
"""Characters of upstream text kept before redaction; what is shown is cut far shorter after
it (a key cannot straddle this first cut and still reach what is shown)."""

__all__ = (
    "Choice",
    "Completion",
    "Failure",
    "Result",
    "describe_error",
    "error_object",
    "new_choice",
    "new_completion",
    "parse_choice",
    "parse_response",
    "parse_usage",
    "reindex",
    "text_of",
)


@dataclass(frozen=True, slots=True)
class Choice:
    """One sampled completion.

    Attributes:
        index: position in :attr:`Completion.choices` (re-indexed 0..n-1 after a fan-out).
        text: the completion (chat ``message.content``; ``None`` content becomes ``""``).
        finish_reason: ``stop``, ``length`` ... as the server said, or None.
        token_ids: completion token ids when the server returns them (vLLM), else None.
        logprobs: per-token log-probabilities of the sampled tokens, when asked and returned.
        tokens: the sampled tokens as strings, aligned with ``logprobs``.
        tool_calls: the chat message's ``tool_calls``, checked by
            :func:`~engine.endpoints.guards.read_tool_calls` (a call of the wrong shape is
            kept as a malformed call); empty when the message made none.
    """

    index: int
    text: str
    finish_reason: str | None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    tokens: list[str] | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """The result of :meth:`Client.complete`: n choices and what they cost.

    Attributes:
        choices: exactly ``n`` choices, indexed 0..n-1.
        usage: token usage summed over every request that produced a choice.
        id: the response id of the first request (OpenRouter's generation id ``gen-...``).
        model: the model the server says answered.
        latency: seconds from the call to the result, queueing and retries included.
        attempts: HTTP attempts made, summed over fanned-out requests.
        requests: requests that produced choices; > 1 when ``n`` was fanned out.
        request_id: the ``x-request-id`` header of the first request, when sent.
        prompt_token_ids: prompt token ids when the server returns them (vLLM).
    """

    choices: list[Choice]
    usage: Usage
    id: str | None
    model: str | None
    latency: float
    attempts: int
    requests: int
    request_id: str | None = None
    prompt_token_ids: list[int] | None = None


@dataclass(slots=True)
class Result:
    """One successful request, before the results of a fan-out are merged.

    Attributes:
        choices: the request's choices, in the server's index order, re-indexed from 0.
        usage: its token usage (zero when the server sent none or an unsound one).
        id: the response id, redacted.
        model: the model the server says answered.
        request_id: the ``x-request-id`` header, redacted.
        prompt_token_ids: prompt token ids when the server returns them (vLLM).
        attempts: the attempt that succeeded (1 on the first try).
        usage_anomaly: why the server's usage was not trusted (one of
            :data:`~engine.endpoints.guards.USAGE_ANOMALIES`), None when it was; the client
            then replaces ``usage`` with an estimate.
    """

    choices: list[Choice]
    usage: Usage
    id: str | None
    model: str | None
    request_id: str | None
    prompt_token_ids: list[int] | None
    attempts: int
    usage_anomaly: str | None = None


_SET_CHOICE = tuple(
    getattr(Choice, f).__set__
    for f in ("index", "text", "finish_reason", "token_ids", "logprobs", "tokens", "tool_calls")
)
_SET_COMPLETION = tuple(
    getattr(Completion, f).__set__
    for f in ("choices", "usage", "id", "model", "latency", "attempts", "requests", "request_id",
              "prompt_token_ids")
)  # fmt: skip


def new_choice(
    index: int,
    text: str,
    finish_reason: str | None,
    token_ids: list[int] | None,
    logprobs: list[float] | None,
    tokens: list[str] | None,
    tool_calls: tuple[ToolCall, ...],
) -> Choice:
    """``Choice(...)`` on the hot path: the same frozen object, its slots filled directly
    (the frozen ``__init__`` goes through ``object.__setattr__`` per field, about twice as
    slow; one is built per choice of every response)."""
    c = object.__new__(Choice)
    si, st, sf, sids, slp, stok, scalls = _SET_CHOICE
    si(c, index)
    st(c, text)
    sf(c, finish_reason)
    sids(c, token_ids)
    slp(c, logprobs)
    stok(c, tokens)
    scalls(c, tool_calls)
    return c


def new_completion(
    choices: list[Choice],
    usage: Usage,
    id: str | None,
    model: str | None,
    latency: float,
    attempts: int,
    requests: int,
    request_id: str | None,
    prompt_token_ids: list[int] | None,
) -> Completion:
    """``Completion(...)`` on the hot path (once per call), as :func:`new_choice`."""
    out = object.__new__(Completion)
    sc, su, sid, sm, sl, sa, sr, srid, sp = _SET_COMPLETION
    sc(out, choices)
    su(out, usage)
    sid(out, id)
    sm(out, model)
    sl(out, latency)
    sa(out, attempts)
    sr(out, requests)
    srid(out, request_id)
    sp(out, prompt_token_ids)
    return out


class Failure:
    """A failed attempt, decided but not yet raised.

    It is raised outside ``except`` blocks, so no aiohttp exception (whose text may carry
    headers or URLs) is chained to the error.

    Attributes:
        error: the error to raise, or to retry after.
        headers: the response headers, when there was a response.
        error_body: the response's error object, when it had one.
        rate_limited: a 429, or a 429 code inside a 200 body: the limiter is told.
        immediate: the server disconnected a reused keep-alive connection: resend at once.
        latency: seconds from sending to the failure (set by the client).
        queue_wait: seconds the attempt waited for its permit (set by the client).
        permit: the permit the attempt held, for the limiter's reports (set by the client).
    """

    __slots__ = ("error", "error_body", "headers", "immediate", "latency", "permit", "queue_wait",
                 "rate_limited")  # fmt: skip

    def __init__(
        self,
        error: EndpointError,
        headers: Mapping[str, str] | None = None,
        error_body: Mapping[str, Any] | None = None,
        *,
        rate_limited: bool = False,
        immediate: bool = False,
    ) -> None:
        self.error = error
        self.headers = headers
        self.error_body = error_body
        self.rate_limited = rate_limited
        self.immediate = immediate
        self.latency = 0.0
        self.queue_wait = 0.0
        self.permit: PermitProtocol | None = None


def parse_response(
    raw: bytes,
    status: int,
    headers: Mapping[str, str],
    attempt: int,
    path: str,
    redact: Redactor,
) -> Result | Failure:
    """Classify one HTTP response of attempt ``attempt`` to ``path``: a result or a failure.

    The body is untrusted: JSON nested deeper than
    :data:`~engine.endpoints.guards.MAX_JSON_DEPTH` is refused (a response error, not
    retried; an error status then shows the raw text), a redirect (3xx) is an error naming
    its location, and the key is redacted from the text of the choices.
    """
    if 200 <= status < 300 and raw and raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        try:  # nested little enough that too_deep() has nothing to say: parsed once here
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the general path says why
        else:
            plain = _plain_result(doc, headers, attempt, redact)
            if plain is not None:
                return plain
            return _parse_general(raw, status, headers, attempt, path, redact, (doc,))
    return _parse_general(raw, status, headers, attempt, path, redact)


def _parse_general(
    raw: bytes,
    status: int,
    headers: Mapping[str, str],
    attempt: int,
    path: str,
    redact: Redactor,
    loaded: tuple[Any] | None = None,
) -> Result | Failure:
    """:func:`parse_response` for every body (the usual one too: the tests compare);
    ``loaded``: the body already parsed, and known to be nested within the limit."""
    deep = False
    if loaded is not None:
        doc = loaded[0]
    else:
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            doc, deep = None, "depth" in str(exc)  # orjson's own limit: 1,024 levels
        if doc is not None and (type(doc) is dict or type(doc) is list) and too_deep(raw):
            doc, deep = None, True
    if 300 <= status < 400:
        return _redirect(status, headers, attempt, path, redact)
    if not 200 <= status < 300:
        return _error_status(doc, raw, status, headers, attempt, path, redact)
    if deep:
        return _response_failure(
            f"response JSON nested deeper than {MAX_JSON_DEPTH} levels",
            status, headers, attempt, path, retryable=False,
        )  # fmt: skip
    if type(doc) is not dict:
        # a body cut short by a proxy or a dropped connection: worth another try
        snippet = redact(raw[:_PRECUT].decode("utf-8", "replace"))[:200]
        return _response_failure(
            f"malformed response body (not a JSON object): {snippet!r}",
            status, headers, attempt, path, retryable=should_retry(None, headers),
        )  # fmt: skip
    raw_choices = doc.get("choices")
    err_obj = _error_in_body(doc, raw_choices)
    if err_obj is not None:
        code = code_status(err_obj)
        return _response_failure(
            f"HTTP {status} carrying an error: {describe_error(err_obj, redact)}",
            status, headers, attempt, path,
            retryable=should_retry(code if code is not None else 0, headers, err_obj),
            error_body=err_obj, rate_limited=code == 429,
        )  # fmt: skip
    if type(raw_choices) is not list or not raw_choices:
        return _response_failure(
            "response has no choices",
            status, headers, attempt, path, retryable=should_retry(None, headers),
        )  # fmt: skip
    try:
        choices = _parse_choices(raw_choices)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        return _response_failure(
            f"malformed choices: {type(exc).__name__}", status, headers, attempt, path
        )
    return _result(doc, raw_choices, choices, headers, attempt, redact)


def _plain_result(
    doc: Any, headers: Mapping[str, str], attempt: int, redact: Redactor
) -> Result | None:
    """The result of the usual 2xx answer in one flat pass, or None when the body is
    anything else (then :func:`parse_response`'s general path decides, with the same
    outcome for every body this accepts: ``tests/endpoints/test_parsing.py`` compares them).

    The usual answer (``doc``, a body the caller parsed and found nested within
    :data:`~engine.endpoints.guards.MAX_JSON_DEPTH`): a JSON object with no ``error``,
    exactly one choice that is an object with a string ``message.content`` (chat) or
    ``text`` (completions), no tool calls, logprobs or token ids anywhere, and a finish
    reason that is a string other than ``error`` or absent."""
    if type(doc) is not dict or doc.get("error") is not None:
        return None
    raw_choices = doc.get("choices")
    if type(raw_choices) is not list or len(raw_choices) != 1:
        return None
    c = raw_choices[0]
    if type(c) is not dict:
        return None
    get = c.get
    fr = get("finish_reason")
    if (fr is not None and (type(fr) is not str or fr == "error")) or get("logprobs") is not None:
        return None
    if get("token_ids") is not None or get("prompt_token_ids") is not None:
        return None
    msg = get("message")
    if type(msg) is dict:
        text = msg.get("content")
        if msg.get("tool_calls") is not None:
            return None
    else:
        text = get("text")
    if type(text) is not str or doc.get("prompt_token_ids") is not None:
        return None
    usage, anomaly = read_usage(doc.get("usage"))
    model = doc.get("model")
    rid = doc.get("id")
    # what _scrub does to a choice without tokens or tool calls, and _result to the rest
    text, fr, model, rid = redact.answer(
        text,
        fr,
        model if type(model) is str else None,
        rid if rid is None or type(rid) is str else str(rid),
    )
    return Result(
        [new_choice(0, text, fr, None, None, None, ())],
        usage,
        rid if rid is None or len(rid) <= 200 else rid[:200],
        model if model is None or len(model) <= 200 else model[:200],
        redact.id(headers.get("x-request-id")),
        None,
        attempt,
        anomaly,
    )


def _response_failure(
    message: str,
    status: int,
    headers: Mapping[str, str],
    attempt: int,
    path: str,
    *,
    retryable: bool | None = None,
    error_body: Mapping[str, Any] | None = None,
    rate_limited: bool = False,
) -> Failure:
    """A :class:`~engine.errors.ResponseError` of an HTTP 2xx response, as a failure."""
    kwargs: dict[str, Any] = {} if retryable is None else {"retryable": retryable}
    error = ResponseError(message, status=status, attempt=attempt, endpoint=path, **kwargs)
    return Failure(error, headers, error_body, rate_limited=rate_limited)


def _error_in_body(doc: dict[str, Any], raw_choices: Any) -> Mapping[str, Any] | None:
    """The error a 2xx body carries: its ``error`` object, or a choice that finished with one."""
    err_obj = error_object(doc)
    if err_obj is None and type(raw_choices) is list:
        for c in raw_choices:
            if type(c) is dict and c.get("finish_reason") == "error":
                return error_object(c) or {"message": "a choice finished with error"}
    return err_obj


def _parse_choices(raw_choices: list[Any]) -> list[Choice]:
    """The choices in the server's index order, re-indexed 0..n-1."""
    if len(raw_choices) == 1:  # the usual answer: one choice, nothing to order
        return [parse_choice(raw_choices[0], 0)]
    choices = [parse_choice(c, i) for i, c in enumerate(raw_choices)]
    if len(choices) > 1:
        choices.sort(key=_choice_order(raw_choices))
        choices = [reindex(c, i) for i, c in enumerate(choices)]
    return choices


def _result(
    doc: dict[str, Any],
    raw_choices: list[Any],
    choices: list[Choice],
    headers: Mapping[str, str],
    attempt: int,
    redact: Redactor,
) -> Result:
    usage, anomaly = read_usage(doc.get("usage"))
    ptids = doc.get("prompt_token_ids")
    if ptids is None and type(raw_choices[0]) is dict:
        ptids = raw_choices[0].get("prompt_token_ids")
    rid = doc.get("id")
    model = doc.get("model")
    if redact.active:
        if len(choices) == 1:
            c = _scrub(choices[0], redact)
            if c is not choices[0]:  # the usual case keeps the list as it is
                choices = [c]
        else:
            choices = [_scrub(c, redact) for c in choices]
    rid = redact.id(rid if rid is None or type(rid) is str else str(rid))
    model = redact.secrets(model) if type(model) is str else None
    return Result(
        choices,
        usage,
        rid if rid is None or len(rid) <= 200 else rid[:200],  # _short, inline
        model if model is None or len(model) <= 200 else model[:200],
        redact.id(headers.get("x-request-id")),
        None if ptids is None else _int_list(ptids),
        attempt,
        anomaly,
    )


def _short(text: str | None) -> str | None:
    """A server-chosen name or id cut to 200 characters (after redaction, so no part of a
    key is left at the cut)."""
    return text if text is None or len(text) <= 200 else text[:200]


def _scrub(c: Choice, redact: Redactor) -> Choice:
    """A choice cleared of the key a server echoed: in its text and its tokens (kept aligned
    with the logprobs); its token ids, which would spell the key, are dropped."""
    text = redact.secrets(c.text)
    tokens = scrub_tokens(c.tokens, redact) if c.tokens else None
    fr = c.finish_reason
    reason = redact.secrets(fr) if fr is not None else None
    if c.tool_calls:
        calls = tuple(_scrub_call(t, redact) for t in c.tool_calls)
        same_calls = all(a is b for a, b in zip(calls, c.tool_calls, strict=True))
    else:  # the usual case: no tool calls, no generators to build
        calls, same_calls = c.tool_calls, True
    if text is c.text and tokens is None and reason is fr and same_calls:
        return c  # the usual case: nothing echoed
    ids = None if text is not c.text or tokens is not None else c.token_ids
    return Choice(c.index, text, reason, ids, c.logprobs, tokens if tokens else c.tokens, calls)


def _scrub_call(t: ToolCall, redact: Redactor) -> ToolCall:
    """A tool call cleared of the key a server echoed (its name, arguments and id)."""
    name, args, cid = redact.secrets(t.name), redact.secrets(t.arguments), redact.secrets(t.id)
    if name is t.name and args is t.arguments and cid is t.id:
        return t
    return ToolCall(cid, name, args, t.error)


def _redirect(
    status: int, headers: Mapping[str, str], attempt: int, path: str, redact: Redactor
) -> Failure:
    """A 3xx: redirects are not followed (a 307 would re-post the prompt and the key's
    header elsewhere); the error names the location without its query or credentials."""
    location = headers.get("location") or headers.get("Location")
    where = redact(strip_url(location))[:300] if location else "no location"
    message = (
        f"HTTP {status} redirect to {where} not followed: point endpoint.base_url at the "
        "final address"
    )
    error = ResponseError(message, status=status, attempt=attempt, endpoint=path, retryable=False)
    return Failure(error, headers)


def _error_status(
    doc: Any,
    raw: bytes,
    status: int,
    headers: Mapping[str, str],
    attempt: int,
    path: str,
    redact: Redactor,
) -> Failure:
    """A response with an error status: the error class of the status, the body's message."""
    err_obj = error_object(doc)
    if err_obj is None:
        text = " ".join(raw[:_PRECUT].decode("utf-8", "replace").split())
        err_obj = {"message": text} if text else None
    retryable = should_retry(status, headers, err_obj)
    reason = f"HTTP {status}"
    if err_obj:
        reason += f": {describe_error(err_obj, redact)}"
    return Failure(
        status_error(status, reason, attempt, path, retryable),
        headers,
        err_obj,
        rate_limited=status == 429,
    )


def describe_error(err: Mapping[str, Any], redact: Callable[[str], str] | None = None) -> str:
    """An error object on one line: ``[code] message (raw upstream text)``, cut short.

    With ``redact``, each piece is redacted before it is cut, so no part of a key is left
    at a cut.
    """
    r = redact or _same

    def piece(value: Any, limit: int) -> str:
        return r(str(value)[:_PRECUT])[:limit]

    msg = piece(err.get("message") or "", 300)
    code = err.get("code")
    meta = err.get("metadata")
    extra = ""
    if isinstance(meta, Mapping) and meta.get("raw"):
        extra = f" ({piece(meta['raw'], 200)})"
    head = f"[{piece(code, 100)}] " if code not in (None, "") else ""
    return " ".join(f"{head}{msg}{extra}".split())


def _same(text: str) -> str:
    return text


def text_of(content: Any) -> str:
    """The text of a message content: a string, ``None`` or a list of content parts."""
    if type(content) is str:
        return content
    if content is None:
        return ""
    if type(content) is list:  # content parts
        return "".join(str(p.get("text") or "") if type(p) is dict else str(p) for p in content)
    return str(content)


def _float_list(values: list[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def parse_choice(c: dict[str, Any], index: int) -> Choice:
    msg = c.get("message")
    if type(msg) is dict:
        content = msg.get("content")
        text = content if type(content) is str else text_of(content)
        raw_calls = msg.get("tool_calls")
        calls = () if raw_calls is None else read_tool_calls(raw_calls)
    else:
        text, calls = text_of(c.get("text")), ()
    logprobs: list[float] | None = None
    tokens: list[str] | None = None
    lp = c.get("logprobs")
    if type(lp) is dict:
        content = lp.get("content")
        if type(content) is list:  # chat shape: content[].{token, logprob}
            logprobs = _float_list([e.get("logprob") for e in content])
            tokens = [str(e.get("token", "")) for e in content]
        elif type(lp.get("token_logprobs")) is list:  # completions shape
            logprobs = _float_list(lp["token_logprobs"])
            toks = lp.get("tokens")
            tokens = [str(t) for t in toks] if type(toks) is list else None
    token_ids = c.get("token_ids")
    if token_ids is not None:
        token_ids = [int(t) for t in token_ids] if type(token_ids) is list else None
    elif tokens and all(t.startswith("token_id:") for t in tokens):
        # vLLM with return_tokens_as_token_ids renders each token as "token_id:123"
        try:
            token_ids = [int(t[9:]) for t in tokens]
        except ValueError:
            token_ids = None
    fr = c.get("finish_reason")
    return new_choice(
        index,
        text,
        fr if type(fr) is str or fr is None else str(fr),
        token_ids,
        logprobs,
        tokens,
        calls,
    )


def _int_list(v: Any) -> list[int] | None:
    """A list of integer token ids, or None when ``v`` is not one."""
    if type(v) is not list:
        return None
    try:
        return [int(t) for t in v]
    except (TypeError, ValueError, OverflowError):
        return None


def parse_usage(u: Any) -> Usage | None:
    """The usage object of a response, or None when its token counts are missing or unsound
    (:func:`~engine.endpoints.guards.read_usage` says why); its ``cost`` is the reported one
    where valid, else None (:func:`~engine.endpoints.spend.reported_cost`)."""
    usage, anomaly = read_usage(u)
    return None if anomaly is not None else usage


def error_object(data: Any) -> Mapping[str, Any] | None:
    """The ``error`` object of an error body, normalised to a mapping."""
    if type(data) is not dict:
        return None
    err = data.get("error")
    if err is None:
        return None
    if type(err) is dict:
        return err
    return {"message": str(err)}  # {"error": "text"} (llama.cpp, some proxies)


def reindex(c: Choice, index: int) -> Choice:
    return Choice(index, c.text, c.finish_reason, c.token_ids, c.logprobs, c.tokens, c.tool_calls)


def _choice_order(raw: list[Any]) -> Callable[[Choice], int]:
    def key(c: Choice) -> int:
        r = raw[c.index]
        i = r.get("index") if isinstance(r, Mapping) else None
        return i if isinstance(i, int) else c.index

    return key
