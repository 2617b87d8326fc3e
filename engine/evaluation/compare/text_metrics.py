"""Lexical text metrics: distinct-n, n-gram overlap, diversity and bag-of-words relevance.

Tokens are the ``\\w+`` runs of the lower-cased text (:func:`tokenize`). These metrics need
no model: :func:`diversity` and :func:`distinct_n` describe a group of samples of one input,
:func:`lexical_relevance` one output against its input.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence

from ...types import Example

__all__ = (
    "distinct_n",
    "diversity",
    "group_metrics",
    "lexical_relevance",
    "ngram_overlap",
    "tokenize",
)

_TOKEN_RE = re.compile(r"\w+")

NGram = tuple[str, ...]


def tokenize(text: str) -> list[str]:
    """The ``\\w+`` runs of the lower-cased text."""
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[NGram]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams over ``texts``; 0 when there are none."""
    grams = [g for t in texts for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _gram_sets(text: str, orders: Sequence[int]) -> list[set[NGram]]:
    tokens = tokenize(text)
    return [set(_ngrams(tokens, n)) for n in orders]


def _overlap(sa: Sequence[set[NGram]], sb: Sequence[set[NGram]]) -> float:
    vals = [len(a & b) / len(a | b) for a, b in zip(sa, sb, strict=True) if a or b]
    return sum(vals) / len(vals) if vals else 1.0


def ngram_overlap(first: str, second: str, orders: Sequence[int] = (1, 2)) -> float:
    """Jaccard overlap of two texts' n-gram sets, averaged over ``orders``.

    An order for which both texts have no n-grams is skipped; two texts with no n-grams of
    any order (both empty, say) overlap fully (1.0). Identical texts give 1.0.
    """
    return _overlap(_gram_sets(first, orders), _gram_sets(second, orders))


def diversity(texts: Sequence[str], orders: Sequence[int] = (1, 2)) -> float:
    """1 - the mean pairwise :func:`ngram_overlap` among ``texts`` (NaN for fewer than 2)."""
    sets = [_gram_sets(t, orders) for t in texts]
    pairs = list(itertools.combinations(sets, 2))
    if not pairs:
        return math.nan
    return 1.0 - sum(_overlap(a, b) for a, b in pairs) / len(pairs)


def group_metrics(texts: Sequence[str]) -> dict[str, float]:
    """``diversity``, ``distinct_1`` and ``distinct_2`` of one input's samples."""
    return {
        "diversity": diversity(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }


def lexical_relevance(example: Example | str, text: str) -> float:
    """Bag-of-words F1 between the input text and ``text`` (as in SQuAD).

    ``common`` counts tokens shared with multiplicity; precision = common / len(output),
    recall = common / len(input), F1 their harmonic mean; 0.0 when nothing is shared (an
    empty output included). A crude stand-in for a relevance judge: it rewards reusing the
    input's words.
    """
    source = tokenize(example.text if isinstance(example, Example) else example)
    out = tokenize(text)
    common = sum((Counter(source) & Counter(out)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(source)
    return 2 * precision * recall / (precision + recall)
