"""The call pacer: how a burst of calls is spread over event-loop iterations."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from engine.endpoints.transport import Pacer
from tests.scripted import Iterations


async def test_pacer_with_no_budget_starts_one_call_per_iteration_in_order() -> None:
    """Budget 0: 60 callers at once pass one per loop iteration, first come first served; a
    cancelled waiter neither passes nor holds up the ones behind it; once the queue is empty
    a caller passes at once, in the iteration it arrives."""
    pacer = Pacer(asyncio.get_running_loop(), 0.0)
    it = Iterations()
    passed: list[tuple[int, int]] = []  # (caller, iteration)

    async def caller(i: int) -> None:
        await pacer.turn()
        passed.append((i, it.n))

    tasks = [asyncio.create_task(caller(i)) for i in range(60)]
    await asyncio.sleep(0)
    tasks[30].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[30].cancelled()
    assert [i for i, _ in passed] == [i for i in range(60) if i != 30]
    assert len({n for _, n in passed}) == 59  # one per iteration
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    before = it.n
    await pacer.turn()
    it.stop()
    assert it.n == before


@pytest.mark.parametrize(("budget", "busy"), [(0.01, 0.002), (60.0, 0.0)])
async def test_pacer_budget_bounds_the_starts_of_one_iteration(budget: float, busy: float) -> None:
    """Budget 10 ms, each start busy for 2 ms: an iteration starts at most 6 (a start is let
    through only while less than 10 ms have passed since the first), and the burst of 40 is
    spread over at least 7 iterations; with an ample budget all 40 start in one."""
    pacer = Pacer(asyncio.get_running_loop(), budget)
    it = Iterations()
    passed: list[int] = []

    async def caller() -> None:
        await pacer.turn()
        passed.append(it.n)
        end = time.perf_counter() + busy
        while time.perf_counter() < end:  # the work a start does before its first wait
            pass

    await asyncio.gather(*(caller() for _ in range(40)))
    it.stop()
    per_iteration = Counter(passed)
    if busy:
        assert max(per_iteration.values()) <= 6 and len(per_iteration) >= 7, per_iteration
    else:
        assert list(per_iteration.values()) == [40]


async def test_pacer_quota_grows_back_once_starts_are_fast_again() -> None:
    """Budget 10 ms: the first starts are slow (30 ms each), so one call passes per
    iteration; once starts take no time, the quota is measured again every iteration and
    grows (doubling), so the rest of the queue drains several per iteration."""
    pacer = Pacer(asyncio.get_running_loop(), 0.01)
    it = Iterations()
    passed: list[int] = []

    async def caller(i: int) -> None:
        await pacer.turn()
        passed.append(it.n)
        end = time.perf_counter() + (0.03 if i < 3 else 0.0)
        while time.perf_counter() < end:  # the work a start does before its first wait
            pass

    await asyncio.gather(*(caller(i) for i in range(200)))
    it.stop()
    per_iteration = list(Counter(passed).values())
    assert per_iteration[1:3] == [1, 1], per_iteration  # slow starts: one per iteration
    assert max(per_iteration) >= 8 and len(per_iteration) < 60, per_iteration
