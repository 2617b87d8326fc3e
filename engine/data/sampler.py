"""Data stage: the seeded group sampler, the held-out split and streaming sources.

A *source* is a callable that starts a fresh pass over the examples (``lambda:
read_jsonl(path)``), so files are streamed again each epoch instead of held in memory. The
held-out split is decided per example by a seeded hash of its id, so it needs no second pass.

Reading a source is blocking work (file reads, JSON parsing, shuffling). On the event loop it
goes through :meth:`GroupSampler.abatches`, :func:`take_async` and :func:`drain_async`, which
advance the iterator in a worker thread :data:`CHUNK` examples at a time: the loop stays free
(signals are handled, requests progress) and a cancellation waits for one chunk at most, even
with a huge ``data.batch_size``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import anyio.to_thread
import numpy as np

from ..errors import DataError
from ..types import Example

__all__ = (
    "CHUNK",
    "Batch",
    "GroupSampler",
    "Source",
    "as_source",
    "drain_async",
    "is_heldout",
    "split_source",
    "take",
    "take_async",
)

CHUNK = 1024
"""Examples read per worker-thread call by the async readers: small enough that a chunk takes
milliseconds (a cancellation waits for one), large enough that the thread hops cost little."""

Source = Callable[[], Iterable[Example]]
"""A callable starting one pass over a dataset's examples."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One sampler batch; each of its prompts becomes a group of G rollouts.

    Attributes:
        step: index of the batch in the sampler's stream (the optimizer step it feeds).
        examples: the batch's prompts.
        group_size: G, rollouts sampled per prompt.
        seed: the run's seed; with ``step`` it keys every group's generator.
    """

    step: int
    examples: tuple[Example, ...]
    group_size: int
    seed: int

    def group_id(self, j: int) -> str:
        """The id of the group of prompt ``j``: ``"STEP-J"``."""
        return f"{self.step}-{j}"

    def rng(self, j: int) -> np.random.Generator:
        """The generator for group ``j``: a pure function of (seed, step, j), so any order of
        execution and any resume point give the same samples."""
        return np.random.default_rng([self.seed, self.step, j])


class GroupSampler:
    """Turns a stream of prompts into seeded batches of groups.

    Example::

        sampler = GroupSampler(lambda: read_jsonl("train.jsonl"), batch_size=8, group_size=8,
                               seed=0)
        for batch in sampler.batches(start=0):
            ...  # batch.examples: 8 prompts; each is sampled G=8 times

    ``source`` is called once per pass over the data, so files are streamed again each epoch.
    With ``shuffle``, order within a pass comes from a bounded shuffle buffer (``buffer_size``)
    seeded by (seed, epoch). Batch ``k`` is a pure function of (source, seed, k): resuming at
    ``start=k`` replays the stream up to there instead of storing it.

    Attributes:
        batch_size: prompts per batch.
        group_size: G, rollouts per prompt.
        seed: seeds the shuffle and every group's generator.
        shuffle: whether each pass is shuffled through the buffer.
        buffer_size: length of the shuffle buffer, which bounds memory.
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        group_size: int,
        seed: int,
        shuffle: bool = True,
        buffer_size: int = 4096,
    ) -> None:
        if batch_size < 1 or group_size < 1:
            raise ValueError("batch_size and group_size must be >= 1")
        self._source = source
        self.batch_size = batch_size
        self.group_size = group_size
        self.seed = seed
        self.shuffle = shuffle
        self.buffer_size = buffer_size

    def require_examples(self) -> None:
        """Blocking: raise DataError unless a pass over the source yields an example (read up
        to the first one), so an empty dataset fails before a run writes anything."""
        for _ in self._source():
            return
        raise DataError("the training data has no examples")

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Yield batches ``start, start + 1, ...`` forever (the data cycles)."""
        stream = self._stream()
        step = 0
        while True:
            examples = tuple(next(stream) for _ in range(self.batch_size))
            if step >= start:
                yield Batch(step, examples, self.group_size, self.seed)
            step += 1

    async def abatches(self, start: int = 0) -> AsyncGenerator[Batch, None]:
        """:meth:`batches` for the event loop: the same batches, read in a worker thread
        :data:`CHUNK` examples at a time (see the module docstring)."""
        stream = self._stream()
        step = 0
        while True:
            examples = await take_async(stream, self.batch_size)
            if step >= start:
                yield Batch(step, tuple(examples), self.group_size, self.seed)
            step += 1

    def _stream(self) -> Iterator[Example]:
        """Every pass, one after another; an empty pass is an error, not an endless loop."""
        epoch = 0
        while True:
            n = 0
            for ex in self._epoch(epoch):
                n += 1
                yield ex
            if n == 0:
                raise DataError("the dataset has no examples")
            epoch += 1

    def _epoch(self, epoch: int) -> Iterator[Example]:
        """One pass over the source, shuffled through the buffer when ``shuffle`` is set."""
        it = iter(self._source())
        if not self.shuffle:
            yield from it
            return
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        buf: list[Example] = []
        for ex in it:
            if len(buf) < self.buffer_size:
                buf.append(ex)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], ex = ex, buf[i]
            yield ex
        rng.shuffle(buf)  # type: ignore[arg-type]
        yield from buf


def is_heldout(example: Example, fraction: float, seed: int) -> bool:
    """Whether ``example`` belongs to the held-out split (seeded hash of its id)."""
    return fraction > 0 and _hash01(example.id, seed) < fraction


def _hash01(key: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by ``(seed, key)``."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def split_source(
    source: Source, fraction: float, seed: int
) -> tuple[Callable[[], Iterator[Example]], Callable[[], Iterator[Example]]]:
    """Two streaming sources (train, held-out) splitting ``source`` by a seeded hash of ids."""

    def train() -> Iterator[Example]:
        return (ex for ex in source() if not is_heldout(ex, fraction, seed))

    def heldout() -> Iterator[Example]:
        return (ex for ex in source() if is_heldout(ex, fraction, seed))

    return train, heldout


def as_source(examples: Sequence[Example]) -> Callable[[], Iterator[Example]]:
    """A source over an in-memory list."""
    return lambda: iter(examples)


def take(examples: Iterable[Example], n: int) -> list[Example]:
    """The first ``n`` examples of a stream."""
    out: list[Example] = []
    for ex in examples:
        if len(out) >= n:
            break
        out.append(ex)
    return out


async def take_async(examples: Iterator[Example], n: int, chunk: int = CHUNK) -> list[Example]:
    """:func:`take` from an event loop: at most ``n`` examples of ``examples``, read in a
    worker thread ``chunk`` at a time (fewer when the iterator ends first)."""
    out: list[Example] = []
    while len(out) < n:
        got = await anyio.to_thread.run_sync(_next_chunk, examples, min(chunk, n - len(out)))
        if not got:
            break
        out.extend(got)
    return out


async def drain_async(examples: Iterable[Example], chunk: int = CHUNK) -> int:
    """Read ``examples`` to the end in a worker thread, ``chunk`` at a time (to validate a
    file: errors raise as they do in the thread); the number read."""
    it = iter(examples)
    n = 0
    while True:
        got = await anyio.to_thread.run_sync(_count_chunk, it, chunk)
        n += got
        if got < chunk:
            return n


def _next_chunk(it: Iterator[Example], n: int) -> list[Example]:
    return list(itertools.islice(it, n))


def _count_chunk(it: Iterator[Example], n: int) -> int:
    return sum(1 for _ in itertools.islice(it, n))
