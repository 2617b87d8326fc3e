"""The training source and the held-out examples of a run.

A source is a zero-argument callable returning a fresh iterator of examples per pass, so the
sampler can shuffle and repeat it without holding a file open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..config.sections import RunConfig
from ..data.jsonl import read_jsonl
from ..data.sampler import as_source, split_source, take
from ..errors import ConfigError, DataError
from ..types import Example

__all__ = ("Source", "TrainData", "training_sources", "validate_files")

Source = Callable[[], Iterable[Example]]
"""A zero-argument callable returning a fresh iterator of examples per pass."""

TrainData = Sequence[Example] | Source
"""Training examples as a caller passes them: a list, or a :data:`Source`."""


def training_sources(
    config: RunConfig,
    train: TrainData | None,
    heldout: Sequence[Example] | None,
    default_train: list[Example] | None,
) -> tuple[Source, list[Example]]:
    """The training source and at most ``trainer.eval_size`` held-out examples.

    Training data: ``train``, else ``data.train``, else ``default_train`` (a built-in task).
    Held out: ``heldout``, else ``data.eval``, else a seeded ``data.eval_fraction`` split of
    the training source (which the returned source then leaves out).

    Raises:
        ConfigError: no training data anywhere.
    """
    source = _train_source(config, train, default_train)
    n_eval = config.trainer.eval_size
    if heldout is not None:
        return source, list(heldout)[:n_eval]
    if config.data.eval:
        return source, take(read_jsonl(config.data.eval), n_eval)
    if config.data.eval_fraction > 0:
        rest, held = split_source(source, config.data.eval_fraction, config.seed)
        return rest, take(held(), n_eval)
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


def validate_files(config: RunConfig) -> None:
    """Blocking: read every dataset file once before a run writes anything, so bad input
    fails up front (DataError names the file and line, or the training file that is empty)."""
    for path in (config.data.train, config.data.eval):
        if path:
            n = sum(1 for _ in read_jsonl(path))
            if n == 0 and path == config.data.train:
                raise DataError("the dataset has no examples", path=path)
