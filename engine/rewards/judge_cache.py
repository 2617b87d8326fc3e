"""Sharing judge verdicts: an LRU cache keyed by content hash, and single flight for concurrent
identical calls."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
import orjson

__all__ = ("JudgeCache", "SingleFlight", "content_key")

T = TypeVar("T")


def content_key(*parts: Any) -> str:
    """The sha256 hex digest of ``parts`` as JSON: a cache key."""
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


class JudgeCache:
    """An in-memory LRU of verdicts keyed by content hash; share one between judges.

    Example::

        cache = JudgeCache(max_entries=50_000)
        train_judge = LLMJudge(client, rubric, cache=cache)
        eval_judge = LLMJudge(client, rubric, cache=cache)   # reuses the training verdicts

    Keys include the judge model, rubric, prompt renderer and format version, so judges with
    different rubrics never share entries. Failed calls are never cached.

    Attributes:
        max_entries: entries kept; the least recently used go first.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._data: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        """The cached value (a verdict, or a group's verdicts), or None."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        self._data.clear()


class _Flight(Generic[T]):
    """One call in progress that identical concurrent requests wait on.

    Attributes:
        done: set when the call finished either way.
        value: the result when it succeeded.
        error: the failure, re-raised to every waiter.
    """

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: T | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[T]):
    """Runs one call per key at a time; concurrent callers of the same key share its result.

    Args:
        cancelled: the error that waiters get when the shared call is cancelled.
    """

    def __init__(self, cancelled: Callable[[], Exception]) -> None:
        self._cancelled = cancelled
        self._inflight: dict[str, _Flight[T]] = {}

    def __contains__(self, key: object) -> bool:
        """Whether a call for ``key`` is in flight."""
        return key in self._inflight

    async def wait(self, key: str) -> T:
        """The result of the call in flight for ``key`` (check with ``in`` first); re-raises
        its failure."""
        flight = self._inflight[key]
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.value  # type: ignore[return-value]

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        """Run ``compute`` as the call in flight for ``key``."""
        flight: _Flight[T] = _Flight()
        self._inflight[key] = flight
        try:
            value = await compute()
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:  # cancelled: waiters get a failure of their own, not a hang
            flight.error = self._cancelled()
            raise
        else:
            flight.value = value
            return value
        finally:
            flight.done.set()
            del self._inflight[key]
