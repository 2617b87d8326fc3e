"""The prompt policy: GRPO over prompt candidates, for models whose weights we cannot touch.

A hosted model (OpenRouter, OpenAI) or a served one (llama.cpp, vLLM) is a fixed function
``prompt -> completion distribution``. What we own, and train, is the choice of prompt.

**The policy.** A *candidate* (:mod:`.candidates`) is a prompt recipe: an instruction, a
few-shot demo set and optionally a sampling temperature. The parameters are one logit per
candidate slot, ``theta`` of shape ``(K,)`` with ``K = max_candidates``, and the policy is::

    pi_theta(c)       = softmax(theta[live])[c]                 # over live candidates only
    pi_theta(y | x)   = sum_c pi_theta(c) * p_model(y | render(c, x))

A rollout samples ``c ~ pi_theta`` (with the generator the trainer passes, so runs are
reproducible), renders ``c`` with the example's input (:mod:`.rendering`), and asks the
endpoint for a completion. Rollouts of one group that drew the same candidate share one request
with ``n = k`` (the client fans out where the server ignores ``n``).

**GRPO over prompt candidates.** The candidate choice is the only action whose probability we
control and can differentiate, so it is this policy's single action per rollout:
``Sample.logprobs`` is ``[log pi_old(c)]`` (the behaviour probability under the snapshot that
generated it) and ``Sample.choice`` is the candidate's id. The loss is the shared GRPO
objective (:mod:`engine.policies.objective`) over these actions, with ``ref`` the initial
candidate distribution and the entropy that of the whole candidate distribution, once per
mini-batch. The gradient with respect to the logits is exact and analytic
(``d log pi(c) / d theta_k = 1[k = c] - pi_k`` on live slots, 0 elsewhere).

How this departs from token-level GRPO (:mod:`engine.policies.tinylm`):

* one action per rollout, not one per completion token: the completion's own tokens are
  sampled by a model we do not train, so their log-probabilities are constants of the
  objective (kept for export only, see :class:`~.sampling.PromptSample`); the ``loss_type``
  aggregations (grpo / dapo / dr_grpo) coincide, since every "sequence" has length 1;
* the action space grows: new candidates appear (:mod:`.growth`), so ``pi_theta`` at update
  time may have more or fewer actions than the snapshot that generated a rollout. A rollout
  whose candidate was pruned since is excluded from the loss (counted as
  ``prompt/excluded_rollouts``); newly added candidates take their share of probability mass,
  which the ratio sees as a policy change like any other;
* this is a policy over a finite set of prompts, so what it can learn is bounded by the
  candidates it has: GRPO here is a bandit learner with group-relative baselines, and the
  candidate growth is what lets it find prompts it was not given.

**What decides which candidates exist, and which is served** (:mod:`.selection`; none of it
touches the update above, which stays the bandit with group baselines):

* an *evaluation cache* keyed by (candidate, input, decoding): a deterministic request
  (temperature 0: ``greedy``, or an endpoint or candidate temperature of 0) is sent once and
  its answer reused, so rollouts that draw the same candidate on the same example again and
  every greedy re-evaluation cost no call (``prompt/cache_hits``, ``prompt/cache_calls_saved``);
* with a validation set (:meth:`PromptPolicy.attach_selection`; the trainer attaches its
  held-out examples and its reward unless ``prompt.select_served = false``), a *per-example score
  matrix*: the greedy validation scores of the most probable candidate after every update and
  of every accepted proposal (the cache makes a candidate already scored free), and the greedy
  rewards of rollouts at temperature 0 on the training examples;
* *acceptance*: a proposed candidate must beat its parent on a minibatch of the training
  examples the parent does worst on (``prompt.minibatch``), then is scored on validation, before
  it takes a slot; a rejected one never enters the action set;
* *Pareto retention*: pruning never retires a candidate on the validation Pareto front (best
  on some validation example, dominated by none);
* *new demo sets from failures*: the demo proposal is made of training examples the parent
  got wrong, with their reference answers (the top-rewarded outputs only where there are no
  references), and its minibatch excludes those examples;
* *merges* (``prompt.merge_demos > 0``): a third proposal per round, the parent's
  instruction with its demos joined by those of the most probable other candidate whose demos
  differ (a larger few-shot set, GEPA's merge of two lineages); it is accepted when it does at
  least as well as its parent on its minibatch (as GEPA accepts a merge that matches its
  parents), then scored on validation like any accepted proposal;
* *the served prompt* (:meth:`PromptPolicy.served`, on by default: ``prompt.select_served``):
  among the candidates scored on all of validation, the one with the best held-out score,
  ranked by the posterior mean ``(sum + 1) / (n + 2)`` (not by the largest logit), with its
  95% interval and the paired interval of its lead over the runner-up; a warning
  (``prompt.served_coin_flip``) when that lead's interval holds 0, and one
  (``prompt.served_unrivalled``) when no other candidate was scored on all of validation.
  Its evidence (``prompt.served_evidence``): by default ``validation_first``, the validation
  mean decides and the *pooled* evidence breaks its ties; ``pooled`` ranks on the validation
  scores plus the greedy scores on training examples its prompt was not made from (never its
  own demos, never the examples its reflection was written from:
  :attr:`~.candidates.Candidate.seen`);
  ``validation`` uses the validation scores alone. Validation decides first because it is
  the one sample every candidate is scored on alike: the training scores are gathered where
  the bandit and the acceptance test sent each candidate, and in bench_prompt ranking on them
  served worse prompts than validation did (``benchmarks/README.md``); but 12 validation
  answers tie often, and the training evidence separates those ties;
* *the race* (``prompt.race_calls`` evaluations per update, not with ``validation``): while the
  served choice is a coin flip (with ``validation_first``: a tie on validation, which only
  training evidence can break), it and its runner-up are scored on the training examples the
  other was scored on (then on those neither was), the one with less evidence first, so the
  calls go to separating the two candidates that matter and the comparison is paired. The
  greedy evaluation (``eval/reward``) decodes the served candidate, so it measures what is
  served; :meth:`PromptPolicy.served_report` says which was served and why (the summary's
  ``served``, ``served_prompt.json``). Without a validation set, or with
  ``select_served = false``, it is the most probable candidate, as before.

Growth (:class:`~.growth.CandidateGrowth`) runs in :meth:`PromptPolicy.after_update`, in the
learner's task, never concurrently with an update; it resets the optimizer moments of a reused
slot itself. The learner publishes snapshot ``V`` *before* the hook runs, so changes made
after update ``V`` take effect from version ``V + 1``. A retired slot is reused only once no
snapshot that could be re-created (the current version's, on resume) still shows it. Runs stay
reproducible and resumable bit for bit.

State (:meth:`PromptPolicy.state`) is data: the logits, slot ids/born/died and reference logits
as arrays; candidate texts, per-candidate statistics and the recent-rollout buffer as JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import numpy as np

from ...config.sections import EndpointConfig, GRPOConfig, PromptPolicyConfig, RunConfig
from ...data.jsonl import read_jsonl
from ...data.sampler import is_heldout, take
from ...errors import CheckpointError, EngineError
from ...types import Example, Group, Rollout, Sample
from ..arrays import ArrayPolicy
from ..base import CompletionClient, PolicySnapshot
from ..episodes import EpisodeOpening
from ..objective import grpo_objective
from .candidates import (
    Candidate,
    CandidateStatistics,
    CandidateTable,
    Demo,
    Recipe,
    make_demo_sets,
)
from .growth import CandidateGrowth, GrowthSlots
from .rendering import PromptFormat, messages_text, render_completion, render_messages
from .sampling import PromptSample, samples_of
from .selection import EvalCache, ScoreFn, Selection, ServedChoice

if TYPE_CHECKING:
    from ...endpoints.parsing import Completion

__all__ = ("PromptPolicy",)

_STATE_FORMAT = 1
_DEFAULT_FORMAT = PromptFormat()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _seed_recipes(
    instructions: list[str],
    demo_sets: list[tuple[Demo, ...]],
    temperatures: Sequence[float],
) -> list[Recipe]:
    """Every instruction x demo set x temperature; the base prompt (the first instruction),
    zero-shot, at the endpoint's temperature, first."""
    temps: list[float | None] = list(temperatures) or [None]
    recipes = [(i, d, t) for d in demo_sets for i in instructions for t in temps]
    recipes.sort(key=lambda r: (r[0] != instructions[0] or r[1] != (), r[1] != ()))
    return recipes


class PromptPolicy(ArrayPolicy):
    """GRPO over prompt candidates for any chat/completions endpoint; see the module docstring.

    Example::

        async with Client(endpoint, limits=limits) as client:
            policy = PromptPolicy(client, PromptPolicyConfig(max_candidates=8),
                                  endpoint=endpoint,
                                  instructions=["Classify the sentiment.",
                                                "Answer positive or negative."],
                                  demo_pool=train_examples, seed=0)
            samples = await policy.generate(policy.snapshot(0), example, n=8,
                                            rng=np.random.default_rng(0))

    Args:
        client: the endpoint client (:class:`engine.endpoints.client.Client`); may be set
            later with :attr:`client` (generation then fails per sample, recorded, until it is).
        prompt: ``max_candidates`` (K, the parameter size), ``max_demos``, ``propose_every``
            and the seed ``instructions`` (used when ``instructions`` is not given).
        endpoint: the endpoint config: ``mode`` (chat or completions) and ``stop``.
        instructions: seed instructions; the first is the base prompt, always candidate 0
            (zero-shot).
        demo_pool: examples with targets to draw seed demo sets from (keep held-out
            examples out of it).
        seed: seeds the demo sets.
        n_demo_sets: seed demo sets drawn from ``demo_pool`` (besides zero-shot).
        temperatures: optional sampling temperatures as a third candidate axis.
        fmt: the completions-mode prompt format.
        proposer: a client for reflection calls (e.g. a stronger model); default ``client``.
        proposer_mode: request shape of reflection calls; default the endpoint's mode.
        candidates: explicit seed candidates (instruction, demos, temperature), replacing the
            product of ``instructions`` x demo sets x ``temperatures``.

    Attributes:
        client: the generation endpoint.
        proposer: the reflection endpoint; None uses ``client``.
        headroom: free slots kept for the next growth round (one per proposal kind).
        version: the latest published version this policy knows of.
        params: ``{"logits": (K,)}``, the trainable logits.
        table: the candidates and their slots.
        base_id: the base prompt's candidate (never pruned).

    Raises:
        ValueError: no instructions, or an unusable setting.
    """

    name = "prompt"
    embedded = False

    def __init__(
        self,
        client: CompletionClient | None,
        prompt: PromptPolicyConfig,
        *,
        endpoint: EndpointConfig | None = None,
        instructions: Sequence[str] | None = None,
        demo_pool: Sequence[Example] = (),
        seed: int = 0,
        n_demo_sets: int = 2,
        temperatures: Sequence[float] = (),
        fmt: PromptFormat = _DEFAULT_FORMAT,
        proposer: CompletionClient | None = None,
        proposer_mode: Literal["chat", "completions"] | None = None,
        candidates: Sequence[tuple[str, Sequence[Demo], float | None]] | None = None,
    ) -> None:
        endpoint = endpoint or EndpointConfig()
        instr = list(prompt.instructions if instructions is None else instructions)
        if candidates is None and not instr:
            raise ValueError("the prompt policy needs at least the base prompt (instructions[0])")
        if prompt.max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        self.client = client
        self.proposer = proposer
        self.prompt = prompt
        self.endpoint = endpoint
        self.mode: Literal["chat", "completions"] = endpoint.mode
        self.proposer_mode = proposer_mode or endpoint.mode
        self.fmt = fmt
        self.seed = seed
        k = prompt.max_candidates
        kinds = 3 if prompt.merge_demos > 0 else 2  # reflection, demos (, merge)
        self.headroom = min(kinds, k - 1) if prompt.propose_every > 0 else 0
        self.version = 0
        self.params: dict[str, np.ndarray] = {"logits": np.zeros(k)}
        self._ref = np.zeros(k)
        """(K,) reference logits (the initial distribution)."""
        self.table = CandidateTable(k)
        self.growth = CandidateGrowth(
            prompt, headroom=self.headroom, proposer_mode=self.proposer_mode, seed=seed
        )
        if candidates is None:
            demo_sets: list[tuple[Demo, ...]] = [()]
            demo_sets += make_demo_sets(
                demo_pool, n_demo_sets, prompt.max_demos, np.random.default_rng([seed, 0xDE305])
            )
            recipes = _seed_recipes(instr, demo_sets, temperatures)
        else:
            recipes = [(i, tuple(d), t) for i, d, t in candidates]
        self._seed_slots(recipes)
        self.base_id = int(self.table.ids[0])
        self.cache = EvalCache()
        self.selection: Selection | None = None
        self._served_id: int | None = None
        """The served candidate restored from a checkpoint (used without a selection)."""

    def attach_selection(self, score: ScoreFn, validation: Sequence[Example]) -> Selection | None:
        """Score candidates on ``validation`` with ``score`` (output -> [0, 1]) to accept
        proposals, keep the Pareto front and choose the served prompt (module docstring).
        Nothing is attached without validation examples or with ``prompt.select_served``
        off; returns the selection, or None."""
        if not validation or not self.prompt.select_served:
            return None
        self.selection = Selection(score, validation, minibatch=self.prompt.minibatch)
        return self.selection

    def served_choice(self) -> ServedChoice | None:
        """The served choice among every candidate scored on all of validation (live or
        retired), judged on the held-out (validation) examples only, with its interval; None
        without a selection or before any was scored."""
        if self.selection is None:
            return None
        shown = None
        if self.prompt.served_evidence != "validation":
            shown = {c.id: c.shown for c in self.table.registry.values()}
        first = self.prompt.served_evidence == "validation_first"
        return self.selection.served(
            self.table.registry, self.base_id, shown, validation_first=first
        )

    def served(self) -> Candidate:
        """The prompt to serve: the best on validation (:meth:`served_choice`), else the most
        probable live candidate."""
        choice = self.served_choice()
        if choice is not None:
            return self.table.registry[choice.candidate]
        if self._served_id is not None and self._served_id in self.table.registry:
            return self.table.registry[self._served_id]
        return self.best()

    def served_report(self) -> dict[str, Any]:
        """Which candidate is served and why, as plain JSON data: ``candidate``, ``by``
        (``validation``, ``checkpoint`` or ``most_probable``), ``reason`` (one sentence for
        the user) and, chosen on validation, the choice's score, interval and coin-flip flag
        (:meth:`ServedChoice.to_json`)."""
        choice = self.served_choice()
        if choice is not None:
            c = choice
            where = ("validation and unseen training" if self.prompt.served_evidence == "pooled"
                     else "validation")  # fmt: skip
            reason = (
                f"best mean held-out score {c.score:.3f} (95% interval [{c.low:.2f}, "
                f"{c.high:.2f}], {c.n} {where} examples; validation alone {c.validation:.3f}) "
                f"of {c.candidates} scored candidates"
            )
            if c.tied:
                reason += (
                    f"; tied on validation with candidate {c.runner_up}, ahead on the pooled "
                    f"held-out evidence ({c.tiebreak:.3f} on {c.tiebreak_n} examples)"
                )
            if c.coin_flip and c.runner_up is not None:
                reason += (
                    f"; a coin flip: its lead over candidate {c.runner_up} is within "
                    f"[{c.lead_low:.2f}, {c.lead_high:.2f}], which holds 0"
                )
            if c.unrivalled:
                reason += (
                    f"; unrivalled: none of the other {c.unscored} candidates was scored on "
                    "all of validation, so nothing was compared"
                )
            return {"candidate": c.candidate, "by": "validation", "reason": reason,
                    **{k: v for k, v in c.to_json().items() if k != "candidate"}}  # fmt: skip
        if self._served_id is not None and self._served_id in self.table.registry:
            return {"candidate": self._served_id, "by": "checkpoint",
                    "reason": "the served candidate saved in the checkpoint"}  # fmt: skip
        why = ("prompt.select_served is off" if not self.prompt.select_served
               else "no held-out examples were scored")  # fmt: skip
        return {"candidate": self.best().id, "by": "most_probable",
                "reason": f"the most probable candidate ({why})"}  # fmt: skip

    def deterministic(self, candidate: Candidate, *, greedy: bool = False) -> bool:
        """Whether requests for ``candidate`` are decoded at temperature 0 (cacheable)."""
        if greedy:
            return True
        t = candidate.temperature
        return (self.endpoint.temperature if t is None else t) == 0.0

    def _seed_slots(self, recipes: Sequence[Recipe]) -> None:
        """The distinct seed recipes, in order, in the first slots (born at version 0)."""
        seen: set[Recipe] = set()
        k = self.prompt.max_candidates
        limit = k - self.headroom if self.prompt.propose_every > 0 else k
        for ins, demos, temp in recipes:
            if len(seen) >= max(1, limit):
                break
            key = (ins, tuple(demos), temp)
            if key in seen:
                continue
            seen.add(key)
            cand = self.table.new_candidate(key, "seed", None)
            self.table.place(len(seen) - 1, cand, born=0)

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        client: CompletionClient | None,
        *,
        examples: Sequence[Example] | None = None,
        separate_heldout: bool | None = None,
        instructions: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> PromptPolicy:
        """The policy of a run config: ``config.prompt``, ``config.endpoint``, ``config.seed``.

        Seed demos come from ``examples`` (default: the first 1024 lines of ``data.train``),
        minus the examples the trainer will hold out for evaluation (the seeded hash split),
        unless the held-out set is separate (``separate_heldout``; default: ``data.eval`` is
        set). Other ``kwargs`` go to the constructor.
        """
        data = config.data
        pool = list(examples) if examples is not None else []
        if examples is None and data.train:
            pool = take(read_jsonl(data.train), 1024)
        if separate_heldout is None:
            separate_heldout = bool(data.eval)
        if not separate_heldout and data.eval_fraction > 0:
            pool = [ex for ex in pool if not is_heldout(ex, data.eval_fraction, config.seed)]
        return cls(
            client,
            config.prompt,
            endpoint=config.endpoint,
            instructions=instructions,
            demo_pool=pool,
            seed=config.seed,
            **kwargs,
        )

    # ------------------------------------------------------------------ candidates

    def candidate(self, cid: int) -> Candidate:
        """The candidate with id ``cid`` (also retired ones)."""
        return self.table.registry[cid]

    def probabilities(self) -> list[tuple[Candidate, float]]:
        """Live candidates with their current probability, most probable first."""
        live = np.flatnonzero(self.table.live())
        p = np.exp(_log_softmax(self.params["logits"][live]))
        out = [(self.table.at(s), float(q)) for s, q in zip(live, p, strict=True)]
        return sorted(out, key=lambda cp: (-cp[1], cp[0].id))

    def best(self) -> Candidate:
        """The most probable live candidate (the base prompt on ties)."""
        return self.table.most_probable(self.params["logits"])

    def candidate_statistics(self, cid: int) -> CandidateStatistics:
        """The scored rollouts of candidate ``cid`` since training began."""
        return self.table.statistics.get(cid, CandidateStatistics())

    def render(self, candidate: Candidate, example: Example | str) -> str | list[dict[str, str]]:
        """The request for ``example`` under ``candidate`` in this policy's mode."""
        if self.mode == "chat":
            return render_messages(candidate, example)
        return render_completion(candidate, example, self.fmt)

    def choose(self, rng: np.random.Generator | None = None) -> Candidate:
        """A live candidate: the most probable one, or one drawn from the policy with ``rng``."""
        if rng is None:
            return self.best()
        probs = self.probabilities()
        p = np.array([q for _, q in probs])
        return probs[int(rng.choice(len(probs), p=p / p.sum()))][0]

    # ------------------------------------------------------------------ parameters

    def parameters(self) -> dict[str, np.ndarray]:
        """``{"logits": (K,)}``, updated in place by the optimizer; the shape never changes."""
        return self.params

    def snapshot(self, version: int) -> PolicySnapshot:
        """Read-only ``logits`` (K,), ``ids`` (K,) and ``visible`` (K,) as of ``version``."""
        arrays = {
            "logits": np.array(self.params["logits"], dtype=np.float64),
            "ids": self.table.ids.copy(),
            "visible": self.table.visible(version),
        }
        for a in arrays.values():
            a.setflags(write=False)
        return PolicySnapshot(version=version, params=MappingProxyType(arrays))

    def live_snapshot(self) -> PolicySnapshot:
        """A snapshot of the policy as it is now (candidates added by growth included)."""
        snap = self.snapshot(self.version)
        params = dict(snap.params)
        visible = self.table.live()
        visible.setflags(write=False)
        params["visible"] = visible
        return PolicySnapshot(version=self.version, params=MappingProxyType(params))

    def shard_state(self, snapshot: PolicySnapshot) -> dict[int, Candidate]:
        """What a rollout shard needs besides ``snapshot`` to generate with it: the candidates
        its visible slots show, by id (see :meth:`adopt_shard_state`)."""
        ids = np.asarray(snapshot.params["ids"])
        slots = np.flatnonzero(np.asarray(snapshot.params["visible"]))
        return {int(ids[s]): self.table.registry[int(ids[s])] for s in slots}

    def adopt_shard_state(self, state: Mapping[int, Candidate]) -> None:
        """In a rollout shard: take the driver's candidates (:meth:`shard_state`) into this
        copy's registry, so a snapshot of the driver's policy renders as it does there."""
        for cid, cand in state.items():
            if not isinstance(cand, Candidate) or cand.id != int(cid):
                raise TypeError(f"shard state: candidate {cid!r} is not a Candidate of that id")
            self.table.registry[cand.id] = cand

    # ------------------------------------------------------------------ generation

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """Draw a candidate per rollout from ``snapshot`` and complete its rendered prompt.

        ``greedy``: the served candidate (:meth:`served_choice`: the best on the held-out
        examples, so ``eval/reward`` measures what is served) or, without a served choice, the
        snapshot's most probable one, at temperature 0, one request, its sample repeated ``n``
        times. Failed requests give samples carrying ``error``; this method raises only on
        cancellation or programming errors.
        """
        logits = np.asarray(snapshot.params["logits"])
        ids = np.asarray(snapshot.params["ids"])
        slots = np.flatnonzero(np.asarray(snapshot.params["visible"]))  # (M,)
        if slots.size == 0:
            raise ValueError("the snapshot shows no candidate")
        logp = _log_softmax(logits[slots])  # (M,)
        if greedy and (choice := self.served_choice()) is not None:
            return await self._generate_served(choice.candidate, slots, ids, logp, example, n,
                                               snapshot.version)  # fmt: skip
        if greedy:
            picks = np.full(n, int(np.argmax(logp)))
        else:
            picks = rng.choice(slots.size, size=n, p=np.exp(logp))
        seed = int(rng.integers(0, 2**31 - 1 - 1000 * max(n, 1)))
        by_pick: dict[int, list[int]] = {}  # position in slots -> rollout indices
        for i, p in enumerate(picks):
            by_pick.setdefault(int(p), []).append(i)
        out: list[Sample | None] = [None] * n

        async def one(j: int, pos: int, members: list[int]) -> None:
            slot = int(slots[pos])
            cand = self.table.registry[int(ids[slot])]
            k = 1 if greedy else len(members)
            samples = await self._request(
                cand, slot, example, k, float(logp[pos]), snapshot.version, seed + 1000 * j, greedy
            )
            if greedy:
                samples = [samples[0]] + [dataclasses.replace(samples[0]) for _ in members[1:]]
            for i, s in zip(members, samples, strict=True):
                out[i] = s

        async with anyio.create_task_group() as tg:
            for j, (pos, members) in enumerate(by_pick.items()):
                tg.start_soon(one, j, pos, members)
        return [s for s in out if s is not None]

    def open_episode(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> EpisodeOpening:
        """One multi-turn episode's candidate, drawn from ``snapshot`` as :meth:`generate`
        draws one per rollout (the most probable when ``greedy``, then at temperature 0), and
        its rendered first prompt; every turn of the episode is sent through the client by the
        episode runner (:mod:`engine.environments.runner`), and the episode's sample carries
        the candidate and ``[log pi_old(candidate)]`` as a rollout's does."""
        logits = np.asarray(snapshot.params["logits"])
        ids = np.asarray(snapshot.params["ids"])
        slots = np.flatnonzero(np.asarray(snapshot.params["visible"]))  # (M,)
        if slots.size == 0:
            raise ValueError("the snapshot shows no candidate")
        logp = _log_softmax(logits[slots])  # (M,)
        pos = int(np.argmax(logp)) if greedy else int(rng.choice(slots.size, p=np.exp(logp)))
        slot = int(slots[pos])
        cand = self.table.registry[int(ids[slot])]
        prompt = self.render(cand, example)
        stop = () if self.mode == "chat" or self.endpoint.stop else tuple(self.fmt.stop)
        return EpisodeOpening(
            prompt=prompt,
            mode=self.mode,
            policy_version=snapshot.version,
            temperature=0.0 if greedy else cand.temperature,
            stop=stop,
            fields={
                "choice": cand.id,
                "slot": slot,
                "logprobs": np.array([float(logp[pos])]),
                "messages": tuple(prompt) if isinstance(prompt, list) else None,
            },
            sample_type=PromptSample,
        )

    async def complete(
        self,
        candidate: Candidate,
        example: Example | str,
        *,
        n: int = 1,
        greedy: bool = False,
        version: int | None = None,
        seed: int | None = None,
        kind: str = "generation",
    ) -> Completion:
        """One request for ``example`` under ``candidate``: its rendered prompt, its
        temperature (0 when ``greedy``) and, in completions mode, the format's stop sequences.
        ``kind`` labels its events (``selection`` for the scoring of candidates); a
        deterministic request may be answered by :attr:`cache` whatever its kind.

        Returns the client's :class:`~engine.endpoints.client.Completion`; raises its errors
        (:class:`~engine.errors.EndpointError`) and ``RuntimeError`` without a client.
        """
        if self.client is None:
            raise RuntimeError("the prompt policy has no client")
        client = self.client
        stop = None
        if self.mode == "completions" and not self.endpoint.stop:
            stop = list(self.fmt.stop)
        prompt = self.render(candidate, example)
        temperature = 0.0 if greedy else candidate.temperature

        async def request(k: int) -> Completion:
            return await client.complete(
                prompt,
                n=k,
                kind=kind,
                policy_version=self.version if version is None else version,
                mode=self.mode,
                temperature=temperature,
                stop=stop,
                seed=seed,
            )

        if not self.prompt.eval_cache or not self.deterministic(candidate, greedy=greedy):
            return await request(n)
        shown = prompt if isinstance(prompt, str) else messages_text(prompt)
        decoding = (self.mode, 0.0, self.endpoint.max_tokens, tuple(stop or self.endpoint.stop))
        key = (candidate.recipe, shown, decoding, self.endpoint.model)
        return await self.cache.get_or_request(key, lambda: request(1), n=n)

    async def _generate_served(
        self,
        cid: int,
        slots: np.ndarray,
        ids: np.ndarray,
        logp: np.ndarray,
        example: Example,
        n: int,
        version: int,
    ) -> list[Sample]:
        """``n`` copies of one greedy sample of candidate ``cid`` (live or retired: a retired
        one has slot -1 and log-probability -inf under the snapshot)."""
        where = np.flatnonzero(ids[slots] == cid)
        slot, lp = (int(slots[where[0]]), float(logp[where[0]])) if where.size else (-1, -math.inf)
        samples = await self._request(self.table.registry[cid], slot, example, 1, lp, version,
                                      0, True)  # fmt: skip
        return [samples[0]] + [dataclasses.replace(samples[0]) for _ in range(n - 1)]

    async def _request(
        self,
        cand: Candidate,
        slot: int,
        example: Example,
        k: int,
        logp_old: float,
        version: int,
        seed: int,
        greedy: bool,
    ) -> list[PromptSample]:
        """``k`` samples of one request; a failed request gives ``k`` samples with ``error``."""
        prompt = self.render(cand, example)
        base = {
            "prompt": prompt if isinstance(prompt, str) else messages_text(prompt),
            "choice": cand.id,
            "slot": slot,
            "messages": tuple(prompt) if isinstance(prompt, list) else None,
            "logprobs": np.array([logp_old]),
        }
        if self.client is None:
            return [PromptSample(text="", error="no client", **base) for _ in range(k)]
        try:
            comp = await self.complete(
                cand, example, n=k, greedy=greedy, version=version, seed=seed
            )
        except EngineError as exc:  # endpoint failures: recorded per sample, never raised
            err = f"{type(exc).__name__}: {exc}"
            return [PromptSample(text="", error=err, **base) for _ in range(k)]
        return samples_of(comp, base)

    # ------------------------------------------------------------------ loss

    def loss_and_grad(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, grpo: GRPOConfig
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """GRPO over candidate choices (module docstring) and its exact gradient.

        Args:
            rollouts: N rollouts of this policy (``choice`` = candidate id, ``logprobs`` =
                ``[log pi_old]``).
            advantages: (N,) one advantage per rollout.
            grpo: epsilon, epsilon_high, beta and entropy_coef are used.

        Returns:
            metrics: those of :meth:`~engine.policies.objective.GRPOTerms.metrics` (``tokens``
            counts the rollouts used), ``entropy`` (of pi), ``kl_exact`` (KL(pi || ref) of the
            whole distributions), ``prompt/excluded_rollouts`` (candidate retired since
            generation); grads: ``{"logits": (K,)}``, zero on slots that are not live.
        """
        n = len(rollouts)
        adv_all = np.asarray(advantages, dtype=np.float64).reshape(-1)
        if adv_all.shape != (n,):
            raise ValueError(f"{adv_all.shape[0]} advantages for {n} rollouts")
        if n == 0:
            raise ValueError("loss_and_grad needs at least one rollout")
        live_slots = np.flatnonzero(self.table.live())  # (L,)
        logp = _log_softmax(self.params["logits"][live_slots])  # (L,)
        p = np.exp(logp)  # (L,)
        ref_logp = _log_softmax(self._ref[live_slots])  # (L,)
        a_idx, old_lp, adv = self._actions(rollouts, adv_all, live_slots)
        entropy = float(-(p * logp).sum())
        grad_l = np.zeros(live_slots.size)  # (L,)
        if grpo.entropy_coef:
            # loss term -c * H;  dH/dtheta_k = -p_k (log p_k + H)
            grad_l += grpo.entropy_coef * p * (logp + entropy)
        if a_idx.size:
            m = a_idx.size
            terms = grpo_objective(
                logp[a_idx],
                old_lp,
                ref_logp[a_idx],
                adv,
                np.full(m, 1.0 / m),  # every aggregation is the mean: one action each
                grpo,
                entropy=np.full(m, entropy),
            )
            g_lp = terms.dloss_dlogp  # (N',); then d logpi(c) / d theta = onehot(c) - p
            np.add.at(grad_l, a_idx, g_lp)
            grad_l -= g_lp.sum() * p
            metrics = terms.metrics()
        else:
            metrics = _idle_metrics(-grpo.entropy_coef * entropy)
        metrics["entropy"] = entropy
        metrics["kl_exact"] = float((p * (logp - ref_logp)).sum())
        metrics["prompt/excluded_rollouts"] = float(n - a_idx.size)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite GRPO metrics: {metrics}")
        grads = {"logits": np.zeros_like(self.params["logits"])}
        grads["logits"][live_slots] = grad_l
        return metrics, grads

    def _actions(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, live_slots: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The index among ``live_slots`` of each rollout's candidate, its behaviour
        log-probability and its advantage, for the rollouts whose candidate is still live."""
        slot_of = {int(self.table.ids[s]): j for j, s in enumerate(live_slots)}
        act, old, adv = [], [], []
        for r, a in zip(rollouts, advantages, strict=True):
            s = r.sample
            if s.choice is None or s.logprobs is None or len(s.logprobs) != 1:
                raise ValueError(f"rollout {r.group_id}/{r.index} is not a prompt-policy sample")
            j = slot_of.get(int(s.choice))
            if j is None:
                continue  # its candidate was retired after it was drawn
            act.append(j)
            old.append(float(s.logprobs[0]))
            adv.append(float(a))
        return np.array(act, dtype=np.int64), np.array(old), np.array(adv)

    # ------------------------------------------------------------------ growth

    async def after_update(
        self, step: int, groups: Sequence[Group], *, version: int | None = None
    ) -> dict[str, float]:
        """After the learner's update of batch ``step``: statistics and growth.

        Args:
            step: the batch index just applied.
            groups: its groups (rollouts carry rewards and advantages).
            version: the policy version the learner just published (default ``step + 1``).

        Returns:
            Metrics for the step: ``prompt/candidates``, ``prompt/best_prob``,
            ``prompt/best_candidate`` and, in a growth round, ``prompt/proposed``,
            ``prompt/placed``, ``prompt/pruned``, ``prompt/propose_errors``.
        """
        v = step + 1 if version is None else version
        self.version = v
        self.growth.record(step, groups, self.table)
        sel = self.selection
        if sel is not None:
            self._record_greedy(groups, sel)
        metrics: dict[str, float] = {}
        if self.growth.due(step):
            slots = GrowthSlots(
                table=self.table,
                logits=self.params["logits"],
                ref=self._ref,
                optimizer=self.optimizer,
                base_id=self.base_id,
                proposer=self.proposer or self.client,
                accept=None if sel is None else self._accept,
                keep=frozenset() if sel is None else self._front(),
            )
            metrics.update(await self.growth.grow(step, v, slots))
        if sel is not None:
            await self._score_leaders(sel)
            await self._race(sel)
            metrics.update(sel.statistics())
        metrics.update(self.cache.statistics())
        probs = self.probabilities()
        metrics["prompt/candidates"] = float(len(probs))
        metrics["prompt/best_prob"] = probs[0][1]
        metrics["prompt/best_candidate"] = float(probs[0][0].id)
        return metrics

    def _record_greedy(self, groups: Sequence[Group], sel: Selection) -> None:
        """Rewards of rollouts decoded at temperature 0 are greedy scores: into the matrix."""
        for g in groups:
            for r in g.rollouts:
                c = r.sample.choice
                if not r.ok or c is None or not math.isfinite(r.reward):
                    continue
                cand = self.table.registry.get(int(c))
                if cand is not None and self.deterministic(cand):
                    sel.matrix.set(cand.id, g.example.text, r.reward)

    async def _score_leaders(self, sel: Selection) -> None:
        """Score the most probable live candidate on validation (free when it already is)."""
        await sel.evaluate(self, self.best(), sel.validation)

    async def _race(self, sel: Selection) -> None:
        """While the served choice is a coin flip, spend up to ``prompt.race_calls``
        evaluations scoring it and its runner-up on the training examples (then validation)
        where only one of them is scored (:meth:`Selection.race`); then choose again."""
        choice = self.served_choice()
        if choice is None or not choice.coin_flip or choice.runner_up is None:
            return
        if self.prompt.race_calls <= 0 or self.prompt.served_evidence == "validation":
            return
        if self.prompt.served_evidence == "validation_first" and not choice.tied:
            return  # training evidence only breaks validation ties: it cannot change this
        reg = self.table.registry
        contenders = [reg[choice.candidate], reg[choice.runner_up]]
        pool = [*self.growth.examples.values(), *sel.validation]
        if await sel.race(self, contenders, pool, self.prompt.race_calls):
            self.served_choice()

    def _front(self) -> frozenset[int]:
        """The live candidates on the validation Pareto front."""
        assert self.selection is not None
        live = [int(i) for i in self.table.ids[self.table.live()]]
        return frozenset(self.selection.front(live))

    async def _accept(self, child: Candidate, parent: Candidate, batch: Sequence[Example]) -> bool:
        assert self.selection is not None
        ties = child.origin == "merge"  # a merge need only match its parent (GEPA's rule)
        return await self.selection.accept(self, child, parent, batch, ties=ties)

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``params/logits``, ``slots/{ids,born,died}``, ``ref/logits``; meta: candidates
        (texts), statistics, the recent-rollout buffer, counters. Data only."""
        arrays = {
            "params/logits": self.params["logits"].copy(),
            "ref/logits": self._ref.copy(),
            **self.table.slot_arrays(),
        }
        registry = self.table.registry_json()
        meta = {
            "policy": self.name,
            "format": _STATE_FORMAT,
            "max_candidates": self.prompt.max_candidates,
            "mode": self.mode,
            "prompt_format": dataclasses.asdict(self.fmt),
            "version": self.version,
            "next_id": registry["next_id"],
            "base_id": self.base_id,
            "candidates": registry["candidates"],
            "stats": registry["stats"],
            "buffer": list(self.growth.buffer),
            "examples": self.growth.examples_json(),
            "scores": None if self.selection is None else self.selection.matrix.to_json(),
            "served": None if (c := self.served_choice()) is None else c.to_json(),
        }
        return arrays, meta

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output, in place (the optimizer keeps its references).

        Raises:
            CheckpointError: another policy or format, another ``max_candidates``, missing or
                misshapen arrays, or slots naming unknown candidates.
        """
        if meta.get("policy") != self.name:
            raise CheckpointError(f"checkpoint is for policy {meta.get('policy')!r}, not prompt")
        if meta.get("format") != _STATE_FORMAT:
            raise CheckpointError(f"unsupported prompt policy state format {meta.get('format')!r}")
        k = self.prompt.max_candidates
        if meta.get("max_candidates") != k:
            raise CheckpointError(
                f"checkpoint has prompt.max_candidates={meta.get('max_candidates')!r}, "
                f"this policy has {k}"
            )
        new = _checked_arrays(arrays, k)
        try:
            buffer = [dict(r) for r in meta["buffer"]]
            base_id, version = int(meta["base_id"]), int(meta["version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"prompt policy state is incomplete: {exc!r}") from None
        self.table.load(new, meta)
        self.params["logits"][...] = new["params/logits"]
        self._ref[...] = new["ref/logits"]
        self.growth.buffer, self.base_id, self.version = buffer, base_id, version
        self.growth.load_examples(meta.get("examples") or [])
        if self.selection is not None and meta.get("scores") is not None:
            self.selection.matrix.load(meta["scores"])
        served = meta.get("served")
        self._served_id = None
        if isinstance(served, dict) and isinstance(served.get("candidate"), int):
            self._served_id = int(served["candidate"])


def _checked_arrays(arrays: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Copies of the state arrays, each present, of shape (K,) and, for logits, finite."""
    new: dict[str, np.ndarray] = {}
    for key, dtype in (
        ("params/logits", np.float64),
        ("ref/logits", np.float64),
        ("slots/ids", np.int64),
        ("slots/born", np.int64),
        ("slots/died", np.int64),
    ):
        if key not in arrays:
            raise CheckpointError(f"checkpoint lacks array {key!r}")
        a = np.array(arrays[key], dtype=dtype)
        if a.shape != (k,):
            raise CheckpointError(f"array {key!r} has shape {a.shape}, expected {(k,)}")
        if dtype is np.float64 and not np.all(np.isfinite(a)):
            raise CheckpointError(f"array {key!r} holds non-finite values")
        new[key] = a
    return new


def _idle_metrics(loss: float) -> dict[str, float]:
    """The metrics of a mini-batch whose every rollout was excluded: only the entropy term."""
    return {
        "loss": loss,
        "policy_loss": 0.0,
        "kl": 0.0,
        "clip_ratio": 0.0,
        "clip_ratio/low": 0.0,
        "clip_ratio/high": 0.0,
        "approx_kl": 0.0,
        "ratio_mean": 1.0,
        "tokens": 0.0,
    }
