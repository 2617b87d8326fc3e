"""Candidate growth: the reflection request that asks a model for a better instruction, the
parsing of its answer, and the choice of rollouts that new instructions and demo sets are made
from.

Every ``propose_every`` steps the prompt policy (:meth:`PromptPolicy.after_update`):

1. *reflection*: the most probable candidate's instruction, the best and the worst recent
   rollouts (input, output, expected answer, reward, judge feedback) go into a reflection
   prompt; the model (or a separate ``proposer`` client) answers with an improved
   instruction, which becomes a candidate with the parent's demos; the inputs of those
   rollouts (and the parent's own ``seen``) are the child's :attr:`~.candidates.Candidate.seen`,
   never counted as its held-out evidence;
2. *demos*: the recent training examples the parent got wrong, with their reference answers,
   become a new demo set (where examples have no reference: the top-scoring recent rollouts,
   input and output), a candidate with the parent's instruction;
3. *merge* (``merge_demos > 0``): the parent's instruction with its demos joined by those of
   the most probable other live candidate whose demos differ (at most ``merge_demos``, the
   parent's first), a larger few-shot set made of two lineages (GEPA's merge), accepted when
   it matches its parent on its minibatch (a tie is enough, unlike the other proposals);
4. *acceptance* (with a selection, :mod:`.selection`): each proposal is scored against its
   parent on a minibatch of the recent examples the parent does worst on (minus the
   proposal's own demos) and takes a slot only if it does strictly better there (a merge: at
   least as well);
5. *pruning*: the least probable candidates beyond ``max_candidates - headroom`` are retired
   (never the base prompt, never one on the validation Pareto front (``keep``), never one
   added in this round or the previous one).

A new candidate starts with the probability an average candidate has (``logit = log mean
exp(theta[live])``, so it gets ``1 / (n + 1)`` of the mass), and so does its reference logit.
When a slot is reused, the optimizer's first moment for it is zeroed (the new candidate
inherits no momentum) and its second moment set to the live slots' mean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...config.sections import PromptPolicyConfig
from ...errors import CheckpointError, EngineError
from ...telemetry.logs import get_logger
from ...types import Example, Group
from ..base import CompletionClient
from ..optim import Adam
from .candidates import Candidate, CandidateTable, Demo, Recipe

__all__ = (
    "CandidateGrowth",
    "GrowthSlots",
    "best_and_worst",
    "failure_demos",
    "logmeanexp",
    "merged_demos",
    "parse_instruction",
    "reflection_prompt",
    "reset_moments",
    "top_demos",
)

_TAG_RE = re.compile(r"<instruction>(.*?)(?:</instruction>|\Z)", re.DOTALL | re.IGNORECASE)
_MAX_INSTRUCTION_CHARS = 2000
_BUFFER_CAP = 256
"""Recent scored rollouts kept for growth."""

_log = get_logger("engine.policies.prompt")


@dataclass(frozen=True, slots=True)
class GrowthSlots:
    """What a growth round changes and reads of the policy.

    Attributes:
        table: the candidates and their slots.
        logits: (K,) the trainable logits, changed in place.
        ref: (K,) the reference logits, changed in place.
        optimizer: the policy's Adam, whose moments of a reused slot are reset (None: none).
        base_id: the base prompt's candidate, never pruned.
        proposer: the client that answers reflection requests (None: no reflection).
        accept: ``accept(child, parent, minibatch)`` says whether a proposal takes a slot
            (None: every proposal does).
        keep: candidate ids pruning never retires (the validation Pareto front).
    """

    table: CandidateTable
    logits: np.ndarray
    ref: np.ndarray
    optimizer: Adam | None
    base_id: int
    proposer: CompletionClient | None
    accept: Callable[[Candidate, Candidate, Sequence[Example]], Awaitable[bool]] | None = None
    keep: frozenset[int] = frozenset()


def reflection_prompt(
    parent: Candidate,
    best: Sequence[Mapping[str, Any]],
    worst: Sequence[Mapping[str, Any]],
    *,
    mode: Literal["chat", "completions"] = "chat",
) -> str | list[dict[str, str]]:
    """The request that asks the model for an improved instruction.

    ``best`` and ``worst`` are recent-rollout records (``input``, ``output``, ``target``,
    ``reward``, ``feedback``). The answer is expected between ``<instruction>`` tags; in
    completions mode the prompt ends with the opening tag.
    """

    def block(r: Mapping[str, Any]) -> str:
        lines = [f"Input: {r['input']}", f"Output: {r['output']}"]
        if r.get("target") is not None:
            lines.append(f"Expected: {r['target']}")
        lines.append(f"Reward: {float(r['reward']):.2f}")
        if r.get("feedback"):
            lines.append(f"Feedback: {r['feedback']}")
        return "\n".join(lines)

    body = [
        "You are improving the instruction given to a language model for a task.",
        f'Current instruction:\n"""\n{parent.instruction.strip() or "(none)"}\n"""',
    ]
    if best:
        body.append("Examples where the model did well:\n\n" + "\n\n".join(map(block, best)))
    if worst:
        body.append("Examples where the model did poorly:\n\n" + "\n\n".join(map(block, worst)))
    body.append(
        "Write one improved instruction that keeps what works and fixes the failures. Keep it "
        "short and general (no examples). Reply with the instruction only, between "
        "<instruction> and </instruction>."
    )
    text = "\n\n".join(body)
    if mode == "chat":
        return [{"role": "user", "content": text}]
    return text + "\n\nImproved instruction: <instruction>"


def parse_instruction(text: str) -> str | None:
    """The instruction in a reflection answer (between tags, or the whole text), or None."""
    m = _TAG_RE.search(text)
    out = (m.group(1) if m else text.split("</instruction>")[0]).strip().strip('"').strip()
    if not out or len(out) > _MAX_INSTRUCTION_CHARS:
        return None
    return out


def logmeanexp(z: np.ndarray) -> float:
    """``log(mean(exp(z)))``, computed without overflow."""
    m = float(z.max())
    return m + math.log(float(np.exp(z - m).mean()))


def best_and_worst(
    records: Sequence[Mapping[str, Any]], k: int
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Up to ``k`` highest- and ``k`` lowest-advantage records, distinct inputs, best > worst."""
    if not records:
        return [], []
    order = sorted(records, key=lambda r: (-r["advantage"], -r["reward"]))

    def pick(
        rs: Iterable[Mapping[str, Any]], cond: Callable[[Mapping[str, Any]], bool]
    ) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        for r in rs:
            if cond(r) and r["input"] not in seen:
                out.append(r)
                seen.add(r["input"])
            if len(out) >= k:
                break
        return out

    best = pick(order, lambda r: r["advantage"] > 0)
    worst = pick(reversed(order), lambda r: r["advantage"] < 0)
    return best, worst


def top_demos(records: Sequence[Mapping[str, Any]], k: int) -> tuple[Demo, ...]:
    """Up to ``k`` demos from the highest-reward recent rollouts (positive advantage, distinct
    inputs, non-empty outputs), most rewarded first."""
    good = [r for r in records if r["advantage"] > 0 and str(r["output"]).strip()]
    good.sort(key=lambda r: (-r["reward"], -r["advantage"]))
    demos: list[Demo] = []
    seen: set[str] = set()
    for r in good:
        if r["input"] in seen:
            continue
        seen.add(r["input"])
        demos.append(Demo(str(r["input"]), str(r["output"]).strip()))
        if len(demos) >= k:
            break
    return tuple(demos)


def failure_demos(records: Sequence[Mapping[str, Any]], parent: int, k: int) -> tuple[Demo, ...]:
    """Up to ``k`` demos from recent examples the ``parent`` candidate got wrong (reward below
    1, lowest first), each with its reference answer; examples without one are skipped."""
    bad = [
        r
        for r in records
        if r["candidate"] == parent and r["reward"] < 1.0 and str(r.get("target") or "").strip()
    ]
    bad.sort(key=lambda r: (r["reward"], r["step"]))
    demos: list[Demo] = []
    seen: set[str] = set()
    for r in bad:
        if r["input"] in seen:
            continue
        seen.add(r["input"])
        demos.append(Demo(str(r["input"]), str(r["target"]).strip()))
        if len(demos) >= k:
            break
    return tuple(demos)


def merged_demos(
    parent: Candidate, others: Sequence[Candidate], k: int
) -> tuple[Candidate | None, tuple[Demo, ...]]:
    """The merge partner (the first of ``others``, most probable first, whose demos are not
    all among the parent's) and the parent's demos joined by its new ones, at most ``k``
    (the parent's first, distinct inputs); ``(None, ())`` when no candidate adds a demo."""
    have = {d.input for d in parent.demos}
    for other in others:
        new = [d for d in other.demos if d.input not in have]
        if other.id == parent.id or not new:
            continue
        out: list[Demo] = []
        seen: set[str] = set()
        for d in (*parent.demos, *new):
            if d.input not in seen:
                seen.add(d.input)
                out.append(d)
        return other, tuple(out[:k])
    return None, ()


def reset_moments(optimizer: Adam | None, slot: int, live: np.ndarray) -> None:
    """Zero Adam's first moment of ``logits[slot]`` and set its second moment to the live
    slots' mean, through the optimizer's public state API (no-op before its first step)."""
    if optimizer is None:
        return
    arrays, meta = optimizer.state()
    if "m.logits" not in arrays:
        return
    arrays["m.logits"][slot] = 0.0
    v = arrays["v.logits"]
    others = live.copy()
    others[slot] = False
    v[slot] = float(v[others].mean()) if others.any() else 0.0
    optimizer.load_state(arrays, meta)


class CandidateGrowth:
    """The growth rounds of a prompt policy (module docstring): the recent scored rollouts they
    learn from, proposals, placement into free slots and pruning, on the policy's candidate
    table, logits and reference logits, in place.

    Attributes:
        prompt: ``propose_every``, ``max_demos`` and ``max_candidates`` are used.
        headroom: free slots kept for the next round (one per proposal kind).
        proposer_mode: the request shape of reflection calls.
        seed: seeds the reflection requests.
        buffer: the recent scored rollouts, as JSON records.
    """

    def __init__(
        self,
        prompt: PromptPolicyConfig,
        *,
        headroom: int,
        proposer_mode: Literal["chat", "completions"],
        seed: int,
    ) -> None:
        self.prompt = prompt
        self.headroom = headroom
        self.proposer_mode = proposer_mode
        self.seed = seed
        self.buffer: list[dict[str, Any]] = []
        self.examples: dict[str, Example] = {}
        """Recent training examples by text (for acceptance minibatches)."""
        self._registered: dict[Recipe, Candidate] = {}
        """Accepted proposals of this round, registered (and scored) before placement."""
        self._seen: dict[Recipe, tuple[str, ...]] = {}
        """This round's proposals: the training inputs each was written from."""

    def examples_json(self) -> list[dict[str, Any]]:
        """The recent training examples as JSON data (for a checkpoint)."""
        return [
            {"id": ex.id, "text": ex.text, "inputs": dict(ex.inputs), "target": ex.target}
            for ex in self.examples.values()
        ]

    def load_examples(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Inverse of :meth:`examples_json`; raises CheckpointError on malformed data."""
        try:
            exs = [
                Example(
                    id=str(r["id"]),
                    text=str(r["text"]),
                    inputs=dict(r.get("inputs") or {}),
                    target=None if r.get("target") is None else str(r["target"]),
                )
                for r in rows
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed prompt policy examples: {exc!r}") from None
        self.examples = {ex.text: ex for ex in exs}

    def due(self, step: int) -> bool:
        """Whether a growth round follows the update of batch ``step``."""
        every = self.prompt.propose_every
        return bool(every) and (step + 1) % every == 0

    def record(self, step: int, groups: Sequence[Group], table: CandidateTable) -> None:
        """Count each scored rollout for its candidate and keep it in the recent buffer."""
        for g in groups:
            for r in g.rollouts:
                if not r.ok or r.sample.choice is None:
                    continue
                table.record(int(r.sample.choice), r.reward)
                self.examples[g.example.text] = g.example
                self.buffer.append(
                    {
                        "candidate": int(r.sample.choice),
                        "input": g.example.text,
                        "target": g.example.target,
                        "output": r.sample.text,
                        "reward": float(r.reward),
                        "advantage": float(r.advantage) if math.isfinite(r.advantage) else 0.0,
                        "feedback": r.feedback,
                        "step": step,
                    }
                )
        del self.buffer[: max(0, len(self.buffer) - _BUFFER_CAP)]
        for key in list(self.examples)[: max(0, len(self.examples) - _BUFFER_CAP)]:
            del self.examples[key]

    async def grow(self, step: int, v: int, slots: GrowthSlots) -> dict[str, float]:
        """One growth round after version ``v`` was published; its metrics."""
        freed = slots.table.reclaim(v)
        slots.logits[freed] = 0.0
        slots.ref[freed] = 0.0
        parent = slots.table.most_probable(slots.logits)
        self._seen.clear()
        proposals, errors = await self._proposals(step, parent, slots)
        proposed = len(proposals)
        self._registered.clear()
        if slots.accept is not None:
            proposals = await self._accepted(step, proposals, parent, slots)
        placed = self._place(proposals, parent, v, slots)
        pruned = self._prune(v, slots)
        _log.info("prompt.grow", step=step, proposed=proposed, accepted=len(proposals),
                  placed=placed, pruned=pruned)  # fmt: skip
        return {
            "prompt/proposed": float(proposed),
            "prompt/placed": float(placed),
            "prompt/pruned": float(pruned),
            "prompt/propose_errors": float(errors),
        }

    async def _proposals(
        self, step: int, parent: Candidate, slots: GrowthSlots
    ) -> tuple[list[tuple[Recipe, str]], int]:
        """New recipes from the recent rollouts (a reflected instruction, a demo set), each
        with its origin; and the number of failed reflection requests."""
        recent = [r for r in self.buffer if r["step"] > step - self.prompt.propose_every]
        live_recipes = slots.table.live_recipes()
        proposals: list[tuple[Recipe, str]] = []
        errors = 0
        best, worst = best_and_worst(recent, 3)
        if best and worst:
            try:
                instruction = await self._reflect(slots.proposer, parent, best, worst, seed=step)
            except EngineError as exc:
                errors += 1
                _log.warning("prompt.reflection_failed", step=step, error=str(exc))
                instruction = None
            if instruction is not None and instruction != parent.instruction:
                recipe = (instruction, parent.demos, parent.temperature)
                if recipe not in live_recipes:
                    proposals.append((recipe, "reflection"))
                    live_recipes.add(recipe)
                    self._seen[recipe] = parent.seen + tuple(r["input"] for r in best + worst)
        if self.prompt.max_demos > 0:
            demos = failure_demos(recent, parent.id, self.prompt.max_demos)
            demos = demos or top_demos(recent, self.prompt.max_demos)
            recipe = (parent.instruction, demos, parent.temperature)
            if demos and recipe not in live_recipes:
                proposals.append((recipe, "demos"))
                live_recipes.add(recipe)
                self._seen[recipe] = parent.seen
        if self.prompt.merge_demos > 0:
            self._merge(parent, slots, live_recipes, proposals)
        return proposals, errors

    def _merge(
        self,
        parent: Candidate,
        slots: GrowthSlots,
        live_recipes: set[Recipe],
        proposals: list[tuple[Recipe, str]],
    ) -> None:
        """Append the merge proposal (:func:`merged_demos`) unless it exists already."""
        table, theta = slots.table, slots.logits
        order = sorted(np.flatnonzero(table.live()), key=lambda s: (-theta[s], int(table.ids[s])))
        others = [table.at(int(s)) for s in order]
        other, demos = merged_demos(parent, others, self.prompt.merge_demos)
        if other is None or len(demos) <= len(parent.demos):
            return
        recipe = (parent.instruction, demos, parent.temperature)
        if recipe in live_recipes:
            return
        proposals.append((recipe, "merge"))
        live_recipes.add(recipe)
        self._seen[recipe] = tuple(dict.fromkeys(parent.seen + other.seen))

    async def _accepted(
        self,
        step: int,
        proposals: list[tuple[Recipe, str]],
        parent: Candidate,
        slots: GrowthSlots,
    ) -> list[tuple[Recipe, str]]:
        """The proposals that beat ``parent`` on their minibatch (:attr:`GrowthSlots.accept`).
        Each is registered to be scored; a rejected one never takes a slot."""
        assert slots.accept is not None
        recent = [r for r in self.buffer if r["step"] > step - self.prompt.propose_every]
        worst = sorted(
            (r for r in recent if r["candidate"] == parent.id),
            key=lambda r: (r["reward"], -r["step"]),
        ) + sorted(recent, key=lambda r: (r["reward"], -r["step"]))
        kept: list[tuple[Recipe, str]] = []
        for recipe, origin in proposals:
            shown = {d.input for d in recipe[1]}
            batch: list[Example] = []
            for r in worst:
                ex = self.examples.get(r["input"])
                if ex is None or ex.text in shown or ex in batch:
                    continue
                batch.append(ex)
                if len(batch) >= self.prompt.minibatch:
                    break
            child = slots.table.new_candidate(recipe, origin, parent.id, self._seen.get(recipe, ()))
            if await slots.accept(child, parent, batch):
                kept.append((recipe, origin))
                self._registered[recipe] = child
        return kept

    def _place(
        self, proposals: list[tuple[Recipe, str]], parent: Candidate, v: int, slots: GrowthSlots
    ) -> int:
        """Put proposals into free slots, born at ``v + 1``, with an average candidate's
        probability and no optimizer momentum; returns how many were placed."""
        table, theta, ref = slots.table, slots.logits, slots.ref
        free = list(np.flatnonzero(table.ids < 0))
        live = table.live()
        placed = 0
        for recipe, origin in proposals[: len(free)]:
            slot = int(free[placed])
            cand = self._registered.pop(recipe, None)
            if cand is None:
                cand = table.new_candidate(recipe, origin, parent.id, self._seen.get(recipe, ()))
            theta[slot] = logmeanexp(theta[live])
            ref[slot] = logmeanexp(ref[live])
            table.place(slot, cand, born=v + 1)
            reset_moments(slots.optimizer, slot, live)
            placed += 1
        return placed

    def _prune(self, v: int, slots: GrowthSlots) -> int:
        """Retire the weakest beyond K - headroom (they die at ``v + 1``); the base prompt and
        candidates added in this round or the previous one are kept. Returns how many."""
        table, theta, every = slots.table, slots.logits, self.prompt.propose_every
        live = table.live()
        excess = int(live.sum()) - max(1, self.prompt.max_candidates - self.headroom)
        if excess <= 0:
            return 0
        pruned = 0
        order = sorted(np.flatnonzero(live), key=lambda s: (theta[s], -int(table.ids[s])))
        for s in order:
            if pruned >= excess:
                break
            cid = int(table.ids[s])
            if cid == slots.base_id or cid in slots.keep or table.born[s] > v - every:
                continue
            table.died[s] = v + 1
            pruned += 1
        return pruned

    async def _reflect(
        self,
        client: CompletionClient | None,
        parent: Candidate,
        best: Sequence[Mapping[str, Any]],
        worst: Sequence[Mapping[str, Any]],
        *,
        seed: int,
    ) -> str | None:
        """Ask ``client`` for an improved instruction; None without a client."""
        if client is None:
            return None
        prompt = reflection_prompt(parent, best, worst, mode=self.proposer_mode)
        comp = await client.complete(
            prompt,
            n=1,
            kind="proposal",
            mode=self.proposer_mode,
            max_tokens=256,
            temperature=1.0,
            stop=["</instruction>"] if self.proposer_mode == "completions" else None,
            seed=self.seed * 1_000_003 + seed,
        )
        return parse_instruction(comp.choices[0].text)
