"""Prompt candidates: the recipes, the demo sets they are seeded with, their statistics, and
the table of parameter slots that says which candidate each slot holds in which versions.

Shapes never change: the policy has ``K = max_candidates`` slots. Every slot carries ``born``
and ``died`` versions and snapshot ``v`` shows the slots with ``born <= v < died``, so growth
after update ``V`` takes effect from version ``V + 1`` and a stale snapshot still shows what it
showed. Candidate texts live in an append-only registry keyed by id (ids are never reused), so
a stale snapshot still renders the prompts it drew.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CheckpointError
from ...types import Example

__all__ = (
    "NEVER",
    "Candidate",
    "CandidateStatistics",
    "CandidateTable",
    "Demo",
    "Recipe",
    "make_demo_sets",
)

NEVER = np.iinfo(np.int64).max
"""``died`` of a slot that is alive (and ``born`` of an empty one)."""


@dataclass(frozen=True, slots=True)
class Demo:
    """One few-shot demonstration: an input text and the output to imitate."""

    input: str
    output: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """One prompt recipe: instruction x demo set (x temperature).

    Attributes:
        id: unique and never reused; ``Sample.choice`` holds it.
        instruction: the instruction text; if it contains ``{text}`` (or another input
            field in braces) it is a template rendered per example instead.
        demos: the few-shot demonstrations, in order.
        temperature: sampling temperature for this candidate; None uses the endpoint's.
        origin: ``seed``, ``reflection``, ``demos`` or ``merge``.
        parent: the id of the candidate it was derived from, if any.
        seen: the training inputs its proposal was written from (a reflection's examples, and
            its ancestors'); like its demos, they never count as its held-out evidence.
    """

    id: int
    instruction: str
    demos: tuple[Demo, ...] = ()
    temperature: float | None = None
    origin: str = "seed"
    parent: int | None = None
    seen: tuple[str, ...] = ()

    @property
    def shown(self) -> frozenset[str]:
        """The inputs this candidate's prompt was made from: its demos' and :attr:`seen`."""
        return frozenset(d.input for d in self.demos) | frozenset(self.seen)

    @property
    def recipe(self) -> tuple[str, tuple[Demo, ...], float | None]:
        """What makes two candidates the same prompt."""
        return (self.instruction, self.demos, self.temperature)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "id": self.id,
            "instruction": self.instruction,
            "demos": [[d.input, d.output] for d in self.demos],
            "temperature": self.temperature,
            "origin": self.origin,
            "parent": self.parent,
            "seen": list(self.seen),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_json`; raises CheckpointError on malformed data."""
        try:
            demos = tuple(Demo(str(i), str(o)) for i, o in obj["demos"])
            temp = obj.get("temperature")
            parent = obj.get("parent")
            return cls(
                id=int(obj["id"]),
                instruction=str(obj["instruction"]),
                demos=demos,
                temperature=None if temp is None else float(temp),
                origin=str(obj.get("origin", "seed")),
                parent=None if parent is None else int(parent),
                seen=tuple(str(x) for x in obj.get("seen") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed prompt candidate {obj!r}: {exc!r}") from None


Recipe = tuple[str, tuple[Demo, ...], float | None]
"""What makes two candidates the same prompt: instruction, demos, temperature."""


@dataclass(frozen=True, slots=True)
class CandidateStatistics:
    """The scored rollouts of one candidate since training began.

    Attributes:
        n: rollouts scored.
        reward_sum: the sum of their rewards.
    """

    n: int = 0
    reward_sum: float = 0.0

    @property
    def mean_reward(self) -> float:
        """The mean reward, NaN before the first rollout."""
        return self.reward_sum / self.n if self.n else math.nan

    def add(self, reward: float) -> CandidateStatistics:
        """These statistics with one more rollout of ``reward``."""
        return CandidateStatistics(self.n + 1, self.reward_sum + reward)


def make_demo_sets(
    pool: Sequence[Example], n_sets: int, k: int, rng: np.random.Generator
) -> list[tuple[Demo, ...]]:
    """``n_sets`` demo sets of ``k`` demos from examples that have a target.

    Each set is drawn in a seeded random order, round-robin over the distinct targets, so a
    classification task gets label-balanced demos (a set of one label teaches that label).
    Duplicate sets are dropped.
    """
    usable = [ex for ex in pool if ex.target is not None and ex.target.strip()]
    if not usable or k <= 0 or n_sets <= 0:
        return []
    sets: list[tuple[Demo, ...]] = []
    for _ in range(n_sets):
        order = [usable[i] for i in rng.permutation(len(usable))]
        by_target: dict[str, list[Example]] = {}
        for ex in order:
            by_target.setdefault(str(ex.target).strip(), []).append(ex)
        queues = list(by_target.values())
        chosen: list[Example] = []
        while len(chosen) < min(k, len(usable)):
            for q in queues:
                if q and len(chosen) < k:
                    chosen.append(q.pop(0))
        rng.shuffle(chosen)  # type: ignore[arg-type]
        demos = tuple(Demo(ex.text, str(ex.target).strip()) for ex in chosen)
        if demos not in sets:
            sets.append(demos)
    return sets


class CandidateTable:
    """Which candidate each of the K parameter slots holds, from which version to which, and
    every candidate ever made (module docstring).

    Attributes:
        ids: (K,) the candidate id of each slot, -1 when empty.
        born: (K,) the first version that shows the slot.
        died: (K,) the first version that does not show it any more (``NEVER`` while alive).
        registry: every candidate ever made, by id.
        statistics: per candidate id, its scored rollouts.
        next_id: the id the next candidate gets.
    """

    def __init__(self, k: int) -> None:
        self.ids = np.full(k, -1, dtype=np.int64)
        self.born = np.full(k, NEVER, dtype=np.int64)
        self.died = np.full(k, NEVER, dtype=np.int64)
        self.registry: dict[int, Candidate] = {}
        self.statistics: dict[int, CandidateStatistics] = {}
        self.next_id = 0

    def new_candidate(
        self, recipe: Recipe, origin: str, parent: int | None, seen: Sequence[str] = ()
    ) -> Candidate:
        """Register a new candidate (not in a slot yet); ``seen``: :attr:`Candidate.seen`."""
        instruction, demos, temperature = recipe
        seen = tuple(dict.fromkeys(seen))
        cand = Candidate(self.next_id, instruction, demos, temperature, origin, parent, seen)
        self.registry[cand.id] = cand
        self.statistics[cand.id] = CandidateStatistics()
        self.next_id += 1
        return cand

    def live(self) -> np.ndarray:
        """(K,) bool: slots the policy being trained has (newborns included)."""
        return (self.ids >= 0) & (self.died == NEVER)

    def visible(self, version: int) -> np.ndarray:
        """(K,) bool: slots snapshot ``version`` shows."""
        return (self.ids >= 0) & (self.born <= version) & (version < self.died)

    def at(self, slot: int) -> Candidate:
        """The candidate in ``slot``."""
        return self.registry[int(self.ids[slot])]

    def most_probable(self, logits: np.ndarray) -> Candidate:
        """The live candidate with the largest of ``logits`` (K,) (the lowest slot on ties)."""
        live = np.flatnonzero(self.live())
        return self.at(live[int(np.argmax(logits[live]))])

    def live_recipes(self) -> set[Recipe]:
        """The recipes of the live candidates."""
        return {self.registry[int(i)].recipe for i in self.ids[self.live()]}

    def place(self, slot: int, cand: Candidate, born: int) -> None:
        """Put ``cand`` in ``slot`` from version ``born`` on."""
        self.ids[slot] = cand.id
        self.born[slot] = born
        self.died[slot] = NEVER

    def reclaim(self, version: int) -> np.ndarray:
        """Empty the slots that died by ``version`` (no re-creatable snapshot shows them);
        returns them as a (K,) mask."""
        freed = (self.ids >= 0) & (self.died <= version)
        self.ids[freed] = -1
        self.born[freed] = NEVER
        self.died[freed] = NEVER
        return freed

    def record(self, cid: int, reward: float) -> None:
        """Count one scored rollout of candidate ``cid``."""
        self.statistics[cid] = self.statistics.get(cid, CandidateStatistics()).add(reward)

    def slot_arrays(self) -> dict[str, np.ndarray]:
        """Copies of ``slots/ids``, ``slots/born`` and ``slots/died`` for a checkpoint."""
        return {
            "slots/ids": self.ids.copy(),
            "slots/born": self.born.copy(),
            "slots/died": self.died.copy(),
        }

    def registry_json(self) -> dict[str, Any]:
        """The candidates and their statistics as JSON data."""
        return {
            "next_id": self.next_id,
            "candidates": [c.to_json() for c in self.registry.values()],
            "stats": {str(k): [s.n, s.reward_sum] for k, s in self.statistics.items()},
        }

    def load(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`slot_arrays` (checked by the caller) and :meth:`registry_json`.

        Raises:
            CheckpointError: incomplete JSON data, or slots naming unknown candidates.
        """
        try:
            registry = {c.id: c for c in map(Candidate.from_json, meta["candidates"])}
            statistics = {
                int(k): CandidateStatistics(int(n), float(s)) for k, (n, s) in meta["stats"].items()
            }
            next_id = int(meta["next_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"prompt policy state is incomplete: {exc!r}") from None
        unknown = [int(i) for i in arrays["slots/ids"] if i >= 0 and int(i) not in registry]
        if unknown:
            raise CheckpointError(f"prompt policy slots name unknown candidates {unknown}")
        self.ids, self.born = arrays["slots/ids"], arrays["slots/born"]
        self.died = arrays["slots/died"]
        self.registry, self.statistics, self.next_id = registry, statistics, next_id
