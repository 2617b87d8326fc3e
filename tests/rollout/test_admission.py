"""Whole-group admission: the gate's order, re-requests first, oversize groups, the group cap."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from engine.rollout.admission import GroupGate


async def wait_until(cond: Callable[[], bool]) -> None:
    with anyio.fail_after(2):
        while not cond():
            await anyio.lowlevel.checkpoint()


async def test_gate_admits_whole_groups_in_order() -> None:
    """A group waits until all its units fit; later groups never overtake it; units come back
    one by one."""
    gate = GroupGate(12)
    a = await gate.acquire(8)
    order: list[str] = []

    async def want(name: str, cost: int) -> None:
        t = await gate.acquire(cost)
        order.append(name)
        t.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(want, "b", 8)
        await wait_until(lambda: gate.statistics().waiting == 1)
        tg.start_soon(want, "c", 1)  # would fit now, but b is first in line
        await wait_until(lambda: gate.statistics().waiting == 2)
        a.release(3)
        await anyio.lowlevel.checkpoint()
        assert order == [] and gate.statistics().units == 5
        a.release(1)  # 4 + 8 = 12 fits: b, then c
    assert order == ["b", "c"]
    a.close()
    s = gate.statistics()
    assert (s.units, s.groups, s.waiting, s.admitted, s.peak_units) == (0, 0, 0, 3, 12)


async def test_gate_front_caps_oversize_and_cancel() -> None:
    """Re-requests go first; a group larger than the capacity runs alone; the group cap holds;
    a cancelled waiter leaves the queue."""
    gate = GroupGate(4, max_groups=2)
    big = await gate.acquire(10)  # alone in an empty gate
    assert gate.statistics().units == 10
    order: list[str] = []

    async def want(name: str, cost: int, front: bool = False) -> None:
        with await gate.acquire(cost, front=front):
            order.append(name)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(want, "new", 1)
        await wait_until(lambda: gate.statistics().waiting == 1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await gate.acquire(1)  # cancelled while waiting: must not stay queued
        assert gate.statistics().waiting == 1
        tg.start_soon(want, "retry", 1, True)
        await wait_until(lambda: gate.statistics().waiting == 2)
        big.close()
    assert order == ["retry", "new"]
    capped = GroupGate(None, max_groups=1)
    t1 = await capped.acquire(1)
    with anyio.move_on_after(0.01):
        await capped.acquire(1)
        pytest.fail("the group cap was not applied")
    t1.close()
