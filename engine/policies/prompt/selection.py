"""Which candidates exist and which one is served: the evaluation cache, the per-example score
matrix with its Pareto front, the acceptance of proposals, and the served choice.

None of this changes the learning rule (:mod:`.policy`: group-relative advantages over
candidate choices). It decides the action set the rule learns over, and which candidate the
run hands to the user at the end:

* **Evaluation cache** (:class:`EvalCache`): a deterministic request (temperature 0) is keyed
  by ``(candidate recipe, input, decoding)``, decoding being mode, temperature, max tokens,
  stop sequences and model; its answer is kept, so a greedy re-evaluation (a rollout that
  draws the same candidate on the same example again, or a validation pass over candidates
  already scored) sends nothing. Concurrent misses of one key share one request.
* **Score matrix** (:class:`ScoreMatrix`): the greedy score of each candidate on each example
  it was evaluated on (validation examples, minibatch examples, and the training examples its
  rollouts at temperature 0 were scored on), by candidate id.
* **Pareto front** (:func:`pareto_front`): the candidates that are best on at least one
  validation example and not dominated (another as good everywhere and better somewhere).
  Growth never prunes a candidate on the front, so a candidate that is the only one to get
  some examples right survives even with a low logit.
* **Acceptance** (:meth:`Selection.accept`): a proposal is first scored on a minibatch of the
  training examples its parent does worst on; it must beat the parent's sum there (strict
  improvement, as GEPA), then it is scored on the whole validation set and enters the table.
* **The served choice** (:func:`choose_served`): the candidate with the best held-out score,
  where a candidate's held-out evidence is its validation scores plus its greedy scores on the
  training examples its prompt was not made from (its demos, the examples its reflection
  saw: ``shown``); the largest logit plays no part. Ranked by
  the posterior mean under a uniform prior, ``(sum + 1) / (n + 2)``, so 3 right of 3 does not
  beat 13 of 14; reported with the 95% Wilson interval of its mean and a paired 95% interval
  of its lead over the runner-up on the examples both were scored on; when that interval holds
  0 the choice is a coin flip and a warning says so. Only candidates scored on all of
  validation are compared (a choice with no such rival also warns: nothing was compared);
  without the ``shown`` map the choice is on validation alone. With ``validation_first`` (the
  policy's default) the validation mean ranks first and the pooled posterior only breaks its
  ties: the validation examples are the one sample every candidate is scored on alike, while
  training scores are gathered wherever the bandit and the acceptance test sent each
  candidate.
* **The race** (:meth:`Selection.race`): the served choice and its runner-up are scored on
  the examples of a pool (the training examples seen) that a rival was scored on and they
  were not, then on those neither was, skipping each one's own ``shown`` inputs, a turn at a
  time to the one with the fewest scores, within a number of calls: a paired race between
  the two candidates a coin flip cannot separate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import numpy as np

from ...endpoints.parsing import Completion
from ...errors import BudgetSpent, EngineError
from ...telemetry.logs import get_logger
from ...types import Example, Usage

if TYPE_CHECKING:
    from .candidates import Candidate


class Completer(Protocol):
    """What :class:`Selection` needs of the prompt policy: a greedy request for a candidate."""

    async def complete(
        self,
        candidate: Candidate,
        example: Example | str,
        *,
        greedy: bool = False,
        kind: str = "generation",
    ) -> Completion: ...


__all__ = (
    "Completer",
    "EvalCache",
    "ScoreFn",
    "ScoreMatrix",
    "Selection",
    "ServedChoice",
    "choose_served",
    "pareto_front",
    "wilson",
)

_log = get_logger("engine.policies.prompt")

ScoreFn = Callable[[Example, str], Awaitable[float]]
"""The score of one output for one example, in [0, 1] (the run's reward)."""

_Z95 = 1.959963984540054


class EvalCache:
    """Answers of deterministic requests by ``(recipe, input, decoding)`` (module docstring).

    Example::

        cache = EvalCache()
        comp = await cache.get_or_request(key, lambda: client.complete(...), n=4)

    Attributes:
        hits: lookups answered from the cache (no request sent).
        misses: lookups that sent a request.
        calls_saved: requests a lookup did not send: 1 per hit, plus ``n - 1`` for a miss
            that asked for ``n`` identical choices and sent one.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.calls_saved = 0
        self._answers: dict[Hashable, Completion] = {}
        self._pending: dict[Hashable, anyio.Event] = {}

    def __len__(self) -> int:
        return len(self._answers)

    async def get_or_request(
        self, key: Hashable, request: Callable[[], Awaitable[Completion]], n: int = 1
    ) -> Completion:
        """The answer for ``key`` as ``n`` identical choices: cached, or ``request()`` (asked
        for one choice) sent once and kept. A failed request is not kept (its error raises)."""
        while key in self._pending:  # another task is asking: wait for its answer
            await self._pending[key].wait()
        found = self._answers.get(key)
        if found is not None:
            self.hits += 1
            self.calls_saved += 1
            return _replicated(found, n, cached=True)
        self.misses += 1
        self.calls_saved += max(0, n - 1)
        done = anyio.Event()
        self._pending[key] = done
        try:
            comp = await request()
            if len(self._answers) < self.max_entries:
                self._answers[key] = comp
        finally:
            del self._pending[key]
            done.set()
        return _replicated(comp, n, cached=False)

    def statistics(self) -> dict[str, float]:
        """``prompt/cache_hits``, ``prompt/cache_misses``, ``prompt/cache_calls_saved``."""
        return {
            "prompt/cache_hits": float(self.hits),
            "prompt/cache_misses": float(self.misses),
            "prompt/cache_calls_saved": float(self.calls_saved),
        }


def _replicated(comp: Completion, n: int, *, cached: bool) -> Completion:
    """``comp``'s first choice ``n`` times; a cached answer cost nothing this time."""
    first = comp.choices[0]
    choices = [dataclasses.replace(first, index=i) for i in range(max(1, n))]
    return Completion(
        choices=choices,
        usage=Usage(0, 0) if cached else comp.usage,
        id=comp.id,
        model=comp.model,
        latency=0.0 if cached else comp.latency,
        attempts=0 if cached else comp.attempts,
        requests=0 if cached else comp.requests,
        request_id=comp.request_id,
        prompt_token_ids=comp.prompt_token_ids,
    )


class ScoreMatrix:
    """Greedy scores by candidate id and example key (the example's text)."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, float]] = {}

    def set(self, cid: int, key: str, score: float) -> None:
        """Record the score of candidate ``cid`` on example ``key``."""
        self._rows.setdefault(cid, {})[key] = float(score)

    def get(self, cid: int, key: str) -> float | None:
        """The score of ``cid`` on ``key``, or None when it was not evaluated there."""
        return self._rows.get(cid, {}).get(key)

    def scores_of(self, cid: int) -> dict[str, float]:
        """Every score of ``cid``, by example key (a copy)."""
        return dict(self._rows.get(cid, {}))

    def row(self, cid: int, keys: Sequence[str]) -> np.ndarray | None:
        """(len(keys),) the scores of ``cid`` on ``keys``, None unless it has them all."""
        r = self._rows.get(cid, {})
        if not all(k in r for k in keys):
            return None
        return np.array([r[k] for k in keys], dtype=np.float64)

    def complete(self, keys: Sequence[str]) -> list[int]:
        """The candidates scored on every one of ``keys``, by id."""
        return sorted(c for c in self._rows if self.row(c, keys) is not None)

    def to_json(self) -> dict[str, dict[str, float]]:
        """Plain JSON data."""
        return {str(c): dict(sorted(r.items())) for c, r in sorted(self._rows.items())}

    def load(self, obj: Any) -> None:
        """Inverse of :meth:`to_json` (scores that are not numbers are dropped)."""
        self._rows = {}
        if not isinstance(obj, dict):
            return
        for c, r in obj.items():
            if isinstance(r, dict):
                for k, v in r.items():
                    if isinstance(v, int | float) and math.isfinite(v):
                        self.set(int(c), str(k), float(v))


def pareto_front(matrix: ScoreMatrix, cids: Iterable[int], keys: Sequence[str]) -> set[int]:
    """The candidates of ``cids`` (those scored on all ``keys``) that are best on at least one
    example and dominated by no other (module docstring)."""
    rows = {c: r for c in cids if (r := matrix.row(c, keys)) is not None}
    if not rows or not keys:
        return set()
    ids = sorted(rows)
    m = np.stack([rows[c] for c in ids])  # (C, E)
    best = m.max(axis=0)  # (E,)
    winners = [i for i in range(len(ids)) if np.any(m[i] >= best)]
    front: set[int] = set()
    for i in winners:
        dominated = any(j != i and np.all(m[j] >= m[i]) and np.any(m[j] > m[i]) for j in winners)
        if not dominated:
            front.add(ids[i])
    return front


def wilson(mean: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a mean of ``n`` scores in [0, 1]."""
    if n <= 0:
        return (0.0, 1.0)
    z2 = _Z95 * _Z95
    centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(max(0.0, mean * (1 - mean) / n + z2 / (4 * n * n))) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class ServedChoice:
    """The candidate a run serves and how sure the choice is.

    Attributes:
        candidate: the served candidate's id.
        score: its mean validation score.
        low, high: the 95% Wilson interval of that mean.
        n: validation examples it was scored on.
        runner_up: the next best candidate's id (None when it had no rival).
        lead_low, lead_high: the paired 95% interval of its lead over the runner-up.
        coin_flip: whether that interval holds 0 (the data cannot tell the two apart).
        candidates: how many candidates were compared.
        validation: its mean on the validation examples alone (its score is that when the
            choice is made on validation only).
        tiebreak, tiebreak_n: chosen validation first, its mean on the pooled held-out
            evidence that breaks validation ties, and how many examples that is.
        tied: chosen validation first, whether it and the runner-up tie on validation (the
            pooled evidence decided).
        unscored: the candidates asked about that were not scored on all of validation (not
            compared); with ``candidates == 1`` the choice is *unrivalled*.
    """

    candidate: int
    score: float
    low: float
    high: float
    n: int
    runner_up: int | None = None
    lead_low: float = math.nan
    lead_high: float = math.nan
    coin_flip: bool = False
    candidates: int = 1
    validation: float = math.nan
    tiebreak: float = math.nan
    tiebreak_n: int = 0
    tied: bool = False
    unscored: int = 0

    @property
    def unrivalled(self) -> bool:
        """Whether other candidates exist but none was scored on all of validation, so
        nothing was compared."""
        return self.candidates == 1 and self.unscored > 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (NaN as None)."""
        out: dict[str, Any] = {}
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            out[f] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out


def _evidence(
    matrix: ScoreMatrix,
    cid: int,
    keys: Sequence[str],
    shown: Mapping[int, Collection[str]] | None,
) -> dict[str, float]:
    """The scores a candidate is judged on: its whole validation row (none unless complete);
    with ``shown``, also every greedy score of training examples its prompt was not made from
    (its demos, :attr:`Candidate.seen`)."""
    row = matrix.scores_of(cid)
    if shown is None:
        return {k: row[k] for k in keys} if all(k in row for k in keys) else {}
    if not all(k in row for k in keys):
        return {}
    hidden = shown.get(cid, ())
    return {k: v for k, v in row.items() if k not in hidden}


def choose_served(
    matrix: ScoreMatrix,
    cids: Iterable[int],
    keys: Sequence[str],
    base_id: int,
    shown: Mapping[int, Collection[str]] | None = None,
    *,
    validation_first: bool = False,
) -> ServedChoice | None:
    """The best candidate of ``cids`` (module docstring); None when none has any evidence.

    Without ``shown``: the best mean on the validation ``keys`` among the candidates scored on
    all of them. With ``shown`` (candidate id -> the inputs of its demos): the best mean over
    each candidate's held-out evidence, its validation scores and its greedy scores on training
    examples it was never shown. Ranked by the posterior mean under a uniform prior,
    ``(sum + 1) / (n + 2)``, so little evidence is not a win; ties: the base prompt, then more
    evidence, then the earliest. The lead over the runner-up
    is paired on the examples both were scored on (a coin flip with fewer than two).

    With ``validation_first`` (and ``shown``): ranked by the validation mean first, the pooled
    posterior mean only breaking its ties; the score, its interval and the lead are then those
    on validation, and ``tiebreak`` / ``tiebreak_n`` hold the pooled evidence."""
    ids = list(cids)
    ev = {c: e for c in ids if (e := _evidence(matrix, c, keys, shown))}
    if not ev or (shown is None and not keys):
        return None
    unscored = len(set(ids)) - len(ev)
    first = validation_first and shown is not None and bool(keys)
    means = {c: float(np.mean(list(e.values()))) for c, e in ev.items()}
    # ranked by the posterior mean under a uniform prior, (sum + 1) / (n + 2): a candidate
    # right on 3 of 3 examples does not beat one right on 13 of 14
    rank = {c: (sum(e.values()) + 1.0) / (len(e) + 2.0) for c, e in ev.items()}
    val = {c: sum(e[k] for k in keys) for c, e in ev.items()} if first else dict.fromkeys(ev, 0.0)
    order = sorted(ev, key=lambda c: (-val[c], -rank[c], c != base_id, -len(ev[c]), c))
    best = order[0]
    judged = {c: {k: ev[c][k] for k in keys} for c in order[:2]} if first else ev
    score = float(np.mean(list(judged[best].values())))
    n = len(judged[best])
    extra: dict[str, Any] = {"tiebreak": means[best], "tiebreak_n": len(ev[best])} if first else {}
    validation = float(np.mean([ev[best][k] for k in keys])) if keys else math.nan
    low, high = wilson(score, n)
    if len(order) == 1:
        return ServedChoice(best, score, low, high, n, validation=validation,
                            unscored=unscored, **extra)  # fmt: skip
    second = order[1]
    common = [k for k in judged[best] if k in judged[second]]
    d = np.array([judged[best][k] - judged[second][k] for k in common])  # (E,) paired
    if d.size >= 2:
        half = _Z95 * float(d.std(ddof=1)) / math.sqrt(d.size)
        lead_low, lead_high = float(d.mean()) - half, float(d.mean()) + half
    else:
        lead_low, lead_high = -math.inf, math.inf
    return ServedChoice(
        best,
        score,
        low,
        high,
        n,
        runner_up=second,
        lead_low=lead_low,
        lead_high=lead_high,
        coin_flip=not lead_low > 0,
        candidates=len(order),
        validation=validation,
        tied=first and val[best] == val[second],
        unscored=unscored,
        **extra,
    )


class Selection:
    """The policy's evaluation on examples: greedy scores into the matrix, the acceptance of
    proposals and the served choice (module docstring).

    Args:
        score: the run's reward of one output, in [0, 1].
        validation: the examples the served choice and the Pareto front are made on.
        minibatch: training examples a proposal is tried on first.

    Attributes:
        matrix: the score matrix.
        calls: greedy evaluations asked for (cached or not).
        failures: evaluations whose request or score failed (scored 0, not kept).
        accepted, rejected: proposals that passed / failed the minibatch test.
        raced: evaluations asked for by :meth:`race`.
        stopped: a request was refused for a spent budget: no further evaluation is sent.
    """

    def __init__(
        self, score: ScoreFn, validation: Sequence[Example], *, minibatch: int = 4
    ) -> None:
        self.score = score
        self.validation = list(validation)
        self.keys = list(dict.fromkeys(ex.text for ex in self.validation))
        self.minibatch = minibatch
        self.matrix = ScoreMatrix()
        self.calls = 0
        self.failures = 0
        self.accepted = 0
        self.rejected = 0
        self.stopped = False
        self.raced = 0
        self.last_served: ServedChoice | None = None

    async def evaluate(
        self, policy: Completer, cand: Candidate, examples: Sequence[Example]
    ) -> np.ndarray:
        """(len(examples),) greedy scores of ``cand`` (from the matrix where known), at most
        four requests at once, of kind ``selection``. A failed request scores 0 and is not
        recorded."""
        out = np.zeros(len(examples))
        limiter = anyio.CapacityLimiter(4)

        async def one(i: int, ex: Example) -> None:
            known = self.matrix.get(cand.id, ex.text)
            if known is not None:
                out[i] = known
                return
            async with limiter:
                if self.stopped:
                    return
                self.calls += 1
                try:
                    comp = await policy.complete(cand, ex, greedy=True, kind="selection")
                    s = float(await self.score(ex, comp.choices[0].text))
                except BudgetSpent:
                    self.stopped = True
                    return
                except EngineError as exc:
                    self.failures += 1
                    _log.warning("prompt.eval_failed", candidate=cand.id, error=str(exc))
                    return
                if not math.isfinite(s):
                    self.failures += 1
                    return
            out[i] = s
            self.matrix.set(cand.id, ex.text, s)

        async with anyio.create_task_group() as tg:
            for i, ex in enumerate(examples):
                tg.start_soon(one, i, ex)
        return out

    async def accept(
        self,
        policy: Completer,
        child: Candidate,
        parent: Candidate,
        minibatch: Sequence[Example],
        *,
        ties: bool = False,
    ) -> bool:
        """Whether ``child`` beats ``parent`` on ``minibatch`` (strictly, by the sum of greedy
        scores; with ``ties``, matching it is enough); if so it is also scored on the whole
        validation set."""
        if not minibatch:
            return False
        p = await self.evaluate(policy, parent, minibatch)
        c = await self.evaluate(policy, child, minibatch)
        ok = float(c.sum()) > float(p.sum()) or (ties and float(c.sum()) >= float(p.sum()))
        if ok:
            self.accepted += 1
            await self.evaluate(policy, child, self.validation)
        else:
            self.rejected += 1
        _log.info("prompt.accept", child=child.id, parent=parent.id, accepted=ok,
                  child_sum=float(c.sum()), parent_sum=float(p.sum()))  # fmt: skip
        return ok

    async def race(
        self,
        policy: Completer,
        contenders: Sequence[Candidate],
        pool: Sequence[Example],
        calls: int,
    ) -> int:
        """Score ``contenders`` (the served choice and its runner-up) on the ``pool`` examples
        each has no score on and was not made from (:attr:`Candidate.shown`), those a rival
        was scored on first (so the comparison is paired), each turn to the contender with the
        fewest scores, at most ``calls`` evaluations in all; returns how many were asked."""
        if calls <= 0 or self.stopped or len(contenders) < 2:
            return 0
        queues: list[list[Example]] = []
        for c in contenders:
            mine, shown = self.matrix.scores_of(c.id), c.shown
            rivals = [o for o in contenders if o.id != c.id]
            scored = {k for o in rivals for k in self.matrix.scores_of(o.id)}
            hidden = {k for o in rivals for k in o.shown}
            fresh = {ex.text: ex for ex in pool if ex.text not in mine and ex.text not in shown}
            todo = list(fresh.values())
            todo.sort(key=lambda ex: (ex.text not in scored, ex.text in hidden))
            queues.append(todo)
        plan: list[list[Example]] = [[] for _ in contenders]
        held = [len(self.matrix.scores_of(c.id)) for c in contenders]
        asked = 0
        while asked < calls and any(queues):  # each turn to the one with the least evidence
            i = min((j for j, q in enumerate(queues) if q), key=lambda j: held[j])
            plan[i].append(queues[i].pop(0))
            held[i] += 1
            asked += 1
        for c, exs in zip(contenders, plan, strict=True):
            if exs:
                await self.evaluate(policy, c, exs)
        self.raced += asked
        return asked

    def front(self, cids: Iterable[int]) -> set[int]:
        """The validation Pareto front among ``cids``."""
        return pareto_front(self.matrix, cids, self.keys)

    def served(
        self,
        cids: Iterable[int],
        base_id: int,
        shown: Mapping[int, Collection[str]] | None = None,
        *,
        validation_first: bool = False,
    ) -> ServedChoice | None:
        """The served choice among ``cids`` (:func:`choose_served`); warns once per new
        choice that is a coin flip (``prompt.served_coin_flip``) or that had no rival, when
        other candidates exist but none was scored on all of validation
        (``prompt.served_unrivalled``: nothing was compared)."""
        choice = choose_served(
            self.matrix, cids, self.keys, base_id, shown, validation_first=validation_first
        )
        if choice is not None and choice != self.last_served:
            if choice.coin_flip:
                _log.warning("prompt.served_coin_flip", candidate=choice.candidate,
                             score=choice.score, runner_up=choice.runner_up,
                             lead_low=choice.lead_low, lead_high=choice.lead_high,
                             n=choice.n)  # fmt: skip
            elif choice.unrivalled:
                _log.warning("prompt.served_unrivalled", candidate=choice.candidate,
                             score=choice.score, n=choice.n,
                             not_validated=choice.unscored)  # fmt: skip
        self.last_served = choice
        return choice

    def statistics(self) -> dict[str, float]:
        """Counters as step metrics."""
        out = {
            "prompt/eval_calls": float(self.calls),
            "prompt/eval_failures": float(self.failures),
            "prompt/accepted": float(self.accepted),
            "prompt/rejected": float(self.rejected),
            "prompt/raced": float(self.raced),
        }
        s = self.last_served
        if s is not None:
            out["prompt/served_candidate"] = float(s.candidate)
            out["prompt/served_score"] = s.score
            out["prompt/served_coin_flip"] = float(s.coin_flip)
        return out
