"""The token budget on its own: cancelled grants give their tokens back, refunds never
overfill. Tests run on a virtual-time event loop and never sleep."""

from __future__ import annotations

import asyncio

import pytest

from engine.endpoints.budget import TokenBudget
from tests.virtual_time import virtual_time


@virtual_time
async def test_tpm_reservation_cancelled_right_after_being_granted_is_given_back() -> None:
    """A reservation granted but cancelled before it resumed returns its tokens to the bucket."""
    budget = TokenBudget(600)
    await budget.reserve(600)
    waiter = asyncio.create_task(budget.reserve(100))
    await asyncio.sleep(0.001)
    budget.refund(600)  # grants the waiter its 100 tokens at once
    waiter.cancel()  # before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.level() == pytest.approx(600.0)


@virtual_time
async def test_token_budget_refund_never_overfills() -> None:
    """Refunding more than was taken leaves the bucket at its capacity."""
    budget = TokenBudget(600)
    await budget.reserve(100)
    budget.refund(1000)
    assert budget.level() == 600.0
