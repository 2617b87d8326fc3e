"""Candidate growth: parsing the reflection answer, and the merge proposal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.config.sections import PromptPolicyConfig
from engine.endpoints.parsing import Choice, Completion
from engine.policies.prompt import Candidate, Demo, PromptPolicy, PromptSample, parse_instruction
from engine.policies.prompt.growth import merged_demos
from engine.types import Example, Group, Rollout, Usage


def test_parse_instruction() -> None:
    """Reflection answers: between tags, or the whole text; empty answers are rejected."""
    assert parse_instruction("Sure! <instruction>Be brief.</instruction>") == "Be brief."
    assert parse_instruction(' "Answer in one word."</instruction> junk') == "Answer in one word."
    assert parse_instruction("<instruction>  </instruction>") is None


A, B, C, D = (Demo(x, x.upper()) for x in "abcd")


def test_merged_demos_join_the_first_partner_that_adds_a_demo() -> None:
    """The parent's demos first, then the partner's new ones, capped; a partner that adds
    nothing (zero-shot, a subset, the parent itself) is skipped."""
    parent = Candidate(1, "p", (A, B))
    zero, subset, other = Candidate(2, "z"), Candidate(3, "s", (B,)), Candidate(4, "o", (B, C, D))
    partner, demos = merged_demos(parent, [parent, zero, subset, other], 6)
    assert partner is other and demos == (A, B, C, D)
    assert merged_demos(parent, [other], 3) == (other, (A, B, C))
    assert merged_demos(parent, [parent, zero, subset], 6) == (None, ())


class Answers:
    """A fake client: the reflection gets one fixed instruction back."""

    def __init__(self) -> None:
        self.calls: list[Mapping[str, Any]] = []

    async def complete(self, prompt: Any, *, n: int = 1, **kw: Any) -> Any:
        self.calls.append(kw)
        return Completion([Choice(0, "<instruction>New.</instruction>", "stop")], Usage(1, 1),
                          "id", "fake", 0.0, 1, 1)  # fmt: skip


def _groups(pol: PromptPolicy, step: int) -> list[Group]:
    """Rollouts of every live candidate on two examples, candidate 1 right, the others not."""
    out = []
    for j in range(2):
        ex = Example(f"x{j}", f"input {j}", target="yes")
        g = Group(f"{step}-{j}", step, ex, pol.version)
        for i, (cand, _) in enumerate(pol.probabilities()):
            r = 1.0 if cand.id == 1 else 0.0
            s = PromptSample(text="yes" if r else "no", choice=cand.id, logprobs=np.array([-1.0]))
            ro = Rollout(g.group_id, i, pol.version, s, reward=r)
            ro.advantage = r - 0.3
            g.rollouts.append(ro)
        out.append(g)
    return out


async def _grown(merge: int) -> PromptPolicy:
    pol = PromptPolicy(
        Answers(),  # type: ignore[arg-type]
        PromptPolicyConfig(max_candidates=7, max_demos=2, propose_every=1, merge_demos=merge),
        candidates=[("base", (), None), ("one", (A, B), None), ("two", (C, D), None)],
    )
    pol.params["logits"][:3] = [0.0, 2.0, 1.0]  # "one" is the parent, "two" its partner
    await pol.after_update(0, _groups(pol, 0), version=1)
    return pol


async def test_a_growth_round_proposes_the_merge_with_a_slot_for_it() -> None:
    """With merge_demos, a round places the parent's instruction with both demo sets joined
    (one more headroom slot); without it, no merge is made."""
    pol = await _grown(4)
    assert pol.headroom == 3
    made = [pol.candidate(i) for i in range(pol.table.next_id)]
    merges = [c for c in made if c.origin == "merge"]
    assert len(merges) == 1
    m = merges[0]
    assert (m.instruction, m.demos, m.parent) == ("one", (A, B, C, D), 1)
    assert m.shown >= {d.input for d in (A, B, C, D)}
    assert m.id in {int(i) for i in pol.table.ids[pol.table.live()]}
    plain = await _grown(0)
    assert plain.headroom == 2
    assert all(plain.candidate(i).origin != "merge" for i in range(plain.table.next_id))
