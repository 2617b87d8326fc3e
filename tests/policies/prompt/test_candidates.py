"""Prompt candidates: seed demo sets."""

from __future__ import annotations

from collections import Counter

import numpy as np

from engine.policies.prompt import make_demo_sets
from engine.types import Example


def test_demo_sets_are_label_balanced() -> None:
    """Seed demo sets alternate targets instead of repeating one label."""
    pool = [Example(f"p{i}", f"t{i}", target="positive") for i in range(20)]
    pool += [Example("n0", "bad", target="negative"), Example("n1", "worse", target="negative")]
    sets = make_demo_sets(pool, 2, 4, np.random.default_rng(0))
    for s in sets:
        assert Counter(d.output for d in s) == {"positive": 2, "negative": 2}
