"""Data stage: streamed JSONL datasets and the seeded group sampler.

Two line formats are accepted, one JSON object per line:

- the spec's ``TrainingExample``: ``{"input": {"text": "..."}, "output": {"generated": "...",
  "quality": 0.9}}`` (``output`` optional; extra input fields are kept in ``Example.inputs``);
- a plain prompt: ``{"prompt": "...", "answer": "..."}`` (any other keys go to ``Example.meta``;
  ``answer``, ``target`` or ``completion`` become ``Example.target``).

Blank lines are skipped. A malformed line raises :class:`~engine.errors.DataError` naming the
file and the 1-based line number. Files are streamed, never loaded whole; the held-out split is
decided per example by a seeded hash of its id, so it needs no second pass.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import DataError
from ..types import Example

__all__ = (
    "Batch",
    "GroupSampler",
    "is_heldout",
    "parse_example",
    "read_jsonl",
)

_TARGET_KEYS = ("answer", "target", "completion")


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def parse_example(obj: Any, *, path: str = "<data>", line: int = 0) -> Example:
    """Turn one decoded JSON line into an :class:`Example`; raise DataError when malformed."""

    def bad(msg: str) -> DataError:
        return DataError(msg, path=path, line=line)

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    ex_id = f"{path}:{line}"
    if "id" in obj:
        if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
            raise bad("'id' must be a string or an integer")
        ex_id = str(obj["id"])
    if "input" in obj:
        inp = obj["input"]
        if not isinstance(inp, dict):
            raise bad(f"'input' must be an object like {{\"text\": ...}}, got {type(inp).__name__}")
        text = inp.get("text")
        if not isinstance(text, str):
            raise bad("'input.text' must be a string")
        target = None
        quality = None
        out = obj.get("output")
        if out is not None:
            if not isinstance(out, dict):
                raise bad(f"'output' must be an object, got {type(out).__name__}")
            gen = out.get("generated")
            if gen is not None and not isinstance(gen, str):
                raise bad("'output.generated' must be a string")
            target = gen
            q = out.get("quality")
            if q is not None:
                if isinstance(q, bool) or not isinstance(q, int | float) or not _finite(q):
                    raise bad("'output.quality' must be a finite number")
                quality = float(q)
        meta = {k: v for k, v in obj.items() if k not in ("input", "output", "id")}
        return Example(ex_id, text, dict(inp), target, quality, meta)
    if "prompt" in obj:
        text = obj["prompt"]
        if not isinstance(text, str):
            raise bad("'prompt' must be a string")
        target = None
        for key in _TARGET_KEYS:
            if key in obj:
                val = obj[key]
                if isinstance(val, bool) or not isinstance(val, str | int | float):
                    raise bad(f"'{key}' must be a string or a number")
                target = str(val)
                break
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "id")}
        return Example(ex_id, text, {"text": text}, target, None, meta)
    raise bad('expected an "input": {"text": ...} object or a "prompt" string')


def read_jsonl(path: str | Path) -> Iterator[Example]:
    """Stream examples from a JSONL file; DataError names the file and line on bad input."""
    spath = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(f"cannot open dataset: {exc.strerror}", path=spath) from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc}", path=spath, line=lineno) from None
            yield parse_example(obj, path=spath, line=lineno)


def _hash01(key: str, seed: int) -> float:
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def is_heldout(example: Example, fraction: float, seed: int) -> bool:
    """Whether ``example`` belongs to the held-out split (seeded hash of its id)."""
    return fraction > 0 and _hash01(example.id, seed) < fraction


@dataclass(frozen=True, slots=True)
class Batch:
    """One sampler batch: ``step`` index and its prompts; each becomes a group of G rollouts."""

    step: int
    examples: tuple[Example, ...]
    group_size: int
    seed: int

    def group_id(self, j: int) -> str:
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
    """

    def __init__(
        self,
        source: Callable[[], Iterable[Example]],
        *,
        batch_size: int,
        group_size: int,
        seed: int,
        shuffle: bool = True,
        buffer_size: int = 4096,
    ) -> None:
        if batch_size < 1 or group_size < 1:
            raise ValueError("batch_size and group_size must be >= 1")
        self._source = source  # called once per pass
        self.batch_size = batch_size  # prompts per batch
        self.group_size = group_size  # rollouts per prompt
        self.seed = seed  # seeds shuffling and per-group sampling
        self.shuffle = shuffle  # shuffle within a pass through a bounded buffer
        self.buffer_size = buffer_size  # shuffle buffer length (memory bound)

    def _epoch(self, epoch: int) -> Iterator[Example]:
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

    def _stream(self) -> Iterator[Example]:
        epoch = 0
        while True:
            n = 0
            for ex in self._epoch(epoch):
                n += 1
                yield ex
            if n == 0:
                raise DataError("the dataset has no examples")
            epoch += 1

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Yield batches ``start, start + 1, ...`` forever (the data cycles)."""
        stream = self._stream()
        step = 0
        while True:
            examples = tuple(next(stream) for _ in range(self.batch_size))
            if step >= start:
                yield Batch(step, examples, self.group_size, self.seed)
            step += 1


def take(examples: Iterable[Example], n: int) -> list[Example]:
    """The first ``n`` examples of a stream."""
    out: list[Example] = []
    for ex in examples:
        if len(out) >= n:
            break
        out.append(ex)
    return out


def split_source(
    source: Callable[[], Iterable[Example]], fraction: float, seed: int
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
