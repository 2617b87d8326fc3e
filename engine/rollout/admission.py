"""Whole-group admission: a group starts all its requests at once, first come first served.

The :class:`GroupGate` waits until it can take all of a group's generation requests at once,
then starts them all. It counts *generation request units* of admitted groups that have not
finished yet, up to a capacity read from the client's
:class:`~engine.endpoints.limits.Limiter` (its concurrency limit, re-read at every decision,
so an adaptive limit is followed), and *groups* generating at once, up to
``rollout.max_groups_in_flight`` (0: no cap). A group costs one unit per request it will
send: ``G`` (``G + oversample``) when members are requested one by one, or 1 when the whole
group is one ``n = G`` call and the endpoint honours ``n``. Units go back as each request
finishes, not when the whole group does, so the endpoint is refilled while a group's
straggler is still out. The gate never sends anything itself and never takes a limiter
permit: the client still takes one permit per HTTP attempt (concurrency, RPM, TPM, the 429
gate), so nothing is counted twice; the gate only decides *when a group may start*, so that
the limiter's FIFO queue holds whole groups in admission order instead of G-member fragments
of every group at once (which finishes every group late) and judge calls of admitted groups
are not stuck behind a mountain of later generation requests. Judge requests are not gated:
they finish work that was admitted already. Re-requests of failed members jump the queue.
An embedded policy (no client) has no unit capacity; only the group cap applies.

The prompt policy groups the rollouts of one ``generate`` call that drew the same candidate
into one request with ``n = k`` (:mod:`engine.policies.prompt`). With ``n = G`` in one call,
a group's cost is counted as 1 unit although it may send one request per distinct candidate
drawn: the gate then admits more groups than the concurrency limit, and the surplus waits in
the limiter's queue (which keeps the endpoint busy; ``max_groups_in_flight`` bounds it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

__all__ = ("GateStatistics", "GroupGate", "Ticket")


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A frozen snapshot of a :class:`GroupGate`, from :meth:`GroupGate.statistics`."""

    capacity: int | None
    """Request units the gate admits at once now; None for no unit limit."""
    max_groups: int
    """Groups generating at once at most; 0 for no cap."""
    units: int
    """Request units held by admitted groups now."""
    groups: int
    """Admitted groups still generating now."""
    waiting: int
    """Groups waiting for admission now."""
    admitted: int
    """Admissions granted so far (re-request rounds included)."""
    peak_units: int
    """Most request units held at once."""
    peak_groups: int
    """Most groups generating at once."""


class _Waiter:
    """One admission waiting in the gate's queue: ``cost`` request units wanted, ``event``
    set when granted, ``ticket`` the grant once made."""

    __slots__ = ("cost", "event", "ticket")

    def __init__(self, cost: int) -> None:
        self.cost = cost
        self.event = anyio.Event()
        self.ticket: Ticket | None = None


class Ticket:
    """An admitted group's hold on the gate: ``units`` request units and one group slot.

    Give units back with :meth:`release` as requests finish; :meth:`close` gives back the
    rest and the group slot. Use it as a context manager to close it on exit.

    Attributes:
        units: request units still held.
    """

    __slots__ = ("_gate", "_open", "units")

    def __init__(self, gate: GroupGate, units: int) -> None:
        self._gate = gate
        self.units = units
        self._open = True

    def release(self, units: int = 1) -> None:
        """Give back ``units`` (at most what is held): requests of the group finished."""
        n = min(units, self.units)
        if n <= 0:
            return
        self.units -= n
        self._gate._units -= n
        self._gate._wake()

    def close(self) -> None:
        """Give back every unit and the group slot. Idempotent."""
        if not self._open:
            return
        self._open = False
        self._gate._units -= self.units
        self.units = 0
        self._gate._groups -= 1
        self._gate._wake()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GroupGate:
    """Admits whole groups, first come first served, against a request-unit capacity and a
    cap on groups in flight (see the module docstring).

    Example::

        gate = GroupGate(lambda: limiter.statistics().concurrency_limit, max_groups=8)
        with await gate.acquire(cost=G) as ticket:   # waits until all G may start
            ...                                      # start the G requests
            ticket.release(1)                        # as each one finishes

    A group costing more than the whole capacity is admitted alone once the gate is empty,
    so it is never stuck.

    Args:
        capacity: request units at once: an int, a zero-argument callable read at every
            decision (e.g. the limiter's current concurrency limit), or None for no limit.
        max_groups: groups holding a ticket at once; 0 for no cap.
    """

    def __init__(
        self, capacity: int | Callable[[], int] | None = None, *, max_groups: int = 0
    ) -> None:
        if max_groups < 0:
            raise ValueError(f"max_groups must be >= 0, got {max_groups!r}")
        self._capacity = capacity
        self._max_groups = max_groups
        self._units = 0  # held by open tickets
        self._groups = 0  # open tickets
        self._waiters: deque[_Waiter] = deque()  # FIFO; re-requests go to the front
        self._admitted = 0
        self._peak_units = 0
        self._peak_groups = 0

    def capacity(self) -> int | None:
        """The unit capacity now (None: unlimited)."""
        cap = self._capacity() if callable(self._capacity) else self._capacity
        return None if cap is None or cap <= 0 else int(cap)

    def _fits(self, cost: int) -> bool:
        if self._groups == 0:
            return True  # an empty gate admits anything: no group is ever stuck
        if self._max_groups and self._groups >= self._max_groups:
            return False
        cap = self.capacity()
        return cap is None or self._units + cost <= cap

    def _grant(self, cost: int) -> Ticket:
        self._units += cost
        self._groups += 1
        self._admitted += 1
        self._peak_units = max(self._peak_units, self._units)
        self._peak_groups = max(self._peak_groups, self._groups)
        return Ticket(self, cost)

    def _wake(self) -> None:
        """Admit waiters from the head of the queue while they fit (strict FIFO)."""
        while self._waiters and self._fits(self._waiters[0].cost):
            w = self._waiters.popleft()
            w.ticket = self._grant(w.cost)
            w.event.set()

    async def acquire(self, cost: int, *, front: bool = False) -> Ticket:
        """Wait until a group of ``cost`` request units may start; its :class:`Ticket`.

        ``front``: a re-request round of an admitted group; it goes ahead of new groups.
        """
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost!r}")
        if (front or not self._waiters) and self._fits(cost):
            return self._grant(cost)
        w = _Waiter(cost)
        if front:
            self._waiters.appendleft(w)
        else:
            self._waiters.append(w)
        try:
            await w.event.wait()
        except BaseException:  # cancelled: give a grant back, or leave the queue
            if w.ticket is not None:
                w.ticket.close()
            else:
                self._waiters.remove(w)
                self._wake()
            raise
        assert w.ticket is not None
        return w.ticket

    def statistics(self) -> GateStatistics:
        """A frozen snapshot of the gate's state."""
        return GateStatistics(
            capacity=self.capacity(),
            max_groups=self._max_groups,
            units=self._units,
            groups=self._groups,
            waiting=len(self._waiters),
            admitted=self._admitted,
            peak_units=self._peak_units,
            peak_groups=self._peak_groups,
        )
