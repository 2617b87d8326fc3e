"""The training source and the held-out examples of a run.

A source is a zero-argument callable returning a fresh iterator of examples per pass, so the
sampler can shuffle and repeat it without holding a file open. Nothing here reads a file on
the event loop: :func:`training_sources` returns file-backed held-out examples as a source
(the trainer reads it with :func:`~engine.data.sampler.take_async`), and
:func:`validate_files` reads in a worker thread, a chunk at a time, so a stop is not held up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from ..config.sections import RunConfig
from ..data.jsonl import read_jsonl
from ..data.sampler import as_source, drain_async, split_source, take
from ..errors import ConfigError, DataError
from ..types import Example

__all__ = ("Heldout", "Source", "TrainData", "training_sources", "validate_files")

Source = Callable[[], Iterable[Example]]
"""A zero-argument callable returning a fresh iterator of examples per pass."""

TrainData = Sequence[Example] | Source
"""Training examples as a caller passes them: a list, or a :data:`Source`."""

Heldout = list[Example] | Source
"""Held-out examples: a list when they are in memory, else a source to read them from (off
the event loop; at most ``trainer.eval_size`` of them are taken)."""


def training_sources(
    config: RunConfig,
    train: TrainData | None,
    heldout: Sequence[Example] | None,
    default_train: list[Example] | None,
) -> tuple[Source, Heldout]:
    """The training source and the held-out examples (see :data:`Heldout`); no file is read.

    Training data: ``train``, else ``data.train``, else ``default_train`` (a built-in task).
    Held out: ``heldout`` (its first ``trainer.eval_size``), else ``data.eval``, else a seeded
    ``data.eval_fraction`` split of the training source (which the returned source then leaves
    out). Held-out examples that come from a file or a callable ``train`` are returned as a
    source, to be read off the event loop; those of in-memory data as a list.

    Raises:
        ConfigError: no training data anywhere.
    """
    source = _train_source(config, train, default_train)
    n_eval = config.trainer.eval_size
    if heldout is not None:
        return source, list(heldout)[:n_eval]
    if config.data.eval:
        path = config.data.eval
        return source, lambda: read_jsonl(path)
    if config.data.eval_fraction > 0:
        rest, held = split_source(source, config.data.eval_fraction, config.seed)
        in_memory = not callable(train) if train is not None else not config.data.train
        return rest, take(held(), n_eval) if in_memory else held
    return source, []


def _train_source(
    config: RunConfig, train: TrainData | None, default_train: list[Example] | None
) -> Source:
    if train is None:
        if config.data.train:
            path = config.data.train
            return lambda: read_jsonl(path)
        if default_train is not None:
            return as_source(default_train)
        raise ConfigError("no training data: set data.train", key="data.train")
    if callable(train):
        return train
    return as_source(list(train))


def data_digests(config: RunConfig) -> dict[str, str]:
    """Blocking: the SHA-256 of each dataset file the config names (``data.train``,
    ``data.eval``), by key; a checkpoint keeps them so that a resume over changed data is
    refused (the built-in tasks and in-memory data have none)."""
    out: dict[str, str] = {}
    for key, path in (("data.train", config.data.train), ("data.eval", config.data.eval)):
        if path:
            h = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError as exc:
                raise DataError(f"cannot read the dataset: {exc.strerror}", path=path) from None
            out[key] = h.hexdigest()
    return out


async def validate_files(config: RunConfig) -> None:
    """Read every dataset file once before a run writes anything, so bad input fails up front
    (DataError names the file and line, or the training file that is empty); in a worker
    thread, a chunk at a time."""
    for path in (config.data.train, config.data.eval):
        if path:
            n = await drain_async(read_jsonl(path))
            if n == 0 and path == config.data.train:
                raise DataError("the dataset has no examples", path=path)
