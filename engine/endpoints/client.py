"""Stage: endpoint client. The rate-limited OpenAI-compatible client used by generation and judges.

One :class:`Client` owns one aiohttp session and talks to ``/v1/chat/completions`` or
``/v1/completions`` of one endpoint (OpenRouter, OpenAI, vLLM, llama.cpp, the simulated server)::

    async with Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry, events=events) as client:
        out = await client.complete("2+2=", n=8, group_id="g0", policy_version=3)
        texts = [c.text for c in out.choices]

What it does for every call, in order:

1. Renders the request body once (orjson) and reuses the same bytes on every retry.
2. Before each attempt takes a permit from the :class:`~engine.endpoints.limits.Limiter`
   (request rate, token budget, concurrency, the shared 429 gate) with an estimate of
   ``prompt_tokens + max_tokens * n`` tokens, where prompt tokens are estimated as
   ``len(text) // 4 + 1`` (about four characters per token for English under BPE
   tokenizers; the estimate is settled against the real ``usage`` once it is known).
3. Sends, parses (both logprob shapes, usage details, vLLM token ids), and treats an HTTP 200
   that carries an ``error`` object, or a choice with ``finish_reason: "error"``, as a failure.
4. Retries by the rules of :func:`should_retry`, waiting what the server asks
   (:func:`parse_retry_after`) or a full-jitter backoff, within the per-request deadline.
5. Emits one event per attempt to the :class:`~engine.telemetry.events.EventLog`.

Retries (see :func:`should_retry` for which failures qualify):

- A wait the server gives (``retry-after-ms``, ``retry-after``, ``x-ratelimit-reset-*``, or
  OpenRouter's ``error.metadata.retry_after_seconds``) replaces the backoff; otherwise
  full jitter, ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``.
- A 429 (or a 429 code inside a 200 body) is reported to the limiter with the server's wait,
  which closes the shared gate so every sender pauses; the task then waits in the gate, not
  in its own sleep. A 429 without a usable wait reports ``None`` (the limiter's own pause)
  and the task also sleeps its jittered backoff.
- A ``ServerDisconnectedError`` on a reused keep-alive connection (the server closed it as
  we sent) is resent once at once; on a fresh connection it is a transport error.
- An HTTP 200 whose body is not JSON (cut short) or has no choices is retried.
- The deadline covers queueing for permits, attempts and waits; when the next wait would
  end past it, the call raises :class:`~engine.errors.DeadlineExceeded` at once.
- Permits are settled with the response's ``usage`` (``settle(0)`` when the server answered
  an error); after a timeout or a dropped connection the reservation is kept, since the
  server may have done the work.

``n``: asked natively; when an endpoint returns fewer choices than asked (OpenRouter and
llama.cpp ignore ``n``), the rest are fanned out as concurrent requests and the endpoint is
remembered so later calls fan out at once; every 64th of those asks natively again, so an
endpoint that answered short once gets ``n`` back. With a ``seed``, fanned-out requests get
``seed + i`` so they do not all sample the same completion.

Keys: the API key lives only in the session's Authorization header. Every message this module
builds from upstream text is passed through the client's redactor, errors are raised without
chaining aiohttp exceptions (whose text may hold URLs and headers), and events never carry the
key, the auth header or the prompt text (only its length).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import time
import urllib.parse
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp
import orjson
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..config.schema import EndpointConfig, LimitsConfig, RetryConfig
from ..errors import (
    AuthenticationError,
    ClientClosedError,
    ConfigError,
    ConflictError,
    DeadlineExceeded,
    EndpointError,
    EndpointTimeout,
    RateLimitError,
    RequestRejected,
    ResponseError,
    ServerError,
    TransportError,
)
from ..telemetry.events import get_logger
from ..types import Usage

if TYPE_CHECKING:
    from ..telemetry.events import EventLog
    from .limits import Limiter

__all__ = (
    "NEVER_RETRY_STATUSES",
    "RETRY_STATUSES",
    "Choice",
    "Client",
    "ClientStatistics",
    "Completion",
    "ResolvedEndpoint",
    "backoff_delay",
    "estimate_tokens",
    "is_in_flight_budget_error",
    "parse_duration",
    "parse_retry_after",
    "resolve_endpoint",
    "should_retry",
)

_log = get_logger("engine.endpoints.client")

RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
"""HTTP statuses retried (unless ``x-should-retry: false`` says otherwise)."""
NEVER_RETRY_STATUSES: frozenset[int] = frozenset({400, 401, 403, 404, 422})
"""Statuses never retried by status alone (``x-should-retry: true`` still wins)."""

_MAX_HINT = 86_400.0  # a server-given wait above one day is junk (e.g. an epoch), not a wait
_OPENROUTER_HEADERS = {
    "HTTP-Referer": "https://github.com/grpo-engine/grpo-engine",
    "X-Title": "grpo-engine",
}
_DEFAULT_OPENROUTER_MODEL = "anthropic/claude-3-sonnet:beta"  # the spec's default
_DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


# ----------------------------------------------------------------------------- results


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
    """

    index: int
    text: str
    finish_reason: str | None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    tokens: list[str] | None = None


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


@dataclass(frozen=True, slots=True)
class ResolvedEndpoint:
    """An endpoint with provider presets applied. Holds the key's variable name, never the key.

    Attributes:
        provider: ``local``, ``openai`` or ``openrouter``.
        base_url: the URL ending in ``/v1`` that ``/chat/completions`` is appended to.
        model: the model name sent in requests.
        key_env: environment variable the key is read from; empty for none.
        headers: extra headers sent with every request (OpenRouter attribution).
    """

    provider: str
    base_url: str
    model: str
    key_env: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of a client's counters (see :meth:`Client.statistics`).

    Attributes:
        calls: :meth:`Client.complete` calls started.
        failures: calls that raised.
        requests: logical requests sent (each fanned-out request counts).
        attempts: HTTP attempts, retries included.
        retries: retries by reason (``rate_limit``, ``server``, ``transport``, ``timeout``,
            ``conflict``, ``response``, ``rejected``, ``disconnect_reused``).
        fanned_out: calls where ``n`` was served by more than one request.
        ignores_n: endpoint (``base_url mode model``) -> most choices it returned for one
            request; 1 means it ignores ``n`` (gone once a later probe came back whole).
        limiter: the limiter's own ``statistics()`` snapshot.
    """

    calls: int
    failures: int
    requests: int
    attempts: int
    retries: Mapping[str, int]
    fanned_out: int
    ignores_n: Mapping[str, int]
    limiter: Any = None


# ----------------------------------------------------------------------------- pure helpers

_DUR_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go writes micro as U+00B5
    "μs": 1e-6,  # and sometimes as U+03BC
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_DUR_UNIT = r"(ns|us|µs|μs|ms|s|m|h)"  # ms before m and s
_DUR_PART = re.compile(_DUR_NUM + _DUR_UNIT)
_DUR_FULL = re.compile(f"(?:{_DUR_NUM}{_DUR_UNIT})+")


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1h2m3.5s``, ``12ms``, ``0.5s``) or a bare number.

    Returns None for anything else: empty, negative (``-1``), NaN, infinities, garbage.
    """
    if value is None:
        return None
    s = value.strip()
    if not s:
        return None
    try:
        x = float(s)
    except ValueError:
        pass
    else:
        return x if math.isfinite(x) and x >= 0 else None
    if _DUR_FULL.fullmatch(s) is None:
        return None
    return sum(float(num) * _DUR_UNITS[unit] for num, unit in _DUR_PART.findall(s))


def _lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers  # already case-insensitive
    return {k.lower(): v for k, v in headers.items()}


def _seconds(value: str | None) -> float | None:
    """A non-negative finite number of seconds, else None."""
    if value is None:
        return None
    try:
        x = float(value.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) and 0 <= x <= _MAX_HINT else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait before retrying, or None when it does not say.

    Looked up in order, the first usable value wins:

    1. ``retry-after-ms``: milliseconds (OpenAI).
    2. ``retry-after``: seconds, or an HTTP date compared with ``now`` (Unix time,
       default ``time.time()``); a date in the past means 0.
    3. ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``: durations such as
       ``6m0s`` or ``12ms`` (:func:`parse_duration`). When ``x-ratelimit-remaining-*`` says
       which budget is exhausted (``0``), that budget's reset is used; otherwise the longer.

    Junk (``-1``, empty, garbage, NaN, more than a day) is skipped, so the caller falls back
    to its backoff. Header names are matched case-insensitively.
    """
    h = _lower_keys(headers)
    ms = _seconds(h.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    ra = h.get("retry-after")
    if ra is not None:
        secs = _seconds(ra)
        if secs is not None:
            return secs
        try:
            when = parsedate_to_datetime(ra.strip())
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            delta = when.timestamp() - (time.time() if now is None else now)
            if delta <= _MAX_HINT:
                return max(0.0, delta)
    resets: list[float] = []
    exhausted: list[float] = []
    for budget in ("requests", "tokens"):
        d = parse_duration(h.get(f"x-ratelimit-reset-{budget}"))
        if d is None or d > _MAX_HINT:
            continue
        resets.append(d)
        remaining = h.get(f"x-ratelimit-remaining-{budget}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            exhausted.append(d)
    if exhausted:
        return max(exhausted)
    if resets:
        return max(resets)
    return None


def _retry_after_in_body(error: Mapping[str, Any] | None) -> float | None:
    """OpenRouter relays an upstream 429's wait as ``error.metadata.retry_after_seconds``."""
    if not error:
        return None
    meta = error.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    v = meta.get("retry_after_seconds")
    if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= _MAX_HINT:
        return float(v)
    return None


def is_in_flight_budget_error(error: Mapping[str, Any] | None) -> bool:
    """Whether a 402 body is OpenRouter's temporary in-flight budget limit (retryable).

    OpenRouter answers 402 both for an exhausted balance or key limit (permanent until someone
    adds credits: never retried) and for ``in_flight_budget_exhausted``: the running and
    recently completed paid requests fill the account's in-flight spending budget; it clears
    as they settle and comes with ``Retry-After``. We detect the temporary case from the body:
    ``error.metadata.limit_source == "openrouter_in_flight_budget"``, or an error code/type
    naming ``in_flight_budget``, or a message mentioning an "in-flight"/"in flight" budget.
    ``weight_exceeds_budget`` (one request larger than the whole budget) is permanent.
    """
    if not error:
        return False
    meta = error.get("metadata")
    if isinstance(meta, Mapping) and meta.get("limit_source") == "openrouter_in_flight_budget":
        return True
    words = " ".join(
        str(error.get(k) or "") for k in ("code", "type", "message") if error.get(k)
    ).lower()
    if "weight_exceeds_budget" in words:
        return False
    return "in_flight_budget" in words or bool(re.search(r"in[- ]flight\b.*budget", words))


def _code_status(error: Mapping[str, Any] | None) -> int | None:
    """The HTTP-like status inside an error object (``code: 429`` or ``"rate_limit_exceeded"``)."""
    if not error:
        return None
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str):
        c = code.strip().lower()
        if c.isdecimal():  # not isdigit: int() rejects superscripts such as '²'
            return int(c)
        if "rate_limit" in c or "too_many_requests" in c:
            return 429
        if "overloaded" in c:
            return 529
        if c in ("server_error", "internal_error", "internal_server_error"):
            return 500
        if c in ("service_unavailable", "unavailable"):
            return 503
        if "timeout" in c:
            return 408
    return None


def should_retry(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    error: Mapping[str, Any] | None = None,
) -> bool:
    """The retry rule. ``status`` None means no response (connection error or timeout).

    1. ``x-should-retry: true|false`` decides first, whatever the status.
    2. Connection errors and timeouts are retried.
    3. 408, 409, 425, 429, 500, 502, 503, 504, 529 are retried (:data:`RETRY_STATUSES`).
    4. 402 only when it is OpenRouter's in-flight budget limit (:func:`is_in_flight_budget_error`).
    5. Everything else, notably 400, 401, 403, 404 and 422, is not.
    """
    if headers:
        xs = _lower_keys(headers).get("x-should-retry")
        if xs is not None:
            v = xs.strip().lower()
            if v == "true":
                return True
            if v == "false":
                return False
    if status is None:
        return True
    if status == 402:
        return is_in_flight_budget_error(error)
    return status in RETRY_STATUSES


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter backoff after failed attempt ``attempt`` (1-based).

    ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``.
    """
    return rng.uniform(0.0, min(cap, base * 2.0 ** (attempt - 1)))


def estimate_tokens(prompt: str | Sequence[Mapping[str, Any]]) -> int:
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


def _status_error(
    status: int, message: str, attempt: int, endpoint: str, retryable: bool
) -> EndpointError:
    """The EndpointError subclass for an HTTP status."""
    cls: type[EndpointError]
    if status == 429:
        cls = RateLimitError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 408:
        cls = EndpointTimeout
    elif status in (409, 425):
        cls = ConflictError
    elif status >= 500:
        cls = ServerError
    elif 400 <= status < 500:
        cls = RequestRejected
    else:
        cls = ResponseError
    return cls(message, status=status, attempt=attempt, endpoint=endpoint, retryable=retryable)


# ----------------------------------------------------------------------------- endpoints


def resolve_endpoint(cfg: EndpointConfig, env: Mapping[str, str] = os.environ) -> ResolvedEndpoint:
    """Apply the provider presets to an endpoint config.

    - ``openrouter``: base ``https://openrouter.ai/api/v1``, key ``OPENROUTER_API_KEY``, model
      from ``OPENROUTER_MODEL`` else ``anthropic/claude-3-sonnet:beta`` (the spec's default),
      attribution headers ``HTTP-Referer`` and ``X-Title``.
    - ``openai``: key ``OPENAI_API_KEY``, base ``OPENAI_BASE_URL`` else
      ``https://api.openai.com/v1``, model ``gpt-4o-mini`` unless set.
    - ``local``: ``base_url`` is required; no key unless ``api_key_env`` names one.

    Explicit config fields always win over presets and the environment.

    Raises:
        ConfigError: a local endpoint without ``base_url``, or a base URL that is not http(s).
    """
    provider = cfg.provider
    headers: dict[str, str] = {}
    if provider == "openrouter":
        base = cfg.base_url or "https://openrouter.ai/api/v1"
        key_env = cfg.api_key_env or "OPENROUTER_API_KEY"
        model = cfg.model or env.get("OPENROUTER_MODEL") or _DEFAULT_OPENROUTER_MODEL
        headers = dict(_OPENROUTER_HEADERS)
    elif provider == "openai":
        base = cfg.base_url or env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key_env = cfg.api_key_env or "OPENAI_API_KEY"
        model = cfg.model or _DEFAULT_OPENAI_MODEL
    elif provider == "local":
        if not cfg.base_url:
            raise ConfigError(
                "a local endpoint needs base_url (e.g. http://127.0.0.1:8000/v1)",
                key="endpoint.base_url",
            )
        base = cfg.base_url
        key_env = cfg.api_key_env
        model = cfg.model or "default"
    else:  # pragma: no cover - config validation rejects other values
        raise ConfigError(f"unknown provider {provider!r}", key="endpoint.provider")
    parsed = urllib.parse.urlsplit(base)
    if parsed.username is not None or parsed.password is not None:
        raise ConfigError(
            f"base_url must not carry credentials ({_strip_url(base)!r}); put the key in the "
            "environment variable named by api_key_env",
            key="endpoint.base_url",
        )
    if parsed.query or parsed.fragment:
        raise ConfigError(
            f"base_url must not have a query or fragment, got {_strip_url(base)!r}...",
            key="endpoint.base_url",
        )
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"base_url must be an http(s) URL ending in /v1, got {_strip_url(base)!r}",
            key="endpoint.base_url",
        )
    return ResolvedEndpoint(provider, base.rstrip("/"), model, key_env, MappingProxyType(headers))


def _strip_url(url: str) -> str:
    """A URL without userinfo, query or fragment (which could hold credentials)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


# ----------------------------------------------------------------------------- parsing


# Parsed JSON comes from orjson, so objects are exactly ``dict`` and arrays ``list``: the
# checks below use ``type(x) is dict`` rather than ``isinstance(x, Mapping)``, which goes through
# the ABC machinery and was a third of the parse time.


def _text_of(content: Any) -> str:
    if type(content) is str:
        return content
    if content is None:
        return ""
    if type(content) is list:  # content parts
        return "".join(str(p.get("text") or "") if type(p) is dict else str(p) for p in content)
    return str(content)


def _float_list(values: list[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _parse_choice(c: dict[str, Any], index: int) -> Choice:
    msg = c.get("message")
    text = _text_of(msg.get("content")) if type(msg) is dict else _text_of(c.get("text"))
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
    return Choice(
        index, text, fr if type(fr) is str or fr is None else str(fr), token_ids, logprobs, tokens
    )


def _int_list(v: Any) -> list[int] | None:
    """A list of integer token ids, or None when ``v`` is not one."""
    if type(v) is not list:
        return None
    try:
        return [int(t) for t in v]
    except (TypeError, ValueError, OverflowError):
        return None


def _int(v: Any) -> int:
    if type(v) is int:
        return v
    return int(v) if type(v) is float and math.isfinite(v) else 0


def _parse_usage(u: Any) -> Usage | None:
    if type(u) is not dict:
        return None
    ptd = u.get("prompt_tokens_details")
    ctd = u.get("completion_tokens_details")
    cost = u.get("cost")
    return Usage(
        _int(u.get("prompt_tokens")),
        _int(u.get("completion_tokens")),
        _int(ptd.get("cached_tokens")) if type(ptd) is dict else 0,
        _int(ctd.get("reasoning_tokens")) if type(ctd) is dict else 0,
        float(cost) if type(cost) is float or type(cost) is int else 0.0,
    )


def _error_object(data: Any) -> Mapping[str, Any] | None:
    """The ``error`` object of an error body, normalised to a mapping."""
    if type(data) is not dict:
        return None
    err = data.get("error")
    if err is None:
        return None
    if type(err) is dict:
        return err
    return {"message": str(err)}  # {"error": "text"} (llama.cpp, some proxies)


# ----------------------------------------------------------------------------- the client


class _LimiterLike(Protocol):  # the parts of engine.endpoints.limits.Limiter the client uses
    def permit(self, est_tokens: int = 0, *, requests: int = 1) -> Any: ...
    def on_rate_limited(self, retry_after: float | None = None, *, permit: Any = None) -> None: ...
    def on_timeout(self, *, permit: Any = None) -> None: ...
    def on_success(self) -> None: ...
    def statistics(self) -> Any: ...


@dataclass(slots=True)
class _Result:
    """One successful request (before merging fan-out results)."""

    choices: list[Choice]
    usage: Usage
    id: str | None
    model: str | None
    request_id: str | None
    prompt_token_ids: list[int] | None
    attempts: int


class _Failure:
    """A failed attempt, decided but not yet raised (raised outside ``except`` blocks so no
    aiohttp exception, whose text may carry headers or URLs, is chained to it)."""

    __slots__ = ("error", "error_body", "headers", "immediate", "latency", "permit", "rate_limited")

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
        self.rate_limited = rate_limited  # 429, or 429 inside a 200 body: tell the limiter
        self.immediate = immediate  # server disconnected a reused connection: retry at once
        self.latency = 0.0  # seconds from sending to the failure
        self.permit: Any = None  # the permit the attempt held, for the limiter's reports


class _Alarm:
    """The state of one attempt: its timer entry, and whether its connection was reused."""

    __slots__ = ("cancelling", "fired", "reused", "task", "when")

    def __init__(self, task: asyncio.Task[Any], when: float) -> None:
        self.task = task  # the task running the attempt
        self.when = when  # loop time at which the attempt is cancelled
        self.cancelling = task.cancelling()  # cancel requests pending before we armed
        self.fired = False  # the watchdog cancelled the task
        self.reused = False  # the connection came from the keep-alive pool


_ATTEMPT: ContextVar[_Alarm | None] = ContextVar("engine_client_attempt", default=None)


class _Watchdog:
    """One timer for every attempt of a client: cancels an attempt's task when its time is up.

    ``asyncio.timeout()`` would put two TimerHandles per attempt on the loop's heap (one for
    the deadline while queued, one rescheduled to the attempt timeout), and the heap orders
    them with Python code; that cost about a tenth of the client's CPU per request at high
    concurrency. Here arming is a dict insert and the single timer wakes at the earliest time
    armed, which in steady state (requests far shorter than their timeouts) is rare. The
    cancellation is taken back with ``Task.uncancel`` exactly as ``asyncio.timeout`` does.
    """

    __slots__ = ("_alarms", "_handle", "_loop", "_wake_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._alarms: dict[asyncio.Task[Any], _Alarm] = {}  # armed attempts, one per task
        self._handle: asyncio.TimerHandle | None = None  # the one timer
        self._wake_at = math.inf  # when it fires

    def arm(self, task: asyncio.Task[Any], when: float) -> _Alarm:
        alarm = _Alarm(task, when)
        self._alarms[task] = alarm
        if when < self._wake_at:
            self._schedule(when)
        return alarm

    def move(self, alarm: _Alarm, when: float) -> None:
        alarm.when = when
        if when < self._wake_at:
            self._schedule(when)

    def disarm(self, alarm: _Alarm) -> None:
        if self._alarms.get(alarm.task) is alarm:
            del self._alarms[alarm.task]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._wake_at = math.inf

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._wake_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._wake_at = math.inf
        now = self._loop.time() + 1e-6  # call_at may run a hair early
        upcoming = math.inf
        for alarm in list(self._alarms.values()):
            if alarm.when <= now:
                if not alarm.fired:
                    alarm.fired = True
                    alarm.task.cancel()
            elif alarm.when < upcoming:
                upcoming = alarm.when
        if upcoming < math.inf:
            self._schedule(upcoming)


_N_PROBE_EVERY = 64
"""After an endpoint answered ``n > 1`` short, every 64th such call asks natively again."""

_START_BUDGET = 0.01
"""Seconds of one event-loop iteration that starting calls may take (see :class:`_Pacer`)."""


class _Pacer:
    """Spreads a burst of calls over event-loop iterations: the calls started in one
    iteration take about ``budget`` seconds at most; the rest wait their turn, first come
    first served, in the iterations that follow.

    A trainer that submits a thousand requests at once makes every one of them runnable in
    the same loop iteration, and each runs up to its first real wait (building its request,
    taking a permit, opening a connection: about 0.4 ms of CPU), so that one iteration took
    0.4-0.5 s and nothing else (timers, signals, progress, responses already in) ran. Paced,
    an iteration starts calls until ``budget`` has passed since its first start; later calls
    queue, and each following iteration lets through as many as fit the budget last time.
    When starts are spread out (the steady state), a call pays one clock read.
    """

    __slots__ = ("_budget", "_first", "_loop", "_per", "_started", "_tick_pending", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float) -> None:
        self._loop = loop
        self._budget = budget  # seconds of starts per iteration
        self._first = 0.0  # loop time of this iteration's first start
        self._per = 1  # starts granted per iteration to queued calls (fit the budget last time)
        self._started = 0  # starts in this iteration
        self._tick_pending = False  # _next_iteration is scheduled: this iteration has started some
        self._waiters: deque[asyncio.Future[None]] = deque()  # calls waiting for a turn

    async def turn(self) -> None:
        """Return when the caller may start: at once, unless this iteration's budget is spent
        (or calls are already waiting)."""
        if not self._waiters:
            if not self._tick_pending:  # the first start of this iteration
                self._tick_pending = True
                self._first, self._started = self._loop.time(), 1
                self._loop.call_soon(self._next_iteration)
                return
            if self._loop.time() - self._first < self._budget:
                self._started += 1
                return
            self._per = max(1, self._started)  # what fit in the budget
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter  # a cancelled waiter stays queued, done: its turn goes to the next

    def _next_iteration(self) -> None:
        """A new loop iteration: let the next waiters start, as many as fit last time."""
        granted = 0
        while self._waiters and granted < self._per:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                granted += 1
        if granted:  # they start in the next iteration: new calls queue behind them till then
            self._first, self._started = self._loop.time(), granted
            self._loop.call_soon(self._next_iteration)
        else:
            self._tick_pending = False


_MAX_HANDSHAKES = 64
"""New connections a client opens at once at most (see :class:`_ReuseAwareConnector`)."""


class _ReuseAwareConnector(aiohttp.TCPConnector):
    """A TCPConnector that tells the current attempt whether its connection was reused, and
    opens at most ``_MAX_HANDSHAKES`` new connections at once.

    A ``ServerDisconnectedError`` on a pooled connection is the stale keep-alive race (the
    server closed the idle connection as we sent on it) and is retried at once. aiohttp's
    tracing can report reuse too, but it costs every request several signal dispatches; this
    costs one set lookup in :meth:`connect` (a public, documented connector method).

    The handshake limit: opening 1,100 connections at once to the simulated server, 687 of
    them completed in the same instant (a server that accepts in bursts), and each completion
    resumes a request (about 0.3 ms of CPU: transport, protocol, sending), all in one loop
    iteration: 0.2 s. With at most 64 handshakes pending, one iteration resumes at most 64.
    It wraps ``_create_connection``, the hook aiohttp's connectors call for a new connection
    only (the same in every aiohttp 3.x this package accepts).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._served: weakref.WeakSet[Any] = weakref.WeakSet()  # protocols used before
        self._handshakes = asyncio.Semaphore(_MAX_HANDSHAKES)  # new connections being opened

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 - aiohttp API
        async with self._handshakes:
            return await super()._create_connection(req, traces, timeout)

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 - aiohttp API
        conn = await super().connect(req, traces, timeout)
        state = _ATTEMPT.get()
        proto = conn.protocol
        if proto is not None:
            if proto in self._served:
                if state is not None:
                    state.reused = True
            else:
                self._served.add(proto)
        return conn


_NO_USAGE = Usage()  # usage of an attempt that returned none


class Client:
    """Rate-limited client for one OpenAI-compatible endpoint.

    Example::

        async with Client(EndpointConfig(base_url=sim.base_url), limits=LimitsConfig(rpm=600),
                          events=EventLog("out/events.jsonl")) as client:
            out = await client.complete("Say hi", n=4, group_id="g1", policy_version=0)

    Args:
        endpoint: the endpoint config; provider presets are applied by :func:`resolve_endpoint`.
        limits: a :class:`~engine.endpoints.limits.Limiter` (share one between clients to share a
            budget), or a LimitsConfig to build one; None builds one from ``LimitsConfig()``.
        retry: retry policy; None uses ``RetryConfig()``.
        events: per-attempt events go here; None records none.
        api_key: the key; None reads ``env[key_env]``.
        env: environment for presets and the key; None uses ``os.environ``.
        clock: monotonic seconds for latency and deadlines (tests inject a fake one).
        sleep: awaited for backoff waits (tests inject one that records instead of sleeping).
        rng: source of backoff jitter.

    Raises:
        ConfigError: the endpoint is unusable, or the key variable (a hosted preset's, or the
            ``api_key_env`` a local endpoint names) is unset.
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        limits: LimitsConfig | Limiter | None = None,
        retry: RetryConfig | None = None,
        events: EventLog | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._cfg = endpoint  # the endpoint config (defaults per call)
        self._ep = resolve_endpoint(endpoint, env)  # presets applied; holds no key
        key = api_key if api_key is not None else (env.get(self._ep.key_env) or None)
        if key is None and self._ep.key_env:  # hosted presets, or a local api_key_env named
            raise ConfigError(
                f"no API key: set the environment variable {self._ep.key_env}",
                key="endpoint.api_key_env",
            )
        self._secrets = _secret_variants(key)  # strings redacted from every message
        self._retry = retry or RetryConfig()  # retry policy
        self._owns_limiter = isinstance(limits, LimitsConfig) or limits is None
        if isinstance(limits, LimitsConfig) or limits is None:
            from .limits import Limiter

            limits_cfg = limits or LimitsConfig()
            # the 429 gate's own pause (a 429 without a usable wait) follows our backoff
            base, cap = self._retry.backoff_base, self._retry.backoff_cap
            gate = (base, max(base, cap)) if base > 0 else (1.0, 60.0)
            self._limiter: _LimiterLike = Limiter(
                limits_cfg, gate_backoff=gate[0], gate_backoff_cap=gate[1]
            )
            concurrency = limits_cfg.max_concurrency
        else:
            self._limiter = limits  # shared: not closed by this client
            stats = limits.statistics()
            concurrency = int(getattr(stats, "concurrency_limit", 0) or 64)
        self._concurrency = concurrency  # connection pool size
        self._events = events  # per-attempt events, or None
        self._clock = clock or time.monotonic  # latency and deadline clock
        self._sleep = sleep or asyncio.sleep  # backoff waits
        self._rng = rng or random.Random()  # backoff jitter
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._headers.update(self._ep.headers)
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._urls: dict[str, tuple[URL, str]] = {}  # mode -> (URL, path for events, errors)
        for mode, suffix in (("chat", "chat/completions"), ("completions", "completions")):
            url = f"{self._ep.base_url}/{suffix}"
            self._urls[mode] = (URL(url), urllib.parse.urlsplit(url).path)
        self._session: aiohttp.ClientSession | None = None  # created on first use, in the loop
        self._watchdog: _Watchdog  # attempt timeouts and deadlines; made with the session
        self._pacer: _Pacer  # spreads a burst of calls over loop iterations; made with it too
        self._closed = False
        self._n_caps: dict[tuple[str, str, str], int] = {}  # endpoint -> most choices per request
        self._capped_calls: Counter[tuple[str, str, str]] = Counter()  # n > 1 calls since capped
        self._calls = 0
        self._failures = 0
        self._requests = 0
        self._attempts = 0
        self._fanned_out = 0
        self._retries: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"Client(provider={self._ep.provider!r}, base_url={_strip_url(self._ep.base_url)!r}, "
            f"model={self._ep.model!r}, closed={self._closed})"
        )

    @property
    def endpoint(self) -> ResolvedEndpoint:
        """The resolved endpoint (no key)."""
        return self._ep

    @property
    def limiter(self) -> Any:
        """The limiter every attempt takes a permit from."""
        return self._limiter

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        self._session_or_raise()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; later calls raise :class:`ClientClosedError`. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            self._watchdog.close()
            await session.close()
        if self._owns_limiter:
            close = getattr(self._limiter, "close", None)
            if close is not None:
                close()

    def _session_or_raise(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("the client is closed")
        s = self._session
        if s is None:
            connector = _ReuseAwareConnector(
                limit=self._concurrency,
                keepalive_timeout=4.0,  # servers (uvicorn, vLLM) drop idle connections at ~5 s
                ttl_dns_cache=300,
            )
            s = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                # no aiohttp timers: one asyncio timeout per attempt enforces both the attempt
                # timeout and the call's deadline (aiohttp's read timer is rescheduled on every
                # chunk and cost about 10% of the client's CPU per request)
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
                raise_for_status=False,
            )
            self._watchdog = _Watchdog(asyncio.get_running_loop())
            self._pacer = _Pacer(asyncio.get_running_loop(), _START_BUDGET)
            self._session = s
        return s

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of the counters and the limiter's statistics."""
        caps = {f"{b} {m} {model}": k for (b, m, model), k in self._n_caps.items()}
        return ClientStatistics(
            calls=self._calls,
            failures=self._failures,
            requests=self._requests,
            attempts=self._attempts,
            retries=MappingProxyType(dict(self._retries)),
            fanned_out=self._fanned_out,
            ignores_n=MappingProxyType(caps),
            limiter=self._limiter.statistics(),
        )

    # ------------------------------------------------------------------ the call

    async def complete(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        n: int = 1,
        kind: str = "generation",
        group_id: str | None = None,
        sample_index: int | None = None,
        policy_version: int | None = None,
        mode: Literal["chat", "completions"] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        logprobs: bool | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Completion:
        """Sample ``n`` completions of ``prompt``.

        Args:
            prompt: a string, or chat messages (chat mode only).
            n: completions wanted; asked natively, fanned out when the endpoint ignores it.
            kind: ``generation`` or ``judge``, recorded in events.
            group_id, sample_index, policy_version: identity recorded in events.
            mode: ``chat`` or ``completions``; None uses the endpoint config.
            max_tokens, temperature, logprobs, stop: None uses the endpoint config.
            seed: sampling seed; fanned-out requests get ``seed + i``.
            response_format: passed through (e.g. ``{"type": "json_object"}``).
            extra_body: merged into the request body last (e.g. vLLM's ``return_token_ids``).
            deadline: seconds for the whole call, queueing and retries included; None uses
                ``EndpointConfig.deadline``.

        Returns:
            A :class:`Completion` with exactly ``n`` choices.

        Raises:
            EndpointError: a subclass saying why, with status, attempt and endpoint.
            ClientClosedError: the client was closed.
            ValueError: ``n`` < 1, or chat messages in completions mode.
        """
        session = self._session_or_raise()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        await self._pacer.turn()
        if group_id is None:  # the rollout stage binds the group it works for
            group_id = structlog.contextvars.get_contextvars().get("group_id")
        cfg = self._cfg
        mode = mode or cfg.mode
        t0 = self._clock()
        budget = cfg.deadline if deadline is None else deadline
        t_end = t0 + budget
        loop = asyncio.get_running_loop()
        loop_end = loop.time() + budget
        max_tokens = cfg.max_tokens if max_tokens is None else max_tokens
        want_logprobs = cfg.logprobs if logprobs is None else logprobs
        body: dict[str, Any] = {"model": self._ep.model}
        if mode == "chat":
            if isinstance(prompt, str):
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["messages"] = [dict(m) for m in prompt]
            if want_logprobs:
                body["logprobs"] = True
        else:
            if not isinstance(prompt, str):
                raise ValueError("completions mode takes a prompt string, not chat messages")
            body["prompt"] = prompt
            if want_logprobs:
                body["logprobs"] = 1
        body["max_tokens"] = max_tokens
        body["temperature"] = cfg.temperature if temperature is None else temperature
        if cfg.top_p != 1.0:
            body["top_p"] = cfg.top_p
        stops = cfg.stop if stop is None else stop
        if stops:
            body["stop"] = list(stops)
        if response_format is not None:
            body["response_format"] = dict(response_format)
        if extra_body:
            body.update(extra_body)
        est_prompt = estimate_tokens(prompt)
        ctx = _CallContext(
            session=session,
            url=self._urls[mode][0],
            path=self._urls[mode][1],
            kind=kind,
            group_id=group_id,
            sample_index=sample_index,
            policy_version=policy_version,
            est_prompt=est_prompt,
            max_tokens=max_tokens,
            prompt_chars=len(prompt)
            if isinstance(prompt, str)
            else sum(len(_text_of(m.get("content"))) for m in prompt),
            t_end=t_end,
            loop=loop,
            watchdog=self._watchdog,
            loop_end=loop_end,
        )
        self._calls += 1
        endpoint_key = (self._ep.base_url, mode, self._ep.model)
        try:
            cap = self._n_caps.get(endpoint_key)
            if n == 1:
                parts = [await self._request(ctx, body, 1, seed)]
            elif not cfg.use_n or (cap is not None and not self._probe_n_again(endpoint_key)):
                parts = await self._fan_out(ctx, body, _chunks(n, cap or 1), seed, 0)
            else:
                first = await self._request(ctx, body, n, seed)
                got = len(first.choices)
                parts = [first]
                if got < n:
                    if endpoint_key not in self._n_caps:
                        _log.info(
                            "endpoint.ignores_n",
                            endpoint=ctx.path,
                            model=self._ep.model,
                            asked=n,
                            got=got,
                        )
                    self._n_caps[endpoint_key] = got
                    parts += await self._fan_out(ctx, body, _chunks(n - got, got), seed, 1)
                elif cap is not None:  # a probe came back whole: ask natively again
                    del self._n_caps[endpoint_key]
                    _log.info("endpoint.honours_n", endpoint=ctx.path, model=self._ep.model, n=n)
            # a fanned-out request can come back short as well (an endpoint that honours n
            # only sometimes): ask again for the rest, so the result has exactly n choices
            # (every request returns at least one choice, else it failed, so this ends)
            got = sum(len(p.choices) for p in parts)
            while got < n:
                more = await self._fan_out(
                    ctx, body, _chunks(n - got, self._n_caps.get(endpoint_key) or 1), seed,
                    len(parts),
                )  # fmt: skip
                parts += more
                got += sum(len(p.choices) for p in more)
        except BaseException:
            self._failures += 1
            raise
        head = parts[0]
        if len(parts) == 1:
            choices = head.choices if len(head.choices) <= n else head.choices[:n]
            usage = head.usage
            attempts = head.attempts
        else:
            self._fanned_out += 1
            choices = []
            usage = Usage()
            attempts = 0
            for part in parts:
                for c in part.choices:
                    if len(choices) == n:
                        break
                    choices.append(c if c.index == len(choices) else _reindex(c, len(choices)))
                usage = usage + part.usage
                attempts += part.attempts
        return Completion(
            choices=choices,
            usage=usage,
            id=head.id,
            model=head.model,
            latency=self._clock() - t0,
            attempts=attempts,
            requests=len(parts),
            request_id=head.request_id,
            prompt_token_ids=head.prompt_token_ids,
        )

    def _probe_n_again(self, endpoint_key: tuple[str, str, str]) -> bool:
        """Whether this n > 1 call to an endpoint that came back short should ask natively
        again: every ``_N_PROBE_EVERY``-th one. An endpoint that honours ``n`` but answered
        short once (a filtered choice) gets native ``n`` back; one that ignores it costs
        nothing extra (the probe's choices are kept, the rest fanned out as usual)."""
        self._capped_calls[endpoint_key] += 1
        return self._capped_calls[endpoint_key] % _N_PROBE_EVERY == 0

    async def _fan_out(
        self,
        ctx: _CallContext,
        body: dict[str, Any],
        sizes: list[int],
        seed: int | None,
        seed_offset: int,
    ) -> list[_Result]:
        """Run one request per size concurrently; the first failure cancels the rest."""
        tasks = [
            asyncio.ensure_future(
                self._request(ctx, body, k, None if seed is None else seed + seed_offset + i)
            )
            for i, k in enumerate(sizes)
        ]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if pending:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # retrieve every exception (so none is reported as never retrieved); raise the first
        errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if errors:
            raise errors[0]
        return [t.result() for t in tasks]

    async def _request(
        self, ctx: _CallContext, base_body: dict[str, Any], n: int, seed: int | None
    ) -> _Result:
        """One logical request with retries. The body bytes are built once."""
        body_obj = base_body
        if n != 1 or seed is not None:
            body_obj = dict(base_body)
            if n != 1:
                body_obj["n"] = n
            if seed is not None:
                body_obj["seed"] = seed
        data = orjson.dumps(body_obj)
        est = ctx.est_prompt + ctx.max_tokens * n
        retry = self._retry
        self._requests += 1
        attempt = 0
        used_immediate = False
        while True:
            attempt += 1
            self._attempts += 1
            outcome = await self._attempt(ctx, data, est, n, attempt, used_immediate)
            if isinstance(outcome, _Result):
                return outcome
            err = outcome.error
            if isinstance(err, DeadlineExceeded):
                raise err  # its event was emitted by _attempt
            hint: float | None = None
            if outcome.immediate:
                used_immediate = True
                wait = 0.0  # a reused connection went stale: resend at once, no backoff
                reason = "disconnect_reused"
            else:
                if outcome.headers is not None:
                    hint = parse_retry_after(outcome.headers)
                if hint is None:
                    hint = _retry_after_in_body(outcome.error_body)
                if hint is not None:
                    wait = hint
                else:
                    wait = backoff_delay(attempt, retry.backoff_base, retry.backoff_cap, self._rng)
                reason = err.error_class
            if outcome.rate_limited:
                # every sender pauses, not only this one
                self._limiter.on_rate_limited(hint, permit=outcome.permit)
            if not err.retryable or attempt >= retry.max_attempts:
                self._emit_failure_event(ctx, outcome, n, attempt, None)
                raise err
            if self._clock() + wait > ctx.t_end:
                self._emit_failure_event(ctx, outcome, n, attempt, None)
                raise DeadlineExceeded(
                    f"giving up: the next wait ({wait:.3g} s) would pass the deadline; "
                    f"last error: {_bare_message(err)}",
                    status=err.status,
                    attempt=attempt,
                    endpoint=ctx.path,
                )
            self._emit_failure_event(ctx, outcome, n, attempt, wait)
            self._retries[reason] += 1
            _log.debug(
                "endpoint.retry",
                endpoint=ctx.path,
                attempt=attempt,
                status=err.status,
                error_class=err.error_class,
                retry_in=wait,
                error=str(err),
            )
            if wait > 0 and not (outcome.rate_limited and hint is not None):
                # on a 429 with a server-given wait the limiter's shared gate does the waiting
                await self._sleep(wait)

    async def _attempt(
        self, ctx: _CallContext, data: bytes, est: int, n: int, attempt: int, used_immediate: bool
    ) -> _Result | _Failure:
        """One HTTP attempt: permit, send, classify. Emits the event of a success or a deadline."""
        limiter = self._limiter
        path = ctx.path
        status: int | None = None
        outcome: _Result | _Failure | None = None
        t_send: float | None = None
        by_attempt = False  # whether the alarm was moved to the attempt's own timeout
        task = asyncio.current_task()
        assert task is not None
        watchdog = ctx.watchdog
        alarm = watchdog.arm(task, ctx.loop_end)  # the deadline, while queued for a permit
        try:
            async with limiter.permit(est) as permit:
                t_send = self._clock()
                attempt_end = ctx.loop.time() + self._cfg.timeout
                if attempt_end < ctx.loop_end:
                    by_attempt = True
                    watchdog.move(alarm, attempt_end)
                token = _ATTEMPT.set(alarm)
                try:
                    async with ctx.session.post(ctx.url, data=data) as resp:
                        status = resp.status
                        raw = await resp.read()
                except aiohttp.ServerDisconnectedError as exc:
                    outcome = _Failure(
                        TransportError(self._describe(exc), attempt=attempt, endpoint=path),
                        immediate=alarm.reused and not used_immediate,
                    )
                except TimeoutError as exc:  # raised by a lower layer (our timer cancels)
                    outcome = _Failure(
                        EndpointTimeout(self._describe(exc), attempt=attempt, endpoint=path)
                    )
                except (aiohttp.ClientError, OSError) as exc:
                    outcome = _Failure(
                        TransportError(self._describe(exc), attempt=attempt, endpoint=path)
                    )
                except ValueError as exc:  # aiohttp refused to send it (a bad header value...)
                    outcome = _Failure(
                        RequestRejected(self._describe(exc), attempt=attempt, endpoint=path)
                    )
                finally:
                    _ATTEMPT.reset(token)
                if outcome is None:
                    outcome = self._parse(raw, status, resp.headers, n, attempt, path)
                    if isinstance(outcome, _Result):
                        usage = outcome.usage
                        permit.settle(
                            usage.total_tokens or _settle_estimate(ctx.est_prompt, outcome)
                        )
                    else:
                        permit.settle(0)  # the server answered an error: no tokens were spent
                        outcome.permit = permit
                else:
                    # timeouts and transport errors keep the reservation: the server may
                    # have done the work
                    outcome.permit = permit
        except asyncio.CancelledError:
            if not alarm.fired or task.uncancel() > alarm.cancelling:
                if t_send is not None:  # sent, or being sent: the server may have it
                    self._emit_cancelled_event(ctx, n, attempt, status, self._clock() - t_send)
                raise  # not ours, or someone else cancelled as well
            alarm.fired = False  # handled: the cancellation is taken back
            if isinstance(outcome, _Result):
                pass  # the time ran out as the permit was released: the answer stands
            # the attempt's timeout, or the deadline (queued or in flight)
            elif by_attempt:
                outcome = _Failure(
                    EndpointTimeout(
                        f"no complete response within {self._cfg.timeout:g} s",
                        attempt=attempt,
                        endpoint=path,
                    ),
                )
                outcome.permit = permit
            else:
                where = "queued for a permit" if t_send is None else "in flight"
                outcome = _Failure(
                    DeadlineExceeded(
                        f"deadline passed while {where}",
                        status=status,
                        attempt=attempt,
                        endpoint=path,
                    )
                )
        finally:
            watchdog.disarm(alarm)
        if alarm.fired:  # it fired, but code below us swallowed the CancelledError
            task.uncancel()
        assert outcome is not None
        latency = 0.0 if t_send is None else self._clock() - t_send
        if isinstance(outcome, _Result):
            limiter.on_success()
            self._emit_success_event(ctx, outcome, status or 200, latency, attempt, n)
            return outcome
        outcome.latency = latency
        err = outcome.error
        if isinstance(err, EndpointTimeout) and err.status is None:
            limiter.on_timeout(permit=outcome.permit)
        elif isinstance(err, DeadlineExceeded):
            self._emit_failure_event(ctx, outcome, n, attempt, None)
        return outcome

    def _parse(
        self, raw: bytes, status: int, headers: Any, n: int, attempt: int, path: str
    ) -> _Result | _Failure:
        """Classify one HTTP response: a result or a failure."""
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            doc = None
        if 200 <= status < 300:
            if type(doc) is not dict:
                # a body cut short by a proxy or a dropped connection: worth another try
                snippet = self._redact(raw[:200].decode("utf-8", "replace"))
                return _Failure(
                    ResponseError(
                        f"malformed response body (not a JSON object): {snippet!r}",
                        status=status,
                        attempt=attempt,
                        endpoint=path,
                        retryable=should_retry(None, headers),
                    ),
                    headers,
                )
            err_obj = _error_object(doc)
            raw_choices = doc.get("choices")
            if err_obj is None and type(raw_choices) is list:
                for c in raw_choices:
                    if type(c) is dict and c.get("finish_reason") == "error":
                        err_obj = _error_object(c) or {"message": "a choice finished with error"}
                        break
            if err_obj is not None:
                code = _code_status(err_obj)
                retryable = should_retry(code if code is not None else 0, headers, err_obj)
                return _Failure(
                    ResponseError(
                        f"HTTP {status} carrying an error: {self._error_text(err_obj)}",
                        status=status,
                        attempt=attempt,
                        endpoint=path,
                        retryable=retryable,
                    ),
                    headers,
                    err_obj,
                    rate_limited=code == 429,
                )
            if type(raw_choices) is not list or not raw_choices:
                return _Failure(
                    ResponseError(
                        "response has no choices",
                        status=status,
                        attempt=attempt,
                        endpoint=path,
                        retryable=should_retry(None, headers),
                    ),
                    headers,
                )
            try:
                choices = [_parse_choice(c, i) for i, c in enumerate(raw_choices)]
                if len(choices) > 1:
                    choices.sort(key=_choice_order(raw_choices))
                    choices = [_reindex(c, i) for i, c in enumerate(choices)]
            except (AttributeError, TypeError, ValueError) as exc:
                return _Failure(
                    ResponseError(
                        f"malformed choices: {type(exc).__name__}",
                        status=status,
                        attempt=attempt,
                        endpoint=path,
                    ),
                    headers,
                )
            usage = _parse_usage(doc.get("usage"))
            ptids = doc.get("prompt_token_ids")
            if ptids is None and type(raw_choices[0]) is dict:
                ptids = raw_choices[0].get("prompt_token_ids")
            rid = doc.get("id")
            return _Result(
                choices=choices,
                usage=usage if usage is not None else Usage(),
                id=self._redact_id(rid if rid is None or type(rid) is str else str(rid)),
                model=doc.get("model"),
                request_id=self._redact_id(headers.get("x-request-id")),
                prompt_token_ids=_int_list(ptids),
                attempts=attempt,
            )
        err_obj = _error_object(doc)
        if err_obj is None:
            text = " ".join(raw[:200].decode("utf-8", "replace").split())  # one line
            err_obj = {"message": text} if text else None
        retryable = should_retry(status, headers, err_obj)
        reason = f"HTTP {status}"
        if err_obj:
            reason += f": {self._error_text(err_obj)}"
        return _Failure(
            _status_error(status, reason, attempt, path, retryable),
            headers,
            err_obj,
            rate_limited=status == 429,
        )

    # ------------------------------------------------------------------ events and text

    def _emit(
        self,
        ctx: _CallContext,
        *,
        status: int | None,
        latency: float,
        attempt: int,
        n: int,
        usage: Usage | None = None,
        error_class: str | None = None,
        retry_in: float | None = None,
        request_id: str | None = None,
    ) -> None:
        """One event per request attempt (success, failure or cancellation)."""
        ev = self._events
        if ev is None:
            return
        u = usage or _NO_USAGE
        ev.emit(
            kind=ctx.kind,
            endpoint=ctx.path,
            model=self._ep.model,
            group_id=ctx.group_id,
            sample_index=ctx.sample_index,
            policy_version=ctx.policy_version,
            status=status,
            latency=latency,
            attempt=attempt,
            n=n,
            prompt_chars=ctx.prompt_chars,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens,
            cost=u.cost,
            error_class=error_class,
            retry_in=retry_in,
            request_id=request_id,
        )

    def _emit_success_event(
        self, ctx: _CallContext, r: _Result, status: int, latency: float, attempt: int, n: int
    ) -> None:
        self._emit(ctx, status=status, latency=latency, attempt=attempt, n=n, usage=r.usage,
                   request_id=r.request_id or r.id)  # fmt: skip

    def _emit_failure_event(
        self, ctx: _CallContext, f: _Failure, n: int, attempt: int, retry_in: float | None
    ) -> None:
        h = f.headers
        self._emit(
            ctx,
            status=f.error.status,
            latency=f.latency,
            attempt=attempt,
            n=n,
            error_class=f.error.error_class,
            retry_in=retry_in,
            request_id=self._redact_id(h.get("x-request-id")) if h is not None else None,
        )

    def _emit_cancelled_event(
        self, ctx: _CallContext, n: int, attempt: int, status: int | None, latency: float
    ) -> None:
        """An attempt cancelled from outside (a fanned-out sibling failed, a straggler, a
        shutdown) after it was sent: recorded as ``error_class: "cancelled"``, since the
        server may have done (and billed) the work."""
        self._emit(ctx, status=status, latency=latency, attempt=attempt, n=n,
                   error_class="cancelled")  # fmt: skip

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "[REDACTED]")
        return _BEARER.sub("Bearer [REDACTED]", text)

    def _redact_id(self, rid: str | None) -> str | None:
        """A server-chosen id, redacted if a (misbehaving) server put the key in it."""
        if rid is None or not self._secrets:
            return rid
        return self._redact(rid)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        return self._redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

    def _error_text(self, err: Mapping[str, Any]) -> str:
        msg = str(err.get("message") or "")[:300]
        code = err.get("code")
        meta = err.get("metadata")
        extra = ""
        if isinstance(meta, Mapping) and meta.get("raw"):
            extra = f" ({str(meta['raw'])[:200]})"
        head = f"[{code}] " if code not in (None, "") else ""
        return self._redact(" ".join(f"{head}{msg}{extra}".split()))  # one line


_BEARER = re.compile(r"Bearer\s+[^\s'\",}]+", re.IGNORECASE)


def _secret_variants(key: str | None) -> tuple[str, ...]:
    if not key:
        return ()
    variants = {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)}
    return tuple(sorted(variants, key=len, reverse=True))


def _bare_message(err: EndpointError) -> str:
    """An EndpointError's message without the ``(endpoint, status, attempt)`` suffix it adds."""
    return str(err).rsplit(" (", 1)[0]


def _settle_estimate(est_prompt: int, r: _Result) -> int:
    """Tokens to settle when the server sent no usage: the prompt estimate plus ~4 chars/token."""
    return est_prompt + sum(len(c.text) // 4 + 1 for c in r.choices)


def _chunks(total: int, size: int) -> list[int]:
    size = max(1, size)
    return [min(size, total - i) for i in range(0, total, size)]


def _reindex(c: Choice, index: int) -> Choice:
    return Choice(index, c.text, c.finish_reason, c.token_ids, c.logprobs, c.tokens)


def _choice_order(raw: list[Any]) -> Callable[[Choice], int]:
    def key(c: Choice) -> int:
        r = raw[c.index]
        i = r.get("index") if isinstance(r, Mapping) else None
        return i if isinstance(i, int) else c.index

    return key


@dataclass(slots=True)
class _CallContext:
    """What every request of one ``complete`` call shares."""

    session: aiohttp.ClientSession
    url: URL
    path: str
    kind: str
    group_id: str | None
    sample_index: int | None
    policy_version: int | None
    est_prompt: int
    max_tokens: int
    prompt_chars: int
    t_end: float  # deadline on the injected clock
    loop: asyncio.AbstractEventLoop  # the running loop
    watchdog: _Watchdog  # cancels attempts whose time is up
    loop_end: float  # the same deadline on the event loop's clock
