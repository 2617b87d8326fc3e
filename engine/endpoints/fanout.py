"""Endpoint stage: serving ``n`` choices from endpoints that return fewer than asked.

``n`` is asked natively; when an endpoint returns fewer choices than asked (OpenRouter and
llama.cpp ignore ``n``), the rest are fanned out as concurrent requests and
:class:`ChoiceCaps` remembers the endpoint, so later calls fan out at once. Every
``PROBE_EVERY``-th of those calls asks natively again, so an endpoint that answered short
once (a filtered choice) gets native ``n`` back; one that ignores ``n`` loses nothing by
the probe (its choices are kept, the rest fanned out as usual). :func:`merge` joins the
requests' results into exactly ``n`` choices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ..types import Usage
from .parsing import Choice, Result, reindex

__all__ = ("PROBE_EVERY", "ChoiceCaps", "EndpointKey", "chunks", "merge")

PROBE_EVERY = 64
"""After an endpoint answered ``n > 1`` short, every 64th such call asks natively again."""

EndpointKey = tuple[str, str, str]
"""``(base_url, mode, model)``: what one remembered cap is about."""


def chunks(total: int, size: int) -> list[int]:
    """``total`` split into request sizes of at most ``size`` (at least 1)."""
    size = max(1, size)
    return [min(size, total - i) for i in range(0, total, size)]


class ChoiceCaps:
    """The most choices each endpoint returned for one request, once it answered short."""

    __slots__ = ("_calls", "_caps")

    def __init__(self) -> None:
        self._caps: dict[EndpointKey, int] = {}
        self._calls: Counter[EndpointKey] = Counter()

    def get(self, key: EndpointKey) -> int | None:
        """The endpoint's cap, or None while it has never answered short."""
        return self._caps.get(key)

    def fan_out_at_once(self, key: EndpointKey, use_n: bool) -> bool:
        """Whether an ``n > 1`` call should skip asking natively.

        Yes when ``n`` is not to be used, or when the endpoint is capped and this call is
        not the ``PROBE_EVERY``-th capped one (which asks natively again).
        """
        if not use_n:
            return True
        if key not in self._caps:
            return False
        self._calls[key] += 1
        return self._calls[key] % PROBE_EVERY != 0

    def answered_short(self, key: EndpointKey, got: int) -> bool:
        """Record that the endpoint returned ``got`` choices; True if it was not capped."""
        new = key not in self._caps
        self._caps[key] = got
        return new

    def answered_whole(self, key: EndpointKey) -> None:
        """A probe came back whole: ask natively again from now on."""
        self._caps.pop(key, None)

    def snapshot(self) -> Mapping[str, int]:
        """``"base_url mode model"`` -> cap, read-only."""
        return MappingProxyType({" ".join(key): cap for key, cap in self._caps.items()})


def merge(parts: Sequence[Result], n: int) -> tuple[list[Choice], Usage, int]:
    """The first ``n`` choices of the results (indexed 0..n-1), the usage and attempts summed."""
    head = parts[0]
    if len(parts) == 1:
        choices = head.choices if len(head.choices) <= n else head.choices[:n]
        return choices, head.usage, head.attempts
    choices = []
    usage = Usage()
    attempts = 0
    for part in parts:
        for c in part.choices:
            if len(choices) == n:
                break
            choices.append(c if c.index == len(choices) else reindex(c, len(choices)))
        usage = usage + part.usage
        attempts += part.attempts
    return choices, usage, attempts
