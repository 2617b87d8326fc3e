"""engine.data.datasets: the built-in datasets load by name; an unknown name says which exist."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.data import datasets
from engine.errors import DataError


def test_sentiment_is_balanced_and_labelled() -> None:
    """sentiment holds 100 reviews, half positive and half negative, each with its label."""
    assert "sentiment" in datasets.names()
    examples = datasets.load("sentiment")
    assert len(examples) == 100
    assert Counter(e.target for e in examples) == {"positive": 50, "negative": 50}
    assert datasets.path("sentiment").is_file()


def test_unknown_dataset_names_the_known_ones() -> None:
    """Asking for a dataset that does not exist is a DataError listing those that do."""
    with pytest.raises(DataError, match=r"known: .*sentiment"):
        datasets.path("nope")
