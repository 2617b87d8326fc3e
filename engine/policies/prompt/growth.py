"""Candidate growth: the reflection request that asks a model for a better instruction, the
parsing of its answer, and the choice of rollouts that new instructions and demo sets are made
from.

Every ``propose_every`` steps the prompt policy (:meth:`PromptPolicy.after_update`):

1. *reflection*: the most probable candidate's instruction, the best and the worst recent
   rollouts (input, output, expected answer, reward, judge feedback) go into a reflection
   prompt; the model (or a separate ``proposer`` client) answers with an improved
   instruction, which becomes a candidate with the parent's demos;
2. *demos*: the top-scoring recent rollouts (input, output) become a new demo set, a
   candidate with the parent's instruction;
3. *pruning*: the least probable candidates beyond ``max_candidates - headroom`` are retired
   (never the base prompt, never one added in this round or the previous one).

A new candidate starts with the probability an average candidate has (``logit = log mean
exp(theta[live])``, so it gets ``1 / (n + 1)`` of the mass), and so does its reference logit.
When a slot is reused, the optimizer's first moment for it is zeroed (the new candidate
inherits no momentum) and its second moment set to the live slots' mean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..optim import Adam
from .candidates import Candidate, Demo

__all__ = (
    "best_and_worst",
    "logmeanexp",
    "parse_instruction",
    "reflection_prompt",
    "reset_moments",
    "top_demos",
)

_TAG_RE = re.compile(r"<instruction>(.*?)(?:</instruction>|\Z)", re.DOTALL | re.IGNORECASE)
_MAX_INSTRUCTION_CHARS = 2000


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
