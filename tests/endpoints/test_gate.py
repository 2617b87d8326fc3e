"""The 429 gate on its own: a server's wait, the default backoff per episode, and shutting.
Tests run on a virtual-time event loop and never sleep."""

from __future__ import annotations

import asyncio

import pytest

from engine.endpoints.gate import RateLimitGate
from engine.endpoints.timing import Timing
from engine.errors import ClientClosedError
from tests.virtual_time import virtual_time


def _now() -> float:
    return asyncio.get_running_loop().time()


@virtual_time
async def test_a_wait_holds_until_the_deadline_and_a_later_one_extends_it() -> None:
    """wait() returns when the server's wait has passed; a longer wait reported meanwhile
    extends the pause, a shorter one never shortens it."""
    gate = RateLimitGate(Timing(None), backoff=1.0, backoff_cap=60.0)
    t0 = _now()
    assert await gate.wait() is False
    gate.close_for(2.0)
    waiter = asyncio.create_task(gate.wait())
    await asyncio.sleep(1.0)
    gate.close_for(3.0)  # until t0 + 4
    gate.close_for(0.5)  # earlier: ignored
    assert gate.open_at(_now()) == pytest.approx(t0 + 4.0)
    assert await waiter is True
    assert _now() - t0 == pytest.approx(4.0)
    assert gate.open_at(_now()) is None


@virtual_time
async def test_default_pause_doubles_per_episode_and_a_success_resets_it() -> None:
    """Without a server wait the pause is 1 s, then 2 s, 4 s for new episodes; after a
    success it is 1 s again."""
    gate = RateLimitGate(Timing(None), backoff=1.0, backoff_cap=60.0)
    pauses = []
    for _ in range(3):
        t = _now()
        gate.close_for(None)
        await gate.wait()
        pauses.append(_now() - t)
    gate.reset_backoff()
    t = _now()
    gate.close_for(float("nan"))
    await gate.wait()
    pauses.append(_now() - t)
    assert pauses == pytest.approx([1.0, 2.0, 4.0, 1.0])


@virtual_time
async def test_shut_fails_paused_senders_and_later_waits() -> None:
    """Shutting the gate fails every paused sender with ClientClosedError, and every later
    wait too."""
    gate = RateLimitGate(Timing(None), backoff=1.0, backoff_cap=60.0)
    gate.close_for(60.0)
    waiters = [asyncio.create_task(gate.wait()) for _ in range(3)]
    await asyncio.sleep(1.0)
    gate.shut()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [ClientClosedError] * 3
    with pytest.raises(ClientClosedError):
        await gate.wait()
