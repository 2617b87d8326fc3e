"""Lexical text metrics on hand-counted texts."""

from __future__ import annotations

import math

import pytest

from engine.evaluation.compare import distinct_n, diversity, lexical_relevance, ngram_overlap
from engine.types import Example


def test_distinct_n_and_overlap_hand_cases() -> None:
    """distinct-n and the pairwise n-gram overlap on hand-counted texts."""
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "b c"], 2) == pytest.approx(3 / 3)
    assert distinct_n(["", ""], 1) == 0.0
    # unigrams {a,b,c} vs {a,b,d}: 2/4; bigrams {ab,bc} vs {ab,bd}: 1/3
    assert ngram_overlap("a b c", "a b d") == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert ngram_overlap("A, b!", "a b") == 1.0  # tokens are lower-cased \w+ runs
    assert ngram_overlap("a", "b") == 0.0  # no bigrams on either side: unigrams only
    assert ngram_overlap("", "") == 1.0


def test_diversity_hand_cases() -> None:
    """Identical samples have diversity 0, disjoint ones 1; one sample has none defined."""
    assert diversity(["x y", "x y", "x y"]) == 0.0
    assert diversity(["a", "b", "c"]) == 1.0
    assert diversity(["a b c", "a b d"]) == pytest.approx(1 - (2 / 4 + 1 / 3) / 2)
    assert math.isnan(diversity(["only one"]))


def test_lexical_relevance_hand_cases() -> None:
    """Bag-of-words F1 between input and output, with multiplicity."""
    ex = Example(id="t", text="reverse: 3 1 4 1")
    # input tokens reverse 3 1 4 1 (5), output 1 4 1 3 (4): 4 shared -> P=1, R=0.8
    assert lexical_relevance(ex, "1 4 1 3") == pytest.approx(2 * 0.8 / 1.8)
    assert lexical_relevance(ex, "") == 0.0
    assert lexical_relevance("cats purr", "dogs bark") == 0.0
    assert lexical_relevance("cats purr", "cats purr") == 1.0
