"""Reward functions and LLM judges, weighted and combined, a metric per part.

A reward function is ``(example, output_text) -> float``, sync or async. Sync functions run in
a worker thread (they may be CPU-heavy) unless declared ``inline`` (trivially cheap ones, like
the built-in task's). Judges (:mod:`engine.rewards.judges`) grade with a model, per rollout
(:class:`~engine.rewards.judges.LLMJudge`) or per group
(:class:`~engine.rewards.judges.GroupJudge`). The combined reward of an output ``x`` is::

    r(x) = sum_f w_f * f(x)  +  pass(x) * sum_j w_j * J_j(x)

where ``pass(x)`` is 1 unless a *gate* is configured (below). Each function's and judge's
value is kept in :attr:`Score.parts` by name (``reward/<name>`` in the metrics), and judge
feedback in :attr:`Score.feedback`. Automatic reward scaling (running normalization) belongs
to the learner, not here.

Failures. A function or judge that raises (a malformed verdict is an
:class:`~engine.errors.OutputParseError`), or a function returning a non-finite value, is a
*recorded failure*: the rollout's reward is NaN, its error says which part failed and why, and
the advantages mask it. It is never turned into a silent 0.0 (which would skew every other
member's advantage).

Format failures are different: an output that does not parse into the module's
:class:`~engine.endpoints.modules.Signature` (a :class:`~engine.endpoints.modules.Prediction`
with ``ok=False``, or a text when the Rewarder has a ``signature``) is the policy's fault, so
it gets a real reward, ``format_failure_reward`` (``RewardConfig.format_failure_reward``), no
function or judge is called for it, and it is counted.

Dynamic sampling with a gate (streaming, per group). Cheap functions run first, for the whole
group; judges run afterwards, only where they can matter. With ``gate="name"`` (one of the
functions, e.g. a format or correctness check), a rollout whose gate value is
``<= gate_threshold`` is not sent to any judge: ``pass(x) = 0`` and its reward is the
functions' part alone. This is a property of the reward definition, applied to every rollout
the same way, so a rollout's reward never depends on its group mates. When every member of
a group fails the gate, no judge is called for the group at all. Why not skip judges whenever
the cheap rewards tie? Because with a weighted sum a judge still breaks ties, so skipping then
would change the reward; the gate makes the skip exact instead of approximate. Judge calls
avoided are counted in :meth:`Rewarder.statistics` (``judge_calls_saved``). Judges are also
not called for a rollout whose functions already failed (its reward is NaN either way).

Example::

    rewarder = Rewarder(
        [RewardSpec("format", has_answer_tag, inline=True), RewardSpec("length", brevity, 0.2)],
        judges=[JudgeSpec(LLMJudge(client, "Is the answer right?"), weight=1.0)],
        gate="format",                      # judges only grade well-formed answers
    )
    score = await rewarder.score(example, "<answer>42</answer>")
    scores = await rewarder.score_group(example, texts, group_id="s3-g1")

A Rewarder is built from a ``[reward]`` config section by the assembly
(:func:`engine.training.assembly.build_rewarder`); this module knows no config.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from ..endpoints.modules import Prediction
from ..endpoints.signatures import Signature
from ..types import Example
from .judges import JudgeStatistics
from .verdicts import Verdict

__all__ = (
    "GroupJudgeLike",
    "JudgeSpec",
    "RewardFn",
    "RewardSpec",
    "RewardStatistics",
    "Rewarder",
    "RolloutJudgeLike",
    "Score",
)

RewardFn = Callable[[Example, str], "float | Awaitable[float]"]


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """One reward function with its name and weight.

    Attributes:
        name: metric name (``reward/<name>``).
        fn: ``(example, output_text) -> float`` or an async function returning float.
        weight: weight in the combined reward.
        inline: run a sync function on the event loop (only for trivially cheap functions).
    """

    name: str
    fn: Callable[[Example, str], Any]
    weight: float = 1.0
    inline: bool = False


@runtime_checkable
class RolloutJudgeLike(Protocol):
    """What the Rewarder needs of a per-rollout judge (:class:`~engine.rewards.judges.LLMJudge`).

    ``verdicts`` may also take ``sample_indices`` (each text's index in its group, recorded in
    the request events); the Rewarder passes them when the signature has that parameter.
    """

    name: str
    per_group: bool

    async def verdicts(
        self, example: Example, texts: Sequence[str], *, group_id: str | None = None
    ) -> list[Verdict | Exception]: ...

    def stats(self) -> JudgeStatistics: ...


@runtime_checkable
class GroupJudgeLike(Protocol):
    """What the Rewarder needs of a group judge (:class:`~engine.rewards.judges.GroupJudge`)."""

    name: str
    per_group: bool

    async def verdicts(
        self, example: Example, texts: Sequence[str], *, group_id: str | None = None
    ) -> list[Verdict]: ...

    def stats(self) -> JudgeStatistics: ...


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    """One judge with its weight; ``name`` defaults to the judge's own name.

    Attributes:
        judge: an :class:`~engine.rewards.judges.LLMJudge` or
            :class:`~engine.rewards.judges.GroupJudge` (or anything with ``name``,
            ``per_group``, ``verdicts`` and ``stats``).
        weight: weight in the combined reward.
        name: metric name (``reward/<name>``); None uses ``judge.name``.
    """

    judge: RolloutJudgeLike | GroupJudgeLike
    weight: float = 1.0
    name: str | None = None

    @property
    def key(self) -> str:
        """The metric name."""
        return self.name or self.judge.name


@dataclass(frozen=True, slots=True)
class Score:
    """The outcome of scoring one output."""

    reward: float
    """Weighted sum of the parts; NaN when any part failed."""
    parts: dict[str, float]
    """Each function's and judge's raw value, by name (NaN for a failed one)."""
    error: str | None = None
    """Which function or judge failed and why, or None."""
    feedback: str | None = None
    """Judge feedback on the output (``name: text`` per judge), a format failure's reason, or
    why judges were skipped; None when there is nothing to say."""


@dataclass(frozen=True, slots=True)
class RewardStatistics:
    """A snapshot of a :class:`Rewarder`'s counters (see :meth:`Rewarder.statistics`).

    Attributes:
        groups: ``score_group`` calls (``score`` counts as a group of one).
        scored: outputs scored (failed generations are not scored).
        failures: outputs whose reward is NaN (a function or judge failed).
        format_failures: outputs that did not parse into the signature.
        gated: outputs the gate kept from the judges.
        judge_verdicts: verdicts asked of judges (before their caches and dedupe).
        judge_calls_saved: verdicts not asked because the gate or an earlier failure decided
            the reward already (one per judge per output).
        judges: each judge's own :class:`~engine.rewards.judges.JudgeStatistics` (cache hits,
            dedupe...).
    """

    groups: int
    scored: int
    failures: int
    format_failures: int
    gated: int
    judge_verdicts: int
    judge_calls_saved: int
    judges: Mapping[str, JudgeStatistics] = field(default_factory=dict)


# ----------------------------------------------------------------------------- rewarder


@dataclass(slots=True)
class _Member:
    """Scoring state of one output of a group.

    Attributes:
        index: its position in the texts being scored.
        text: what functions and judges grade.
        sample_index: its index in its group (recorded in judge events).
        parts: each function's and judge's value so far.
        total: the weighted sum so far.
        errors: why parts failed.
        feedback: judge feedback, or why judges were skipped.
        gated: the gate kept it from the judges.
    """

    index: int
    text: str
    sample_index: int
    parts: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    errors: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    gated: bool = False


def _takes_sample_indices(judge: RolloutJudgeLike | GroupJudgeLike) -> bool:
    """Whether a per-rollout judge's ``verdicts`` takes ``sample_indices`` (read per group:
    microseconds, next to a judge's request)."""
    try:
        return "sample_indices" in inspect.signature(judge.verdicts).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


class Rewarder:
    """Combines reward functions and judges; see the module docstring.

    Args:
        functions: :class:`RewardSpec` objects or plain callables (named by ``__name__``).
        judges: :class:`JudgeSpec` objects or judges (weight 1).
        signature: parse plain-text outputs with this signature; those that fail get
            ``format_failure_reward``.
        grade_field: with a signature, functions and judges grade this output field's value
            instead of the whole text (e.g. ``generated``).
        format_failure_reward: the reward of an output that does not parse.
        gate: name of a function that gates the judges (see the module docstring).
        gate_threshold: gate values ``<=`` this fail the gate.

    Attributes:
        specs: the reward functions, in order.
        judges: the judges, in order.
        signature: the parsed signature, or None.
        grade_field: the output field graded, or None for the whole text.
        format_failure_reward: as given.
        gate: the function gating the judges, or None.
        gate_threshold: as given.

    Raises:
        ValueError: no functions and no judges, duplicate names, an unknown gate, or a
            ``grade_field`` the signature lacks.
    """

    def __init__(
        self,
        functions: Sequence[RewardSpec | Callable[[Example, str], Any]] = (),
        *,
        judges: Sequence[JudgeSpec | RolloutJudgeLike | GroupJudgeLike] = (),
        signature: Signature | Mapping[str, Any] | None = None,
        grade_field: str | None = None,
        format_failure_reward: float = 0.0,
        gate: str | None = None,
        gate_threshold: float = 0.0,
    ) -> None:
        specs: list[RewardSpec] = []
        for f in functions:
            if isinstance(f, RewardSpec):
                specs.append(f)
            elif callable(f):
                specs.append(RewardSpec(getattr(f, "__name__", f"reward{len(specs)}"), f))
            else:
                raise TypeError(f"not a reward function: {f!r}")
        jspecs: list[JudgeSpec] = []
        for j in judges:
            spec = j if isinstance(j, JudgeSpec) else JudgeSpec(j)
            if not isinstance(getattr(spec.judge, "per_group", None), bool):
                raise TypeError(f"not a judge (no boolean per_group): {spec.judge!r}")
            jspecs.append(spec)
        names = [s.name for s in specs] + [j.key for j in jspecs]
        if len(set(names)) != len(names):
            raise ValueError(f"reward function and judge names must be unique: {names}")
        if not names:
            raise ValueError("at least one reward function or judge is needed")
        if gate is not None and gate not in {s.name for s in specs}:
            raise ValueError(f"gate {gate!r} is not one of the reward functions {names}")
        if not math.isfinite(format_failure_reward):
            raise ValueError("format_failure_reward must be finite")
        self.specs = tuple(specs)
        self.judges = tuple(jspecs)
        self.signature = None if signature is None else Signature.coerce(signature)
        if grade_field is not None and (
            self.signature is None or grade_field not in self.signature.outputs
        ):
            raise ValueError(f"grade_field {grade_field!r} is not an output of the signature")
        self.grade_field = grade_field
        self.format_failure_reward = float(format_failure_reward)
        self.gate = gate
        self.gate_threshold = float(gate_threshold)
        self._groups = 0
        self._scored = 0
        self._failures = 0
        self._format_failures = 0
        self._gated = 0
        self._judge_verdicts = 0
        self._judge_calls_saved = 0

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> RewardStatistics:
        """A frozen snapshot of the counters, with each judge's own stats."""
        return RewardStatistics(
            groups=self._groups,
            scored=self._scored,
            failures=self._failures,
            format_failures=self._format_failures,
            gated=self._gated,
            judge_verdicts=self._judge_verdicts,
            judge_calls_saved=self._judge_calls_saved,
            judges=MappingProxyType({j.key: j.judge.statistics() for j in self.judges}),
        )

    # ------------------------------------------------------------------ scoring

    async def score(self, example: Example, text: str | Prediction) -> Score:
        """Score one output (a group of one: group judges see it alone)."""
        return (await self.score_group(example, [text]))[0]

    async def score_group(
        self,
        example: Example,
        texts: Sequence[str | Prediction | None],
        *,
        group_id: str | None = None,
        sample_indices: Sequence[int] | None = None,
    ) -> list[Score]:
        """Score every output of one group: functions first, then judges where they matter.

        ``None`` marks a failed generation (its Score is NaN with an error, and nothing is
        called for it). ``group_id`` is recorded in the judges' request events, and so is
        each output's index in its group: ``sample_indices[i]`` for ``texts[i]`` (None: its
        position in ``texts``).
        """
        if sample_indices is not None and len(sample_indices) != len(texts):
            raise ValueError(
                f"sample_indices has {len(sample_indices)} entries for {len(texts)} texts"
            )
        self._groups += 1
        out: list[Score | None] = [None] * len(texts)
        members = self._members(texts, sample_indices, out)
        self._scored += len(texts) - sum(1 for t in texts if t is None)
        if self.specs:  # 1. cheap functions, every member concurrently
            async with anyio.create_task_group() as tg:
                for m in members:
                    tg.start_soon(self._functions, example, m)
        eligible = self._judge_eligible(members)
        if eligible and self.judges:  # 2. judges, only where they can change the reward
            self._judge_verdicts += len(eligible) * len(self.judges)
            async with anyio.create_task_group() as tg:
                for spec in self.judges:
                    tg.start_soon(self._judge, spec, example, eligible, group_id)
        for m in members:
            out[m.index] = self._score_of(m)
        return [s for s in out if s is not None]

    def _members(
        self,
        texts: Sequence[str | Prediction | None],
        sample_indices: Sequence[int] | None,
        out: list[Score | None],
    ) -> list[_Member]:
        """The outputs to grade; failed generations and format failures get their Score in
        ``out`` at once."""
        members: list[_Member] = []
        for i, item in enumerate(texts):
            if item is None:
                out[i] = Score(math.nan, {}, "generation failed")
                continue
            graded, problem = self._graded_text(item)
            if problem is not None:
                self._format_failures += 1
                out[i] = Score(self.format_failure_reward, {}, None, f"format: {problem}")
                continue
            index = i if sample_indices is None else sample_indices[i]
            members.append(_Member(i, graded, sample_index=index))
        return members

    def _judge_eligible(self, members: list[_Member]) -> list[_Member]:
        """The members the judges grade: not failed already, and through the gate."""
        eligible: list[_Member] = []
        for m in members:
            if m.errors:
                self._judge_calls_saved += len(self.judges)
            elif self.gate is not None and m.parts[self.gate] <= self.gate_threshold:
                m.gated = True
                self._gated += 1
                self._judge_calls_saved += len(self.judges)
                if self.judges:
                    m.feedback.append(
                        f"judges skipped: gate {self.gate!r} = {m.parts[self.gate]:g}"
                    )
            else:
                eligible.append(m)
        return eligible

    def _score_of(self, m: _Member) -> Score:
        fb = "; ".join(m.feedback) or None
        if m.errors:
            self._failures += 1
            return Score(math.nan, m.parts, "; ".join(m.errors), fb)
        return Score(m.total, m.parts, None, fb)

    def _graded_text(self, item: str | Prediction) -> tuple[str, str | None]:
        """(text to grade, format problem or None)."""
        if isinstance(item, Prediction):
            if not item.ok:
                return item.raw, item.error or "the output did not parse"
            if self.grade_field is not None:
                return str(item.outputs.get(self.grade_field, item.raw)), None
            return item.raw, None
        if self.signature is None:
            return item, None
        try:
            outputs = self.signature.parse(item)
        except Exception as exc:  # OutputParseError: the policy's output is malformed
            return item, str(exc)
        if self.grade_field is not None:
            return str(outputs[self.grade_field]), None
        return item, None

    async def _functions(self, example: Example, m: _Member) -> None:
        for spec in self.specs:
            try:
                value = await self._one(spec, example, m.text)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"returned {type(value).__name__}, expected a number")
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
            except Exception as exc:  # a reward function's bug is that rollout's failure
                m.parts[spec.name] = math.nan
                m.errors.append(f"reward {spec.name!r} failed: {type(exc).__name__}: {exc}")
                continue
            m.parts[spec.name] = value
            m.total += spec.weight * value

    async def _one(self, spec: RewardSpec, example: Example, text: str) -> Any:
        fn = spec.fn
        if inspect.iscoroutinefunction(fn):
            value = await fn(example, text)
        elif spec.inline:
            value = fn(example, text)
        else:
            value = await anyio.to_thread.run_sync(fn, example, text)
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _judge(
        self, spec: JudgeSpec, example: Example, members: list[_Member], group_id: str | None
    ) -> None:
        texts = [m.text for m in members]
        results: list[Verdict | Exception]
        if spec.judge.per_group:
            try:
                results = list(await spec.judge.verdicts(example, texts, group_id=group_id))
            except Exception as exc:  # the whole group's verdict failed
                results = [exc] * len(members)
        elif _takes_sample_indices(spec.judge):
            indices = [m.sample_index for m in members]
            verdicts: Any = spec.judge.verdicts  # the protocol's optional parameter
            results = list(
                await verdicts(example, texts, group_id=group_id, sample_indices=indices)
            )
        else:
            results = list(await spec.judge.verdicts(example, texts, group_id=group_id))
        for m, r in zip(members, results, strict=True):
            if isinstance(r, Exception):
                m.parts[spec.key] = math.nan
                m.errors.append(f"judge {spec.key!r} failed: {type(r).__name__}: {r}")
                continue
            m.parts[spec.key] = r.score
            m.total += spec.weight * r.score
            if r.feedback:
                m.feedback.append(f"{spec.key}: {r.feedback}")
