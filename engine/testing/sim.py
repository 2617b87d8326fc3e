"""Simulated OpenAI-compatible server: a deterministic fake model behind real HTTP on loopback.

Used by the engine's unit tests, by the benchmarks, and by users' own tests::

    async with SimServer(SimConfig(latency=0.01, faults=Faults(rate_limit=0.1))) as sim:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{sim.base_url}/chat/completions",
                json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], "n": 4},
            ) as resp:
                body = await resp.json()
        print(sim.stats.by_status, sim.stats.faults)

Or in its own process (for benchmarks): ``python -m engine.testing.sim --port 0 --rpm 600``
prints the base URL on its first stdout line and serves until SIGINT/SIGTERM.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, and ``GET /sim/stats`` (the :class:`SimStats` as JSON, not counted itself).

Order of events for one generation request, each step able to end it:

1. ``401`` if the server has an ``api_key`` and ``Authorization: Bearer <key>`` differs.
2. ``400`` with an OpenAI-style error body for bad JSON or bad parameters.
3. ``429`` from the RPM/TPM token buckets (:class:`SimConfig.rpm`, :class:`SimConfig.tpm`).
4. One fault draw from the seeded RNG (:class:`Faults`); 429/529 faults answer at once.
5. Server-side latency (log-normal, plus per completion token), inside the optional
   served-concurrency cap; ``timeout`` hangs instead; the remaining faults act here.
6. ``200`` with the real OpenAI response shape and ``usage``.

The fake model (:func:`default_model`): a "token" is a whitespace-separated word. Each choice is
1-32 words from a fixed 48-word vocabulary (:data:`VOCAB`); vocabulary words that the prompt
mentions are four times likelier, so prompt optimisation has a signal to find. The text is a
pure function of the prompt and

- ``temperature == 0``: nothing else (greedy: every choice and every call identical);
- a request ``seed``: the seed and the choice index;
- otherwise: the server seed, the request number (counted from 1 per server) and the index.

Judge calls (a prompt or message containing ``<<JUDGE>>``, or the header ``x-sim-role: judge``)
are answered by ``SimConfig.judge`` or :func:`default_judge`, which scores the text between
``<<CANDIDATE>>`` and ``<</CANDIDATE>>`` (the whole prompt without markers if there are none)
as the fraction of its words in :data:`GOOD_WORDS`, rounded to 2 places:
``{"score": 0.25, "feedback": "2/8 on-topic words"}``; with several candidate blocks it answers
``{"scores": [...], "feedback": [...]}`` in block order.

Tokens are charged to TPM at admission as an estimate that is never refunded, like OpenAI:
``sum(len(prompt) // 4 + 1) + n * max_tokens`` (``max_tokens`` defaulting to 16 for
completions and 256 for chat; ``n`` is 1 when ``honor_n=False``). ``usage.prompt_tokens`` uses
the same ``len(prompt) // 4 + 1`` per prompt; ``usage.completion_tokens`` counts words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import random
import re
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any, Final, Literal

import orjson
from aiohttp import web

__all__ = (
    "CANDIDATE_CLOSE",
    "CANDIDATE_OPEN",
    "FAULT_KINDS",
    "GOOD_WORDS",
    "JUDGE_MARKER",
    "VOCAB",
    "Faults",
    "SimConfig",
    "SimRequest",
    "SimServer",
    "SimStats",
    "default_judge",
    "default_model",
    "format_duration",
    "main",
    "sim_subprocess",
)

JUDGE_MARKER: Final = "<<JUDGE>>"
"""A prompt or message containing this is a judge call."""
CANDIDATE_OPEN: Final = "<<CANDIDATE>>"
"""Opens the text the default judge scores."""
CANDIDATE_CLOSE: Final = "<</CANDIDATE>>"
"""Closes the text the default judge scores (optional at the end of the prompt)."""

GOOD_WORDS: Final = (
    "accurate",
    "clear",
    "concise",
    "correct",
    "helpful",
    "precise",
    "relevant",
    "specific",
)
"""Words the default judge rewards: its score is the fraction of candidate words among these."""

_NEUTRAL_WORDS: Final = (
    "the a model answer question because therefore value number step first then result so "
    "is of and to we compute check example data reason simple group policy reward token "
    "sample learn update output input list sum total final yes no"
)
VOCAB: Final = (*GOOD_WORDS, *_NEUTRAL_WORDS.split())
"""The default fake model's vocabulary (48 words, :data:`GOOD_WORDS` first)."""

FAULT_KINDS: Final = (
    "rate_limit",
    "rate_limit_bare",
    "rate_limit_junk",
    "server_error",
    "overloaded",
    "reset",
    "timeout",
    "malformed",
    "truncated",
    "error_200",
    "short_n",
)
"""Names of the :class:`Faults` rates, in the order the fault draw checks them."""

_VOCAB_IDS: Final = {w: 1000 + i for i, w in enumerate(VOCAB)}
_VOCAB_SET: Final = frozenset(VOCAB)
_MAX_WORDS: Final = 32  # longest natural (unstopped, untruncated) default completion
_DEFAULT_MAX_TOKENS: Final = {"chat": 256, "completions": 16}
_TOKEN_RE: Final = re.compile(r"\s*\S+")
_WORD_RE: Final = re.compile(r"[a-z]+")
_CANDIDATE_RE: Final = re.compile(
    re.escape(CANDIDATE_OPEN)
    + r"(.*?)(?:"
    + re.escape(CANDIDATE_CLOSE)
    + r"|(?="
    + re.escape(CANDIDATE_OPEN)
    + r")|\Z)",
    re.DOTALL,
)
_JSON: Final = {"Content-Type": "application/json"}
_SERVER_ERROR_CYCLE: Final = (500, 502, 503)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-request fault probabilities, drawn once per generation request from the seeded RNG.

    The rates are exclusive outcomes of one draw, so their sum must be at most 1.
    """

    rate_limit: float = 0.0
    """429 with ``retry-after`` (whole seconds, rounded up), ``retry-after-ms`` and
    ``x-ratelimit-remaining-requests: 0`` / ``x-ratelimit-reset-requests`` headers."""
    rate_limit_bare: float = 0.0
    """429 with no retry or rate-limit headers at all."""
    rate_limit_junk: float = 0.0
    """429 whose retry headers are junk: ``retry-after: -1``, ``retry-after-ms: soon``,
    ``x-ratelimit-reset-requests: -1``."""
    server_error: float = 0.0
    """500 (JSON error), 502 (an HTML page, as proxies send) and 503 (JSON), in turn."""
    overloaded: float = 0.0
    """529 with an ``overloaded_error`` body."""
    reset: float = 0.0
    """Close the connection without a response (the client sees ``ServerDisconnectedError``;
    on a reused connection this is exactly the stale keep-alive race)."""
    timeout: float = 0.0
    """Hang for ``hang_seconds`` (far past a client timeout), then answer normally."""
    malformed: float = 0.0
    """200 ``application/json`` whose body is not valid JSON."""
    truncated: float = 0.0
    """200 whose body is cut in half: in turn, a ``Content-Length`` larger than the bytes sent
    before the connection drops (``ClientPayloadError``), and valid length with partial JSON."""
    error_200: float = 0.0
    """200 carrying an error: in turn, a body ``{"error": {...}}`` with no choices, and a normal
    body whose choices have ``finish_reason: "error"``, empty content and an ``error`` field."""
    short_n: float = 0.0
    """200 with ``n // 2`` choices per prompt (so none for ``n=1``)."""
    hang_seconds: float = 30.0
    """How long a ``timeout`` fault hangs, seconds."""
    retry_after: float = 0.05
    """The wait a ``rate_limit`` fault asks for, seconds."""

    def __post_init__(self) -> None:
        total = 0.0
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Faults.{kind} must be in [0, 1], got {rate!r}")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates must sum to at most 1, got {total:g}")
        if self.hang_seconds < 0 or self.retry_after < 0:
            raise ValueError("Faults.hang_seconds and Faults.retry_after must be >= 0")

    @property
    def total(self) -> float:
        """The probability that a request gets any fault."""
        return sum(getattr(self, kind) for kind in FAULT_KINDS)

    @classmethod
    def spread(cls, rate: float, *, include_timeout: bool = False, **kwargs: float) -> Faults:
        """``rate`` split evenly over every kind (except ``timeout`` unless asked)."""
        kinds = [k for k in FAULT_KINDS if include_timeout or k != "timeout"]
        return cls(**{k: rate / len(kinds) for k in kinds}, **kwargs)


@dataclass(frozen=True, slots=True)
class SimRequest:
    """What a fake model or judge sees: one choice of one prompt of one request."""

    endpoint: Literal["chat", "completions"]
    """Which endpoint was called."""
    model: str
    """The ``model`` the request named."""
    prompt: str
    """The completions prompt, or the chat messages' text contents joined by blank lines."""
    messages: tuple[Mapping[str, Any], ...] | None
    """The chat messages as sent; None for completions."""
    index: int
    """The choice index within this prompt, 0..n-1."""
    n: int
    """Choices the server will return for this prompt."""
    max_tokens: int
    """The completion cap in words; the server truncates longer text and reports ``length``."""
    temperature: float
    """Sampling temperature as sent (default 1.0)."""
    seed: int | None
    """The request's ``seed``, if any."""
    stop: tuple[str, ...]
    """Stop sequences; the server cuts the text at the first one."""
    server_seed: int
    """``SimConfig.seed``."""
    request_number: int
    """This server's count of generation requests, from 1, including this one."""
    is_judge: bool
    """Whether this is a judge call."""
    body: Mapping[str, Any]
    """The parsed JSON request body."""


ModelFn = Callable[[SimRequest], str]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulated server behaves; change it live with :meth:`SimServer.reconfigure`."""

    seed: int = 0
    """Seeds the fault and latency draws and the fake model."""
    latency: float = 0.0
    """Median server-side latency per request, seconds."""
    latency_sigma: float = 0.0
    """Log-normal sigma of that latency (0 = fixed); p99 is about median * exp(2.33 * sigma)."""
    per_token_latency: float = 0.0
    """Extra seconds per completion token of the longest choice."""
    rpm: float | None = None
    """Enforced requests per minute (token bucket); None for no limit."""
    tpm: float | None = None
    """Enforced tokens per minute, charged at admission as described in the module docstring."""
    burst_seconds: float = 60.0
    """Bucket capacity in seconds of rate: ``rpm * burst_seconds / 60`` requests may arrive at
    once. 60 behaves like OpenAI (a minute's worth); use about 1 to test a client's pacing."""
    honor_n: bool = True
    """False ignores ``n`` and returns one choice per prompt (like OpenRouter, llama.cpp)."""
    faults: Faults = Faults()
    """Fault injection rates."""
    rate_headers: bool = True
    """Send ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for configured limits."""
    model: ModelFn | None = None
    """Fake model: returns the completion text of one choice; None uses :func:`default_model`."""
    judge: ModelFn | None = None
    """Scripted judge for judge calls; None uses :func:`default_judge`."""
    max_concurrency_served: int | None = None
    """Requests processed at once; the rest queue (their latency starts when admitted)."""
    api_key: str | None = None
    """If set, requests to /v1 need ``Authorization: Bearer <api_key>`` or get 401."""
    keepalive_timeout: float = 5.0
    """Close idle keep-alive connections after this many seconds, like uvicorn and vLLM."""
    models: tuple[str, ...] = ("sim-model",)
    """Names listed by ``GET /v1/models``; requests may name any model."""

    def __post_init__(self) -> None:
        for name in ("latency", "latency_sigma", "per_token_latency"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"SimConfig.{name} must be > 0 or None")
        if self.burst_seconds <= 0 or self.keepalive_timeout <= 0:
            raise ValueError("SimConfig.burst_seconds and keepalive_timeout must be > 0")
        if self.max_concurrency_served is not None and self.max_concurrency_served < 1:
            raise ValueError("SimConfig.max_concurrency_served must be >= 1 or None")


@dataclass(slots=True)
class SimStats:
    """Live counters of a :class:`SimServer`; :meth:`SimServer.statistics` returns a copy."""

    requests: int = 0
    """HTTP requests received (every endpoint but /sim/stats)."""
    by_endpoint: Counter[str] = field(default_factory=Counter)
    """Requests per path."""
    by_status: Counter[int] = field(default_factory=Counter)
    """Responses per HTTP status (a reset sends none and is not counted here)."""
    faults: Counter[str] = field(default_factory=Counter)
    """Injected faults per kind."""
    rate_limited: int = 0
    """429s from enforcing rpm/tpm (fault 429s are in ``faults``)."""
    judge_requests: int = 0
    """Generation requests answered as judge calls."""
    choices: int = 0
    """Choices served in 200 responses."""
    prompt_tokens: int = 0
    """Prompt tokens in served usage."""
    completion_tokens: int = 0
    """Completion tokens in served usage."""
    model_errors: int = 0
    """Requests where the plugged model or judge raised (answered 500)."""
    cancelled: int = 0
    """Generation requests abandoned because the client disconnected."""
    connections: int = 0
    """Distinct client connections seen (by peer address)."""
    in_flight: int = 0
    """Generation requests being handled now."""
    max_in_flight: int = 0
    """Peak of ``in_flight``."""
    queued: int = 0
    """Requests waiting for the served-concurrency cap now."""
    max_queued: int = 0
    """Peak of ``queued``."""
    busy_seconds: float = 0.0
    """Time with at least one generation request in flight."""
    concurrency_seconds: float = 0.0
    """Integral of ``in_flight`` over time; divided by elapsed time it is mean concurrency."""
    started_at: float = 0.0
    """Clock reading at start."""
    updated_at: float = 0.0
    """Clock reading of the last integral update."""

    @property
    def too_many_requests(self) -> int:
        """All 429 responses, enforced and injected."""
        return self.by_status[429]

    @property
    def elapsed(self) -> float:
        """Seconds from start to the last update."""
        return self.updated_at - self.started_at

    @property
    def utilization(self) -> float:
        """Fraction of elapsed time with a request in flight."""
        return self.busy_seconds / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mean_concurrency(self) -> float:
        """Average number of generation requests in flight."""
        return self.concurrency_seconds / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status keys become strings), with the derived rates."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                {str(k): v for k, v in value.items()} if isinstance(value, Counter) else value
            )
        out["too_many_requests"] = self.too_many_requests
        out["utilization"] = self.utilization
        out["mean_concurrency"] = self.mean_concurrency
        return out


# ---------------------------------------------------------------------------------------------
# The fake model and judge


@lru_cache(maxsize=4096)
def _prompt_profile(prompt: str) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """(prompt digest, word pool, the pool as space-led tokens); the prompt's words weigh x4."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
    mentioned = set(_WORD_RE.findall(prompt.lower())) & _VOCAB_SET
    pool = VOCAB + tuple(w for w in VOCAB if w in mentioned) * 3  # at most 192 < 256 entries
    return digest, pool, tuple(" " + w for w in pool)


def _default_tokens(
    prompt: str, temperature: float, seed: int | None, server_seed: int, number: int, index: int
) -> list[str]:
    """The default model's tokens: one 64-byte blake2b digest picks the length and each word."""
    digest, pool, spaced = _prompt_profile(prompt)
    if temperature == 0:
        key = b"greedy"
    elif seed is not None:
        key = b"seed|%d|%d" % (seed, index)
    else:
        key = b"server|%d|%d|%d" % (server_seed, number, index)
    h = hashlib.blake2b(key, digest_size=64, key=digest).digest()
    m = len(pool)
    length = h[0] % _MAX_WORDS + 1
    return [pool[h[1] % m], *[spaced[b % m] for b in h[2 : length + 1]]]


def default_model(req: SimRequest) -> str:
    """1-32 words from :data:`VOCAB`; deterministic as described in the module docstring."""
    return "".join(
        _default_tokens(
            req.prompt, req.temperature, req.seed, req.server_seed, req.request_number, req.index
        )
    )


def _judge_candidates(prompt: str) -> list[str]:
    blocks = _CANDIDATE_RE.findall(prompt)
    return blocks if blocks else [prompt.replace(JUDGE_MARKER, "")]


def _judge_one(text: str) -> tuple[float, str]:
    words = _WORD_RE.findall(text.lower())
    good = sum(1 for w in words if w in GOOD_WORDS)
    return round(good / len(words), 2) if words else 0.0, f"{good}/{len(words)} on-topic words"


def default_judge(req: SimRequest) -> str:
    """Score candidates by the fraction of :data:`GOOD_WORDS` (see the module docstring)."""
    results = [_judge_one(c) for c in _judge_candidates(req.prompt)]
    if len(results) == 1:
        score, feedback = results[0]
        return orjson.dumps({"score": score, "feedback": feedback}).decode()
    return orjson.dumps(
        {"scores": [s for s, _ in results], "feedback": [f for _, f in results]}
    ).decode()


# ---------------------------------------------------------------------------------------------
# Helpers: durations, errors, token buckets


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


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
    return web.Response(status=status, body=body, headers={**_JSON, **(headers or {})})


class _Reject(Exception):
    """Internal: a request parameter is invalid (becomes a 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _Bucket:
    """Token bucket: ``capacity`` units refilled at ``rate`` per second, full at start."""

    __slots__ = ("capacity", "level", "limit", "rate", "updated")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.limit = per_minute  # the advertised per-minute limit
        self.rate = per_minute / 60.0  # refill, units per second
        self.capacity = max(1.0, per_minute * burst_seconds / 60.0)  # largest burst
        self.level = self.capacity  # units available now
        self.updated = now  # clock reading of the last refill

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` is available (0 if it is now); call after :meth:`refill`."""
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate

    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate


@dataclass(slots=True)
class _Parsed:
    endpoint: Literal["chat", "completions"]
    model: str
    prompts: list[str]
    messages: tuple[Mapping[str, Any], ...] | None
    n: int
    max_tokens: int
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    top_logprobs: int | None  # None: no logprobs asked
    token_ids: bool
    is_judge: bool
    body: Mapping[str, Any]


def _int_param(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Reject(
            f"{value!r} is not valid for '{name}': expected an integer in [{lo}, {hi}]", name
        )
    return value


def _message_text(i: int, message: Any) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _Reject(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _Reject(
                    f"messages[{i}].content parts must be typed objects", f"messages[{i}]"
                )
            if part["type"] == "text":
                parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    if content is None and message["role"] == "assistant":
        return ""
    raise _Reject(f"messages[{i}].content must be a string or an array of parts", f"messages[{i}]")


def _parse(body: Any, endpoint: Literal["chat", "completions"], judge_header: bool) -> _Parsed:
    """Validate a request body like a real server; raises :class:`_Reject`."""
    if not isinstance(body, dict):
        raise _Reject("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Reject("you must provide a model parameter", "model")
    messages: tuple[Mapping[str, Any], ...] | None = None
    if endpoint == "chat":
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise _Reject("'messages' must be a non-empty array", "messages")
        prompts = ["\n\n".join(_message_text(i, m) for i, m in enumerate(raw))]
        messages = tuple(raw)
        max_tokens = body.get("max_completion_tokens")
        cap_name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise _Reject("'prompt' must be a string or a non-empty array of strings", "prompt")
        cap_name = "max_tokens"
    if body.get("stream"):
        raise _Reject("the simulated server does not stream; send stream=false", "stream")
    n = _int_param(body, "n", 1, 1, 128)
    max_tokens = _int_param(body, cap_name, _DEFAULT_MAX_TOKENS[endpoint], 1, 1 << 20)
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1.0
    elif isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise _Reject(f"{temperature!r} is not valid for 'temperature'", "temperature")
    elif not 0 <= temperature <= 2:
        raise _Reject("'temperature' must be in [0, 2]", "temperature")
    seed = _int_param(body, "seed", None, -(1 << 63), (1 << 64) - 1)
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,) if stop_raw else ()
    elif (
        isinstance(stop_raw, list)
        and len(stop_raw) <= 4
        and all(isinstance(s, str) for s in stop_raw)
    ):
        stop = tuple(s for s in stop_raw if s)
    else:
        raise _Reject("'stop' must be a string or an array of at most 4 strings", "stop")
    if endpoint == "chat":
        want = body.get("logprobs")
        if want not in (None, True, False):
            raise _Reject("'logprobs' must be a boolean", "logprobs")
        top = _int_param(body, "top_logprobs", 0, 0, 20)
        if body.get("top_logprobs") is not None and not want:
            raise _Reject("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
        top_logprobs = top if want else None
    else:
        top_logprobs = _int_param(body, "logprobs", None, 0, 20)
    extra = body.get("extra_body")
    token_ids = body.get("return_token_ids") is True or (
        isinstance(extra, dict) and extra.get("return_token_ids") is True
    )
    is_judge = judge_header or any(JUDGE_MARKER in p for p in prompts)
    return _Parsed(
        endpoint, model, prompts, messages, n, max_tokens, float(temperature), seed, stop,
        top_logprobs, token_ids, is_judge, body,
    )  # fmt: skip


def _token_id(token: str) -> int:
    word = token.strip()
    known = _VOCAB_IDS.get(word)
    return known if known is not None else 10_000 + zlib.crc32(word.encode()) % 40_000


def _prompt_token_ids(prompt: str) -> list[int]:
    """``len(prompt) // 4 + 1`` pseudo ids: a BOS, then one per 4-character chunk."""
    return [1] + [
        10_000 + zlib.crc32(prompt[i : i + 4].encode()) % 40_000
        for i in range(0, len(prompt) - 3, 4)
    ]


def _logprob(token: str, position: int) -> float:
    return -round(0.001 + ((zlib.crc32(token.encode()) ^ (position * 2654435761)) % 3000) / 1000, 4)


def _chat_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
    content = []
    for i, tok in enumerate(tokens):
        lp = _logprob(tok, i)
        alts = []
        if top:
            alts.append({"token": tok, "logprob": lp, "bytes": list(tok.encode())})
            for j in range(1, top):
                alt = " " + VOCAB[(zlib.crc32(tok.encode()) + j) % len(VOCAB)]
                alts.append(
                    {"token": alt, "logprob": round(lp - 0.5 * j, 4), "bytes": list(alt.encode())}
                )
        content.append(
            {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alts}
        )
    return {"content": content, "refusal": None}


def _completion_logprobs(tokens: list[str], top: int, offset: int) -> dict[str, Any]:
    lps = [_logprob(tok, i) for i, tok in enumerate(tokens)]
    offsets = []
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok)
    tops = None
    if top:
        tops = []
        for tok, lp in zip(tokens, lps, strict=True):
            d = {tok: lp}
            for j in range(1, top):
                d.setdefault(
                    " " + VOCAB[(zlib.crc32(tok.encode()) + j) % len(VOCAB)], round(lp - 0.5 * j, 4)
                )
            tops.append(d)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _finish(text: str, stop: tuple[str, ...], max_tokens: int) -> tuple[list[str], str]:
    """Apply stop sequences then the token cap; returns (tokens, finish_reason)."""
    for s in stop:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    tokens = _TOKEN_RE.findall(text)
    if len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


# ---------------------------------------------------------------------------------------------
# The server


class SimServer:
    """The simulated OpenAI-compatible server, running in the current event loop.

    ``async with SimServer(SimConfig(...)) as sim:`` binds ``127.0.0.1`` on a free port (or
    ``port``) and sets ``sim.base_url`` to ``http://127.0.0.1:PORT/v1``. ``sim.stats`` is live;
    :meth:`statistics` returns a consistent copy. ``clock`` (seconds, monotonic) drives the
    rate-limit buckets and the busy-time integrals; inject one to test limits without sleeping.
    """

    def __init__(
        self,
        cfg: SimConfig = SimConfig(),  # frozen, so a shared default is safe
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg  # current config; replaced whole by reconfigure()
        self.host = host  # interface to bind
        self.port = port  # requested port; the bound one after start()
        self.stats = SimStats()  # live counters
        self._clock = clock  # monotonic seconds
        self._rng = random.Random(cfg.seed)  # fault and latency draws
        self._requests = 0  # generation requests so far (the fake model's request_number)
        self._turns: Counter[str] = Counter()  # per fault kind, for kinds that alternate forms
        self._peers: set[Any] = set()  # peer addresses seen, for stats.connections
        self._fault_table: list[tuple[float, str]] = []  # cumulative rate, kind
        self._requests_bucket: _Bucket | None = None
        self._tokens_bucket: _Bucket | None = None
        self._served: asyncio.Semaphore | None = None  # the served-concurrency cap
        self._closing: asyncio.Event | None = None  # set on close: hanging requests answer
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._created = int(time.time())  # "created" of the listed models
        self._apply(cfg, rebuild_buckets=True)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; available once started."""
        if self._base_url is None:
            raise RuntimeError("SimServer is not started")
        return self._base_url

    async def start(self) -> str:
        """Bind and serve in the current event loop; returns :attr:`base_url`."""
        if self._runner is not None:
            raise RuntimeError("SimServer already started")
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/sim/stats", self._stats)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,  # a client that hangs up cancels its request
            keepalive_timeout=self.cfg.keepalive_timeout,
            shutdown_timeout=0.5,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self._runner = runner
        self._closing = asyncio.Event()
        self.port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._base_url = f"http://{host}:{self.port}/v1"
        now = self._clock()
        self.stats.started_at = self.stats.updated_at = now
        return self._base_url

    async def close(self) -> None:
        """Stop serving; requests that hang on a ``timeout`` fault are answered first."""
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- live changes ---------------------------------------------------------------------

    def reconfigure(self, **changes: Any) -> None:
        """Replace config fields while serving, e.g. ``sim.reconfigure(rpm=60, latency=0.01)``.

        Changing ``rpm``, ``tpm`` or ``burst_seconds`` starts full buckets; ``keepalive_timeout``
        only applies to a server started afterwards.
        """
        cfg = replace(self.cfg, **changes)
        rebuild = any(k in changes for k in ("rpm", "tpm", "burst_seconds"))
        self._apply(cfg, rebuild_buckets=rebuild)

    def set_faults(self, faults: Faults | None = None, **rates: float) -> None:
        """Set the fault rates: a whole :class:`Faults`, or keyword rates (others become 0)."""
        self.reconfigure(faults=faults if faults is not None else Faults(**rates))

    def statistics(self) -> SimStats:
        """A copy of the counters with the busy-time integrals brought up to now."""
        self._integrate()
        s = self.stats
        return replace(
            s,
            by_endpoint=Counter(s.by_endpoint),
            by_status=Counter(s.by_status),
            faults=Counter(s.faults),
        )

    def _apply(self, cfg: SimConfig, *, rebuild_buckets: bool) -> None:
        old = self.cfg
        self.cfg = cfg
        table, total = [], 0.0
        for kind in FAULT_KINDS:
            rate = getattr(cfg.faults, kind)
            if rate > 0:
                total += rate
                table.append((total, kind))
        self._fault_table = table
        if rebuild_buckets:
            now = self._clock()
            self._requests_bucket = _Bucket(cfg.rpm, cfg.burst_seconds, now) if cfg.rpm else None
            self._tokens_bucket = _Bucket(cfg.tpm, cfg.burst_seconds, now) if cfg.tpm else None
        if self._served is None or cfg.max_concurrency_served != old.max_concurrency_served:
            cap = cfg.max_concurrency_served
            self._served = asyncio.Semaphore(cap) if cap is not None else None

    # -- accounting -----------------------------------------------------------------------

    def _integrate(self) -> None:
        s = self.stats
        now = self._clock()
        dt = now - s.updated_at
        if s.in_flight:
            s.busy_seconds += dt
            s.concurrency_seconds += s.in_flight * dt
        s.updated_at = now

    def _count(self, request: web.Request) -> None:
        s = self.stats
        s.requests += 1
        s.by_endpoint[request.path] += 1
        transport = request.transport
        if transport is not None:
            peer = transport.get_extra_info("peername")
            if peer not in self._peers:
                self._peers.add(peer)
                s.connections += 1

    def _authorized(self, request: web.Request) -> bool:
        key = self.cfg.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    # -- simple endpoints -----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        self._count(request)
        self.stats.by_status[200] += 1
        return web.Response(body=b'{"status":"ok"}', headers=_JSON)

    async def _models(self, request: web.Request) -> web.Response:
        self._count(request)
        if not self._authorized(request):
            return self._respond(_unauthorized())
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "sim"}
            for m in self.cfg.models
        ]
        return self._respond(
            web.Response(body=orjson.dumps({"object": "list", "data": data}), headers=_JSON)
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.statistics().as_dict()), headers=_JSON)

    def _respond(self, response: web.StreamResponse) -> web.StreamResponse:
        self.stats.by_status[response.status] += 1
        return response

    # -- generation -----------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "completions")

    async def _generation(
        self, request: web.Request, endpoint: Literal["chat", "completions"]
    ) -> web.StreamResponse:
        self._count(request)
        s = self.stats
        self._integrate()
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            response = await self._generate(request, endpoint)
        except asyncio.CancelledError:
            s.cancelled += 1
            raise
        finally:
            self._integrate()
            s.in_flight -= 1
        if response is None:  # the connection was reset on purpose: nothing was sent
            return web.Response()
        return self._respond(response)

    async def _generate(
        self, request: web.Request, endpoint: Literal["chat", "completions"]
    ) -> web.StreamResponse | None:
        cfg = self.cfg
        if not self._authorized(request):
            return _unauthorized()
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly.)",
            )
        try:
            p = _parse(body, endpoint, request.headers.get("x-sim-role") == "judge")
        except _Reject as e:
            return _error(400, str(e), param=e.param, code="invalid_value" if e.param else None)
        n_out = p.n if cfg.honor_n else 1
        prompt_tokens = sum(len(text) // 4 + 1 for text in p.prompts)

        limited, limit_headers = self._admit(prompt_tokens + len(p.prompts) * n_out * p.max_tokens)
        if limited is not None:
            self.stats.rate_limited += 1
            return limited

        fault = self._draw_fault()
        if fault is not None:
            self.stats.faults[fault] += 1
            early = self._early_fault(fault)
            if early is not None:
                return early
            if fault == "short_n":
                n_out //= 2

        self._requests += 1
        if p.is_judge:
            self.stats.judge_requests += 1
        # error_200 alternates: an error body (even turns), choices that finished in error (odd)
        error_choices = fault == "error_200" and self._turn(fault) % 2 == 1
        try:
            payload, longest = self._build(p, n_out, prompt_tokens, error_choices=error_choices)
        except Exception as e:  # a plugged model or judge failed: a 500 like a real server's
            self.stats.model_errors += 1
            return _error(500, f"model error: {e!r}", type_="server_error")

        if fault == "timeout":
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.cfg.faults.hang_seconds)
        else:
            await self._serve_latency(longest)

        if fault is not None and fault not in ("timeout", "short_n"):
            return await self._late_fault(fault, request, payload, error_choices)
        usage = payload["usage"]
        self.stats.choices += len(payload["choices"])
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage["completion_tokens"]
        return web.Response(body=orjson.dumps(payload), headers={**_JSON, **limit_headers})

    def _admit(self, tokens: int) -> tuple[web.Response | None, dict[str, str]]:
        """Charge the buckets; returns (a 429 or None, rate-limit headers)."""
        rb, tb = self._requests_bucket, self._tokens_bucket
        if rb is None and tb is None:
            return None, {}
        now = self._clock()
        wait_r = wait_t = 0.0
        if rb is not None:
            rb.refill(now)
            wait_r = rb.wait_for(1)
        if tb is not None:
            tb.refill(now)
            if tokens > tb.capacity:
                return _error(
                    429,
                    f"Request too large: {tokens} tokens requested, the token limit is "
                    f"{tb.limit:g} per minute with a burst of {tb.capacity:g}.",
                    type_="tokens",
                    code="rate_limit_exceeded",
                    headers=self._limit_headers(),
                ), {}
            wait_t = tb.wait_for(tokens)
        wait = max(wait_r, wait_t)
        if wait > 0:
            kind = "requests" if wait_r >= wait_t else "tokens"
            bucket = rb if kind == "requests" else tb
            assert bucket is not None
            headers = {
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                **self._limit_headers(),
            }
            message = (
                f"Rate limit reached for {kind} per min (RPM/TPM): Limit {bucket.limit:g}, "
                f"Used {bucket.capacity - bucket.level:.0f}, Requested "
                f"{1 if kind == 'requests' else tokens}. Please try again in "
                f"{format_duration(wait)}."
            )
            return _error(429, message, type_=kind, code="rate_limit_exceeded", headers=headers), {}
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= tokens
        return None, self._limit_headers()

    def _limit_headers(self) -> dict[str, str]:
        if not self.cfg.rate_headers:
            return {}
        headers = {}
        for name, bucket in (("requests", self._requests_bucket), ("tokens", self._tokens_bucket)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = f"{bucket.limit:.0f}"
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = format_duration(bucket.reset_in())
        return headers

    def _draw_fault(self) -> str | None:
        if not self._fault_table:
            return None
        u = self._rng.random()
        for cumulative, kind in self._fault_table:
            if u < cumulative:
                return kind
        return None

    def _turn(self, kind: str) -> int:
        """How many times ``kind`` acted before (for faults that alternate their forms)."""
        turn = self._turns[kind]
        self._turns[kind] += 1
        return turn

    def _early_fault(self, fault: str) -> web.Response | None:
        """Faults that answer before any processing (rate limits, overload)."""
        if fault == "rate_limit":
            wait = self.cfg.faults.retry_after
            headers = {
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": format_duration(wait),
            }
            return _error(
                429,
                f"Rate limit reached (simulated). Please try again in {format_duration(wait)}.",
                type_="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if fault == "rate_limit_bare":
            return _error(429, "Too many requests (simulated).", type_="rate_limit_error")
        if fault == "rate_limit_junk":
            headers = {
                "retry-after": "-1",
                "retry-after-ms": "soon",
                "x-ratelimit-remaining-requests": "-1",
                "x-ratelimit-reset-requests": "-1",
            }
            return _error(
                429, "Too many requests (simulated).", type_="rate_limit_error", headers=headers
            )
        if fault == "overloaded":
            return _error(529, "Overloaded (simulated).", type_="overloaded_error")
        return None

    async def _late_fault(
        self, fault: str, request: web.Request, payload: dict[str, Any], error_choices: bool
    ) -> web.StreamResponse | None:
        """Faults that strike after the latency: errors, resets, broken bodies."""
        if fault == "error_200":
            if error_choices:
                return web.Response(body=orjson.dumps(payload), headers=_JSON)
            error = {"message": "Upstream provider error (simulated)", "type": "server_error"}
            return web.Response(body=orjson.dumps({"error": {**error, "code": 502}}), headers=_JSON)
        if fault == "server_error":
            status = _SERVER_ERROR_CYCLE[self._turn(fault) % len(_SERVER_ERROR_CYCLE)]
            if status == 502:
                html = b"<html><head><title>502 Bad Gateway</title></head><body></body></html>"
                return web.Response(status=502, body=html, headers={"Content-Type": "text/html"})
            message = "The server had an error while processing your request (simulated)."
            if status == 503:
                message = "The server is overloaded or not ready yet (simulated)."
            return _error(status, message, type_="server_error")
        if fault == "malformed":
            body = b'{"id": "' + payload["id"].encode() + b'", "choices": [{"index": 0,, "text": }'
            return web.Response(body=body, headers=_JSON)
        transport = request.transport
        if fault == "reset":
            if transport is not None:
                transport.abort()
            return None
        # truncated
        full = orjson.dumps(payload)
        half = full[: len(full) // 2]
        if self._turn(fault) % 2 == 0 or transport is None:
            return web.Response(body=half, headers=_JSON)
        response = web.StreamResponse(headers=_JSON)
        response.content_length = len(full)
        await response.prepare(request)
        await response.write(half)
        transport.abort()
        return response

    async def _serve_latency(self, longest: int) -> None:
        cfg = self.cfg
        delay = cfg.latency
        if delay and cfg.latency_sigma:
            delay *= math.exp(cfg.latency_sigma * self._rng.gauss(0.0, 1.0))
        delay += cfg.per_token_latency * longest
        served = self._served
        if served is None:
            if delay > 0:
                await asyncio.sleep(delay)
            return
        s = self.stats
        s.queued += 1
        s.max_queued = max(s.max_queued, s.queued)
        try:
            await served.acquire()
        finally:
            s.queued -= 1
        try:
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            served.release()

    def _build(
        self, p: _Parsed, n_out: int, prompt_tokens: int, *, error_choices: bool
    ) -> tuple[dict[str, Any], int]:
        """The 200 payload and the longest choice's token count."""
        fn = (self.cfg.judge or default_judge) if p.is_judge else self.cfg.model
        chat = p.endpoint == "chat"
        server_seed, number = self.cfg.seed, self._requests
        choices: list[dict[str, Any]] = []
        completion_tokens = longest = 0
        for pi, prompt in enumerate(p.prompts):
            for j in range(n_out):
                if fn is None:  # the default model, without building a SimRequest: fast path
                    tokens = _default_tokens(prompt, p.temperature, p.seed, server_seed, number, j)
                    finish = "stop"
                    if p.stop:
                        tokens, finish = _finish("".join(tokens), p.stop, p.max_tokens)
                    elif len(tokens) > p.max_tokens:
                        tokens, finish = tokens[: p.max_tokens], "length"
                else:
                    req = SimRequest(
                        p.endpoint, p.model, prompt, p.messages, j, n_out, p.max_tokens,
                        p.temperature, p.seed, p.stop, server_seed, number, p.is_judge, p.body,
                    )  # fmt: skip
                    tokens, finish = _finish(fn(req), p.stop, p.max_tokens)
                if error_choices:
                    tokens, finish = [], "error"
                text = "".join(tokens)
                completion_tokens += len(tokens)
                longest = max(longest, len(tokens))
                choice: dict[str, Any] = {"index": pi * n_out + j}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                    choice["logprobs"] = (
                        None if p.top_logprobs is None else _chat_logprobs(tokens, p.top_logprobs)
                    )
                else:
                    choice["text"] = text
                    choice["logprobs"] = (
                        None
                        if p.top_logprobs is None
                        else _completion_logprobs(tokens, p.top_logprobs, len(prompt))
                    )
                choice["finish_reason"] = finish
                if error_choices:
                    choice["error"] = {
                        "code": 502,
                        "message": "Upstream provider error (simulated)",
                    }
                if p.token_ids:
                    choice["token_ids"] = [_token_id(t) for t in tokens]
                    if not chat:
                        choice["prompt_token_ids"] = _prompt_token_ids(prompt)
                choices.append(choice)
        payload: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-sim{self._requests}",
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
            payload["prompt_token_ids"] = _prompt_token_ids(p.prompts[0])
        return payload, longest


def _unauthorized() -> web.Response:
    return _error(
        401,
        "Incorrect API key provided.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="sim"'},
    )


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m engine.testing.sim",
        description="Serve the simulated OpenAI-compatible server; prints the base URL first.",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="median seconds per request")
    ap.add_argument("--latency-sigma", type=float, default=0.0, help="log-normal sigma")
    ap.add_argument("--per-token-latency", type=float, default=0.0)
    ap.add_argument("--rpm", type=float, default=None, help="enforced requests per minute")
    ap.add_argument("--tpm", type=float, default=None, help="enforced tokens per minute")
    ap.add_argument("--burst-seconds", type=float, default=60.0)
    ap.add_argument("--honor-n", dest="honor_n", action="store_true", default=True)
    ap.add_argument("--ignore-n", dest="honor_n", action="store_false")
    ap.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="total fault probability split evenly over every kind but timeout",
    )
    ap.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"a fault rate (repeatable, overrides --fault-rate); kinds: {', '.join(FAULT_KINDS)}",
    )
    ap.add_argument("--hang-seconds", type=float, default=30.0)
    ap.add_argument("--retry-after", type=float, default=0.05, help="seconds asked by 429 faults")
    ap.add_argument("--no-rate-headers", dest="rate_headers", action="store_false", default=True)
    ap.add_argument("--max-concurrency-served", type=int, default=None)
    ap.add_argument("--keepalive-timeout", type=float, default=5.0)
    ap.add_argument("--api-key", default=None)
    return ap.parse_args(argv)


def _config_from_args(args: argparse.Namespace) -> SimConfig:
    extra = {"hang_seconds": args.hang_seconds, "retry_after": args.retry_after}
    rates: dict[str, float] = {}
    for item in args.fault:
        kind, sep, rate = item.partition("=")
        if not sep or kind not in FAULT_KINDS:
            raise ValueError(f"--fault expects KIND=RATE with KIND in {FAULT_KINDS}, got {item!r}")
        rates[kind] = float(rate)
    faults = Faults(**rates, **extra) if rates else Faults.spread(args.fault_rate, **extra)
    return SimConfig(
        seed=args.seed,
        latency=args.latency,
        latency_sigma=args.latency_sigma,
        per_token_latency=args.per_token_latency,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_seconds=args.burst_seconds,
        honor_n=args.honor_n,
        faults=faults,
        rate_headers=args.rate_headers,
        max_concurrency_served=args.max_concurrency_served,
        api_key=args.api_key,
        keepalive_timeout=args.keepalive_timeout,
    )


async def _serve(cfg: SimConfig, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    async with SimServer(cfg, host=host, port=port) as sim:
        print(sim.base_url, flush=True)
        await stop.wait()
        stats = orjson.dumps(sim.statistics().as_dict()).decode()
    print(stats, file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the simulated server until SIGINT/SIGTERM; the first stdout line is the base URL.

    At exit it prints the final :class:`SimStats` as one JSON line on stderr. Uses uvloop when
    it is installed. Returns the exit status.
    """
    args = _parse_args(argv)
    try:
        cfg = _config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loop_factory = None
    try:
        import uvloop  # optional, never a dependency

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(cfg, args.host, args.port))


@contextlib.contextmanager
def sim_subprocess(*cli_args: str) -> Iterator[str]:
    """Run the simulated server in a child process (``python -m engine.testing.sim ARGS``);
    yields its base URL and stops it on exit. For benchmarks and tests that must measure the
    client process alone.

    Example::

        with sim_subprocess("--latency", "0.05") as url:
            ...  # Client(EndpointConfig(base_url=url, ...))
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "engine.testing.sim", "--port", "0", *cli_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the simulated server did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
