"""Endpoint stage: what each request cost in USD, and the run's spend budget.

A request's cost is, in order of trust:

1. the provider's own figure, ``usage.cost`` (OpenRouter reports it in credits, which are
   USD), when it is a finite non-negative number (:func:`reported_cost`); any other value is
   an anomaly, logged and not trusted;
2. else its tokens at the model's price (:class:`PriceTable`): the run's ``[prices]`` entries
   over the built-in :data:`BUILTIN_PRICES` of common hosted models, which apply only to the
   hosted providers (``openai``, ``openrouter``);
3. else 0 (a local server, llama.cpp, the embedded LM: unpriced models cost nothing).

One :class:`SpendMeter` is shared by the generation and the judge clients of a run. Every
attempt asks it before sending (:meth:`SpendMeter.admit`): once ``limits.max_cost_usd`` is
spent, new requests are refused with :class:`~engine.errors.BudgetSpent` before they are
sent; requests already in flight are never cancelled by it, and their cost is counted when
they finish (:meth:`SpendMeter.finish`), so the spent figure is exactly the sum of the
``cost_usd`` of the run's events. Warnings fire once each at 50%, 80% and 100% of the budget.

The same meter holds the run's other two budgets, ``limits.max_requests`` (calls: attempts
admitted) and ``limits.max_total_tokens`` (prompt + completion tokens of the answered calls),
with the same rule: once one is spent no new request goes out and the requests in flight
finish. :attr:`SpendMeter.spent_budget` names the budget that ended the run (``usd``,
``calls`` or ``tokens``), the trainer's ``stop_detail``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..config.sections import ModelPrice, RunConfig
from ..errors import BudgetSpent
from ..telemetry.logs import get_logger
from ..types import Usage

__all__ = (
    "BUILTIN_PRICES",
    "BUILTIN_PRICES_DATE",
    "HOSTED_PROVIDERS",
    "THRESHOLDS",
    "PriceTable",
    "SpendMeter",
    "Threshold",
    "reported_cost",
)

_log = get_logger("engine.endpoints.spend")

BUILTIN_PRICES_DATE = "2025-06-01"
"""When :data:`BUILTIN_PRICES` was taken from the providers' published list prices."""

BUILTIN_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        # OpenAI (platform.openai.com/docs/pricing), standard tier, uncached input
        "gpt-4o": ModelPrice(2.50, 10.00),
        "gpt-4o-mini": ModelPrice(0.15, 0.60),
        "gpt-4.1": ModelPrice(2.00, 8.00),
        "gpt-4.1-mini": ModelPrice(0.40, 1.60),
        "gpt-4.1-nano": ModelPrice(0.10, 0.40),
        "o3-mini": ModelPrice(1.10, 4.40),
        "o4-mini": ModelPrice(1.10, 4.40),
        # Anthropic, as OpenRouter names them (anthropic.com/pricing)
        "claude-3.5-haiku": ModelPrice(0.80, 4.00),
        "claude-3.5-sonnet": ModelPrice(3.00, 15.00),
        "claude-3.7-sonnet": ModelPrice(3.00, 15.00),
        "claude-sonnet-4": ModelPrice(3.00, 15.00),
        # Google (ai.google.dev/pricing), prompts up to 200k tokens
        "gemini-2.0-flash-001": ModelPrice(0.10, 0.40),
        "gemini-2.5-flash": ModelPrice(0.30, 2.50),
        "gemini-2.5-pro": ModelPrice(1.25, 10.00),
    }
)
"""USD per 1M input and output tokens of common hosted models, as of
:data:`BUILTIN_PRICES_DATE`. A name is looked up as sent, then without its ``vendor/`` prefix
(``openai/gpt-4o-mini`` finds ``gpt-4o-mini``). Cached-input discounts are not applied, so a
cost from the table is an upper bound. Prices change: ``[prices."model"]`` in the config
overrides any entry."""

HOSTED_PROVIDERS = frozenset({"openai", "openrouter"})
"""Providers the built-in prices apply to; a ``local`` endpoint is priced only by the config."""

THRESHOLDS = (0.5, 0.8, 1.0)
"""Fractions of ``limits.max_cost_usd`` at which the meter warns, once each."""


def reported_cost(value: Any) -> float | None:
    """``usage.cost`` as USD: a finite non-negative number, else None (absent or not trusted).

    A value that is present but not such a number (negative, NaN, infinite, a string, a
    bool) is an anomaly: it is logged (``endpoint.cost_invalid``, at the 1st, 10th, 100th...
    occurrence in the process, with the count, so a provider that always sends one cannot
    flood the log) and the caller prices the request by its tokens instead.
    """
    if value is None:
        return None
    if (type(value) is float or type(value) is int) and math.isfinite(value) and value >= 0:
        return float(value)
    _INVALID[0] += 1
    count = _INVALID[0]
    if count == 10 ** (len(str(count)) - 1):  # 1, 10, 100, ...
        _log.warning("endpoint.cost_invalid", value_type=type(value).__name__,
                     value=repr(value)[:40], count=count)  # fmt: skip
    return None


_INVALID = [0]
"""Invalid ``usage.cost`` values seen by this process."""


class PriceTable:
    """Model prices in USD per 1M tokens: the config's entries over the built-in ones.

    Example::

        table = PriceTable({"my-model": ModelPrice(0.15, 0.60)})
        table.cost("my-model", Usage(1000, 500), hosted=False)   # 0.00045
    """

    __slots__ = ("_builtin", "_user")

    def __init__(
        self,
        user: Mapping[str, ModelPrice] | None = None,
        builtin: Mapping[str, ModelPrice] = BUILTIN_PRICES,
    ) -> None:
        self._user = dict(user or {})
        self._builtin = builtin

    def price(self, model: str, *, hosted: bool) -> ModelPrice | None:
        """The price of ``model``: a config entry, else (for a hosted provider) a built-in one."""
        if not hosted and not self._user:
            return None  # a local endpoint with no prices configured: unpriced
        short = model.rsplit("/", 1)[-1]
        for table in (self._user, self._builtin if hosted else None):
            if table is None:
                continue
            found = table.get(model) or table.get(short)
            if found is not None:
                return found
        return None

    def cost(self, model: str, usage: Usage, *, hosted: bool) -> float | None:
        """What ``usage`` of ``model`` costs at its price; None when it has none."""
        p = self.price(model, hosted=hosted)
        if p is None:
            return None
        return (usage.prompt_tokens * p.input + usage.completion_tokens * p.output) / 1e6


@dataclass(frozen=True, slots=True)
class Threshold:
    """A budget threshold crossed: ``fraction`` of ``budget`` USD, with ``spent`` USD spent."""

    fraction: float
    spent: float
    budget: float

    @property
    def percent(self) -> int:
        return round(self.fraction * 100)

    def line(self) -> str:
        """The one-line notice the CLI prints on stderr."""
        if self.fraction >= 1.0:
            return (
                f"warning: spend budget spent: ${self.spent:.6g} of ${self.budget:.6g}; "
                "no new requests, stopping after the requests in flight"
            )
        used = f"${self.spent:.6g} of ${self.budget:.6g}"
        return f"warning: {self.percent}% of the spend budget used: {used}"


class SpendMeter:
    """The USD a run spent on requests, its budget, and the requests in flight.

    Args:
        prices: how requests without a trusted reported cost are priced.
        budget: ``limits.max_cost_usd``; None for no budget.
        spent: USD already spent (a resumed run's total).
        max_requests: ``limits.max_requests``, the budget in calls; None for none.
        max_tokens: ``limits.max_total_tokens``, the budget in tokens; None for none.
        on_threshold: called once per threshold crossed (the CLI prints :meth:`Threshold.line`).

    Attributes:
        spent: USD spent so far, restored figure included.
        requests: priced requests (finished attempts that returned an answer).
        reported: how many of them carried a trusted ``usage.cost``.
        admitted: attempts admitted (sent) so far, the figure ``max_requests`` bounds.
        tokens: prompt + completion tokens of the answered calls, the figure ``max_tokens``
            bounds.
    """

    def __init__(
        self,
        prices: PriceTable | None = None,
        *,
        budget: float | None = None,
        spent: float = 0.0,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        on_threshold: Callable[[Threshold], object] | None = None,
    ) -> None:
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be a positive number or None, got {budget!r}")
        for name, cap in (("max_requests", max_requests), ("max_tokens", max_tokens)):
            if cap is not None and not cap >= 1:
                raise ValueError(f"{name} must be a positive integer or None, got {cap!r}")
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.admitted = 0
        self.tokens = 0
        self.prices = prices or PriceTable()
        self.budget = budget
        self.spent = 0.0
        self.requests = 0
        self.reported = 0
        self.on_threshold = on_threshold
        self._fired: set[float] = set()
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self.restore(spent)

    @classmethod
    def from_config(
        cls, config: RunConfig, *, on_threshold: Callable[[Threshold], object] | None = None
    ) -> SpendMeter:
        """The meter of a run: its ``[prices]`` and ``limits.max_cost_usd``."""
        return cls(
            PriceTable(config.prices),
            budget=config.limits.max_cost_usd,
            max_requests=config.limits.max_requests,
            max_tokens=config.limits.max_total_tokens,
            on_threshold=on_threshold,
        )

    def __repr__(self) -> str:
        return (
            f"<SpendMeter spent={self.spent:.6g} budget={self.budget} in_flight={self._in_flight}>"
        )

    # ------------------------------------------------------------------ state

    @property
    def exhausted(self) -> bool:
        """Whether a budget is spent: USD, calls or tokens (never without a budget)."""
        # what `spent_budget is not None` says, without its call (asked twice per attempt)
        return (
            (self.budget is not None and self.spent >= self.budget)
            or (self.max_requests is not None and self.admitted >= self.max_requests)
            or (self.max_tokens is not None and self.tokens >= self.max_tokens)
        )

    @property
    def spent_budget(self) -> str | None:
        """The budget that is spent, ``usd``, ``calls`` or ``tokens`` (the first in that
        order), or None while none is."""
        if self.budget is not None and self.spent >= self.budget:
            return "usd"
        if self.max_requests is not None and self.admitted >= self.max_requests:
            return "calls"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return "tokens"
        return None

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet finished."""
        return self._in_flight

    def restore(self, spent: float, *, calls: int | None = None, tokens: int | None = None) -> None:
        """Set the spent total (a resumed run's) and, when given, the calls admitted and the
        tokens answered (the ``max_requests`` / ``max_tokens`` meters); thresholds already
        passed stay quiet."""
        if not (math.isfinite(spent) and spent >= 0):
            raise ValueError(f"spent must be a finite number >= 0, got {spent!r}")
        for name, n in (("calls", calls), ("tokens", tokens)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
        if calls is not None:
            self.admitted = calls
        if tokens is not None:
            self.tokens = tokens
        self.spent = float(spent)
        if self.budget is not None:
            self._fired = {t for t in THRESHOLDS if self.spent >= t * self.budget}

    # ------------------------------------------------------------------ requests

    def admit(self, endpoint: str = "", attempt: int = 1) -> None:
        """Let one request go out, counted in flight until :meth:`finish`.

        Raises:
            BudgetSpent: the budget is spent; the request must not be sent.
        """
        if self.exhausted:
            raise self.refusal(endpoint, attempt)
        self._in_flight += 1
        self.admitted += 1
        if self._idle is not None:
            self._idle.clear()

    def refusal(self, endpoint: str = "", attempt: int = 1) -> BudgetSpent:
        """The error of a request refused because a budget is spent."""
        which = self.spent_budget
        if which == "calls":
            what = f"call budget spent ({self.admitted} of {self.max_requests} calls)"
        elif which == "tokens":
            what = f"token budget spent ({self.tokens} of {self.max_tokens} tokens)"
        else:
            what = f"spend budget spent (${self.spent:.6g} of ${self.budget or 0:.6g})"
        return BudgetSpent(
            f"{what}: request refused before sending",
            attempt=attempt,
            endpoint=endpoint,
        )

    def finish(self, cost: float = 0.0) -> None:
        """An admitted request is over; ``cost`` USD (its :meth:`cost`) is added to the total."""
        self._in_flight = max(0, self._in_flight - 1)
        self.charge(cost)
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def cost(self, usage: Usage, model: str, *, hosted: bool) -> tuple[float, str]:
        """What one answered request cost, and where the figure came from: ``reported``
        (the provider's ``usage.cost``), ``price`` (tokens at the model's price) or ``none``
        (an unpriced model: 0)."""
        self.requests += 1
        self.tokens += max(0, usage.prompt_tokens) + max(0, usage.completion_tokens)
        if usage.cost is not None:
            self.reported += 1
            return usage.cost, "reported"
        priced = self.prices.cost(model, usage, hosted=hosted)
        if priced is not None:
            return priced, "price"
        return 0.0, "none"

    def charge(self, cost: float) -> None:
        """Add ``cost`` USD to the total; warn at each threshold crossed."""
        if cost > 0 and math.isfinite(cost):
            self.spent += cost
        if self.budget is None:
            return
        for t in THRESHOLDS:
            if t not in self._fired and self.spent >= t * self.budget:
                self._fired.add(t)
                crossed = Threshold(t, self.spent, self.budget)
                _log.warning("spend.threshold", percent=crossed.percent, spent_usd=self.spent,
                             budget_usd=self.budget)  # fmt: skip
                if self.on_threshold is not None:
                    self.on_threshold(crossed)

    async def drained(self) -> None:
        """Wait until no admitted request is in flight (bound it with a timeout scope)."""
        if self._in_flight == 0:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records of the spend."""
        return {
            "spent_usd": self.spent,
            "budget_usd": self.budget,
            "priced_requests": self.requests,
            "reported_cost_requests": self.reported,
            "calls": self.admitted,
            "tokens": self.tokens,
            "max_requests": self.max_requests,
            "max_total_tokens": self.max_tokens,
            "budget_spent": self.spent_budget,
        }
