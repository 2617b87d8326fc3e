"""engine.data.sampler: seeded batches of groups, resumable, and the held-out split."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import aclosing

import anyio
import pytest

from engine.data.sampler import (
    GroupSampler,
    as_source,
    drain_async,
    is_heldout,
    split_source,
    take,
    take_async,
)
from engine.errors import DataError
from engine.types import Example


def examples(n: int) -> list[Example]:
    return [Example(f"e{i}", f"prompt {i}") for i in range(n)]


def test_sampler_batches_groups_and_cycles() -> None:
    """Batches hold batch_size prompts; every prompt is seen once per pass; data cycles."""
    s = GroupSampler(as_source(examples(10)), batch_size=4, group_size=8, seed=1)
    it = s.batches()
    first = [next(it) for _ in range(5)]
    assert [b.step for b in first] == [0, 1, 2, 3, 4]
    assert all(len(b.examples) == 4 and b.group_size == 8 for b in first)
    ids = [e.id for b in first for e in b.examples]
    assert sorted(ids[:10]) == sorted(f"e{i}" for i in range(10))
    assert first[0].group_id(3) == "0-3"


def test_sampler_is_seeded_and_resumable() -> None:
    """Same seed, same batches; starting at k gives exactly batch k onward; seed changes order."""
    mk = lambda seed: GroupSampler(as_source(examples(50)), batch_size=3, group_size=2, seed=seed)  # noqa: E731
    a = [b.examples for _, b in zip(range(30), mk(0).batches(), strict=False)]
    b = [b.examples for _, b in zip(range(30), mk(0).batches(), strict=False)]
    c = [b.examples for _, b in zip(range(30), mk(1).batches(), strict=False)]
    resumed = [b.examples for _, b in zip(range(10), mk(0).batches(start=20), strict=False)]
    assert a == b
    assert a != c
    assert resumed == a[20:30]


def test_group_rng_is_keyed_not_streamed() -> None:
    """A group's RNG depends only on (seed, step, group), not on what ran before."""
    s = GroupSampler(as_source(examples(8)), batch_size=2, group_size=2, seed=5)
    b0 = next(s.batches(start=3))
    b1 = next(s.batches(start=3))
    assert b0.rng(1).random() == b1.rng(1).random()
    assert b0.rng(0).random() != b0.rng(1).random()


def test_heldout_split_is_disjoint_and_stable() -> None:
    """The held-out split is a stable, disjoint fraction of the data."""
    data = examples(2000)
    train, held = split_source(as_source(data), 0.1, seed=0)
    t = {e.id for e in train()}
    h = {e.id for e in held()}
    assert not t & h and len(t) + len(h) == 2000
    assert 150 < len(h) < 250
    assert {e.id for e in data if is_heldout(e, 0.1, 0)} == h


def test_empty_dataset_is_an_error() -> None:
    """Sampling from an empty dataset raises a DataError instead of hanging."""
    s = GroupSampler(as_source([]), batch_size=1, group_size=2, seed=0)
    with pytest.raises(DataError, match="no examples"):
        next(s.batches())


def test_unshuffled_pass_keeps_file_order() -> None:
    """Without shuffle, batches follow the source order and wrap around at the end."""
    s = GroupSampler(as_source(examples(5)), batch_size=2, group_size=2, seed=0, shuffle=False)
    it = s.batches()
    ids = [e.id for _ in range(3) for e in next(it).examples]
    assert ids == ["e0", "e1", "e2", "e3", "e4", "e0"]


def test_take_stops_early() -> None:
    """take() reads only the first n examples of a stream."""
    seen: list[int] = []

    def stream() -> Iterator[Example]:
        for i in range(100):
            seen.append(i)
            yield Example(f"e{i}", "p")

    assert [e.id for e in take(stream(), 3)] == ["e0", "e1", "e2"]
    assert len(seen) <= 4


# ----------------------------------------------------------------------------- off the loop


async def test_abatches_are_the_batches_read_off_the_loop() -> None:
    """abatches gives exactly the batches of batches(), also from a resume point, and reads
    the source in worker threads."""
    threads: set[int] = set()

    def source() -> Iterator[Example]:
        threads.add(threading.get_ident())
        yield from examples(37)

    mk = lambda: GroupSampler(source, batch_size=5, group_size=2, seed=3)  # noqa: E731
    want = [b.examples for _, b in zip(range(20), mk().batches(), strict=False)]
    threads.clear()
    got = []
    async with aclosing(mk().abatches(start=4)) as it:
        async for b in it:
            got.append(b)
            if len(got) == 16:
                break
    assert [b.step for b in got] == list(range(4, 20))
    assert [b.examples for b in got] == want[4:20]
    assert threads and threading.get_ident() not in threads


async def test_a_huge_batch_leaves_the_loop_free_and_cancels_promptly() -> None:
    """Reading a batch of 10^9 prompts neither blocks the loop (a ticker keeps ticking) nor a
    cancellation (it waits for one chunk, not the batch)."""
    sampler = GroupSampler(as_source(examples(100)), batch_size=10**9, group_size=2, seed=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        with anyio.move_on_after(0.5):
            async with aclosing(sampler.abatches()) as it:
                async for _ in it:
                    raise AssertionError("a batch of 10^9 came back")
        tg.cancel_scope.cancel()
    assert ticks >= 5  # the loop ran other tasks meanwhile
    assert time.monotonic() - t0 < 30  # generous: one chunk is milliseconds


async def test_take_async_and_drain_async() -> None:
    """take_async stops at n or at the end; drain_async counts to the end and raises the
    source's errors."""
    assert [e.id for e in await take_async(iter(examples(10)), 4, chunk=3)] == [
        "e0", "e1", "e2", "e3"
    ]  # fmt: skip
    assert len(await take_async(iter(examples(5)), 100, chunk=2)) == 5
    assert await drain_async(examples(2500)) == 2500
    assert await drain_async([]) == 0

    def bad() -> Iterator[Example]:
        yield from examples(3)
        raise DataError("line 4: broken", path="x.jsonl", line=4)

    with pytest.raises(DataError, match="line 4"):
        await drain_async(bad(), chunk=2)
