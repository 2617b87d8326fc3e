"""The verdict cache and single flight, without a server."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from engine.errors import RewardError
from engine.rewards.judge_cache import JudgeCache, SingleFlight, content_key


def test_cache_evicts_the_least_recently_used() -> None:
    """A full cache drops the entry used longest ago; get() counts as a use."""
    cache = JudgeCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        JudgeCache(max_entries=0)


def test_content_key_depends_on_every_part() -> None:
    """Keys are stable and differ when any part differs."""
    assert content_key("v", 1, "x") == content_key("v", 1, "x")
    assert content_key("v", 1, "x") != content_key("v", 1, "y")
    assert content_key("v", 1, None) != content_key("v", 1, "")


async def test_single_flight_shares_results_and_failures() -> None:
    """Waiters of a key get the running call's value, or its failure re-raised."""
    flights: SingleFlight[int] = SingleFlight(lambda: RewardError("cancelled"))
    release = anyio.Event()
    got: list[int | str] = []

    async def compute() -> int:
        await release.wait()
        return 7

    async def waiter() -> None:
        got.append(await flights.wait("k"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(flights.run, "k", compute)
        await anyio.lowlevel.checkpoint()
        assert "k" in flights
        tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
        release.set()
    assert got == [7] and "k" not in flights


async def test_single_flight_shares_a_failure() -> None:
    """A waiter of a call that fails gets the same error."""
    flights: SingleFlight[int] = SingleFlight(lambda: RewardError("cancelled"))
    got: list[str] = []

    async def fail() -> int:
        await anyio.sleep(0.01)
        raise ValueError("bad reply")

    async def runner() -> None:
        with pytest.raises(ValueError):
            await flights.run("k", fail)

    async def waiter() -> None:
        await anyio.lowlevel.checkpoint()
        with pytest.raises(ValueError, match="bad reply"):
            await flights.wait("k")
        got.append("raised")

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        tg.start_soon(waiter)
    assert got == ["raised"] and "k" not in flights


async def test_single_flight_cancelled_call_fails_its_waiters() -> None:
    """A cancelled shared call leaves its waiters with the configured error, not a hang."""
    flights: SingleFlight[int] = SingleFlight(lambda: RewardError("the shared call was cancelled"))
    scope = anyio.CancelScope()
    errors: list[Exception] = []

    async def forever() -> int:
        await anyio.sleep_forever()
        return 0

    async def runner() -> None:
        with scope:
            await flights.run("k", forever)

    async def waiter() -> None:
        await anyio.lowlevel.checkpoint()
        try:
            await flights.wait("k")
        except RewardError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        scope.cancel()
    assert len(errors) == 1 and "cancelled" in str(errors[0])
