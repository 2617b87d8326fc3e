"""The simulated server's settings, what its fake model sees, and its counters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from .adapters import SimAdapter

__all__ = (
    "ALL_FAULT_KINDS",
    "FAULT_KINDS",
    "HOSTILE_KINDS",
    "Faults",
    "ModelFn",
    "SimConfig",
    "SimCounters",
    "SimRequest",
    "SimStatistics",
)

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
"""Names of the :class:`Faults` rates of a flaky server, in the order the fault draw checks
them (:meth:`Faults.spread` spreads a rate over these)."""

HOSTILE_KINDS: Final = ("bad_usage", "oversized", "deep_json", "echo_key", "redirect")
"""Names of the :class:`Faults` rates of a server that sends what no client should trust
(checked after :data:`FAULT_KINDS`; never part of :meth:`Faults.spread`)."""

ALL_FAULT_KINDS: Final = FAULT_KINDS + HOSTILE_KINDS
"""Every fault kind, in the order the draw checks them."""

BAD_USAGES: Final = (
    {"prompt_tokens": -5, "completion_tokens": 3},
    {"prompt_tokens": 10**12, "completion_tokens": 10**12},
    {"prompt_tokens": "12", "completion_tokens": 3},
    {"prompt_tokens": True, "completion_tokens": 3},
    {"prompt_tokens": 12.5, "completion_tokens": 3},
    {"prompt_tokens": None, "completion_tokens": None},
    None,
    [1, 2],
)
"""The usages a ``bad_usage`` fault sends, in turn: negative, absurd, a string, a bool, a
fraction, nulls, no usage at all, not an object."""


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
    bad_usage: float = 0.0
    """200 whose ``usage`` is unsound: in turn each of :data:`BAD_USAGES`."""
    oversized: float = 0.0
    """200 whose valid JSON body is padded to ``oversize_bytes``: in turn with a
    ``Content-Length`` and chunked (no length announced)."""
    deep_json: float = 0.0
    """200 whose body nests arrays ``deep_levels`` deep beside the choices, in turn as given and
    100,000 deep (which orjson itself refuses)."""
    echo_key: float = 0.0
    """200 whose completions (text, tokens) echo the bearer token the request was sent with."""
    redirect: float = 0.0
    """307 to ``redirect_to`` (plus the request path and a ``?token=`` query), as a proxy or
    a hijacked endpoint might send."""
    hang_seconds: float = 30.0
    """How long a ``timeout`` fault hangs, seconds."""
    retry_after: float = 0.05
    """The wait a ``rate_limit`` fault asks for, seconds."""
    oversize_bytes: int = 2 * 1024 * 1024
    """The body size of an ``oversized`` fault, bytes."""
    deep_levels: int = 200
    """The nesting depth of a ``deep_json`` fault (on its even turns)."""
    redirect_to: str = "http://127.0.0.1:9"
    """Where a ``redirect`` fault points (scheme, host and port; the request path is added)."""

    def __post_init__(self) -> None:
        total = 0.0
        for kind in ALL_FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Faults.{kind} must be in [0, 1], got {rate!r}")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates must sum to at most 1, got {total:g}")
        if self.hang_seconds < 0 or self.retry_after < 0:
            raise ValueError("Faults.hang_seconds and Faults.retry_after must be >= 0")
        if self.oversize_bytes < 0 or self.deep_levels < 1:
            raise ValueError("Faults.oversize_bytes must be >= 0 and Faults.deep_levels >= 1")

    @property
    def total(self) -> float:
        """The probability that a request gets any fault."""
        return sum(getattr(self, kind) for kind in ALL_FAULT_KINDS)

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
    adapter: SimAdapter | None = None
    """The loaded LoRA adapter the request's ``model`` names; None for a base model."""


ModelFn = Callable[[SimRequest], Any]
"""A fake model: the completion text of one choice, or a
:class:`~engine.testing.sim.script.SimReply` (text and tool calls)."""


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
    """Enforced tokens per minute, charged at admission (see :mod:`engine.testing.sim`)."""
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
    """Fake model: returns the completion text of one choice, or a
    :class:`~engine.testing.sim.script.SimReply` with tool calls (a
    :class:`~engine.testing.sim.script.ToolScript` scripts whole episodes); None uses
    :func:`default_model`."""
    judge: ModelFn | None = None
    """Scripted judge for judge calls; None uses :func:`default_judge`."""
    max_concurrency_served: int | None = None
    """Requests processed at once; the rest queue (their latency starts when admitted)."""
    api_key: str | None = None
    """If set, requests to /v1 need ``Authorization: Bearer <api_key>`` or get 401."""
    keepalive_timeout: float = 5.0
    """Close idle keep-alive connections after this many seconds, like uvicorn and vLLM."""
    models: tuple[str, ...] = ("sim-model",)
    """Base model names listed by ``GET /v1/models`` (the first is the parent of loaded
    adapters); requests may name any model unless ``strict_models``."""
    strict_models: bool = False
    """Answer a request whose ``model`` is neither in ``models`` nor a loaded adapter with
    vLLM's 404 (``NotFoundError``, ``param: "model"``)."""
    runtime_lora: bool = True
    """Serve ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM with
    ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); False answers them 404
    ``{"detail": "Not Found"}`` as vLLM does without runtime updating."""
    max_lora_rank: int = 16
    """vLLM's ``--max-lora-rank`` (its default is 16): a higher-rank adapter fails to load (400)."""
    usage_cost: float | None = None
    """Report ``usage.cost`` (OpenRouter's figure in USD) as this many USD per token, prompt
    and completion tokens together; None reports none. A negative value is sent as it is (an
    untrustworthy figure, for testing a client's checks)."""

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
        if self.max_lora_rank < 1:
            raise ValueError("SimConfig.max_lora_rank must be >= 1")


@dataclass(frozen=True, slots=True)
class SimStatistics:
    """A snapshot of a :class:`~engine.testing.sim.SimServer`'s counters (its ``statistics()``).

    Attributes:
        requests: HTTP requests received (every endpoint but /sim/stats).
        by_endpoint: requests per path.
        by_status: responses per HTTP status (a reset sends none and is not counted here).
        faults: injected faults per kind.
        rate_limited: 429s from enforcing rpm/tpm (fault 429s are in ``faults``).
        judge_requests: generation requests answered as judge calls.
        choices: choices served in 200 responses.
        prompt_tokens: prompt tokens in served usage.
        completion_tokens: completion tokens in served usage.
        model_errors: requests where the plugged model or judge raised (answered 500).
        cancelled: generation requests abandoned because the client disconnected.
        connections: distinct client connections seen (by peer address).
        in_flight: generation requests being handled now.
        max_in_flight: peak of ``in_flight``.
        queued: requests waiting for the served-concurrency cap now.
        max_queued: peak of ``queued``.
        busy_seconds: time with at least one generation request in flight.
        concurrency_seconds: integral of ``in_flight`` over time; divided by the elapsed time
            it is the mean concurrency.
        started_at: clock reading at start.
        updated_at: clock reading of the last integral update.
    """

    requests: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    judge_requests: int = 0
    choices: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_errors: int = 0
    cancelled: int = 0
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    queued: int = 0
    max_queued: int = 0
    busy_seconds: float = 0.0
    concurrency_seconds: float = 0.0
    started_at: float = 0.0
    updated_at: float = 0.0

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


@dataclass(slots=True)
class SimCounters:
    """The live, mutable counters behind :class:`SimStatistics` (the same fields, documented
    there); a server updates them as it serves and :meth:`snapshot` freezes a copy."""

    requests: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    judge_requests: int = 0
    choices: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_errors: int = 0
    cancelled: int = 0
    connections: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    queued: int = 0
    max_queued: int = 0
    busy_seconds: float = 0.0
    concurrency_seconds: float = 0.0
    started_at: float = 0.0
    updated_at: float = 0.0

    def integrate(self, now: float) -> None:
        """Bring the busy-time and concurrency integrals up to ``now``."""
        dt = now - self.updated_at
        if self.in_flight:
            self.busy_seconds += dt
            self.concurrency_seconds += self.in_flight * dt
        self.updated_at = now

    def snapshot(self) -> SimStatistics:
        """A frozen copy (the counters copied too)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in values.items():
            if isinstance(value, Counter):
                values[name] = Counter(value)
        return SimStatistics(**values)
