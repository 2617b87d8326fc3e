"""Which prompt candidates exist and which is served: the evaluation cache, the Pareto front,
acceptance, the served choice (on by default, on the held-out split only, what ``eval/reward``
measures), and the calls and tokens budgets that stop a run and survive a resume.

Against the simulated server (real HTTP on loopback) with scripted models."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import anyio
import numpy as np
import orjson
import pytest
import structlog

from engine.config.sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    OptimConfig,
    PromptPolicyConfig,
    RunConfig,
    TrainerConfig,
)
from engine.endpoints.client import Client
from engine.endpoints.spend import SpendMeter
from engine.errors import BudgetSpent, CheckpointError
from engine.policies.prompt import Candidate, Demo, PromptPolicy
from engine.policies.prompt.growth import CandidateGrowth, GrowthSlots, failure_demos
from engine.policies.prompt.selection import (
    EvalCache,
    ScoreMatrix,
    Selection,
    choose_served,
    pareto_front,
    wilson,
)
from engine.rewards.functions import exact_match
from engine.testing.sim import SimConfig, SimRequest, SimServer
from engine.training.assembly import build_rewarder
from engine.training.heldout import evaluate_heldout
from engine.training.progress import RunProgress
from engine.training.tracking import run_artifacts
from engine.training.trainer import TrainingManager
from engine.types import Example

ITEMS = [Example(f"e{i}", f"item {i}", target="even" if i % 2 == 0 else "odd") for i in range(40)]
TRUTH = {e.text: str(e.target) for e in ITEMS}


class Scripted:
    """A fake model that counts its requests: right on every item under a GOOD instruction,
    right on even items only under a HALF one, never otherwise."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, req: SimRequest) -> str:
        self.requests += 1
        p = req.prompt
        x = p.rsplit("Input:", 1)[-1].split("\n", 1)[0].strip()
        truth = TRUTH.get(x, "even")
        if p.startswith("GOOD"):
            return truth
        if p.startswith("HALF"):
            return truth if truth == "even" else "even"
        return "maybe"


async def score(ex: Example, text: str) -> float:
    return exact_match(ex, text)


def endpoint(url: str, temperature: float = 0.0) -> EndpointConfig:
    return EndpointConfig(
        base_url=url, model="sim", mode="completions", max_tokens=4, temperature=temperature
    )


def policy(client: Client | None, temperature: float = 0.0, **prompt: object) -> PromptPolicy:
    cfg = PromptPolicyConfig(max_candidates=6, select_served=True, **prompt)  # type: ignore[arg-type]
    return PromptPolicy(
        client,
        cfg,
        endpoint=endpoint("http://unused/v1", temperature),
        candidates=[("Answer.", (), None), ("HALF answer.", (), None), ("GOOD answer.", (), None)],
    )


@contextlib.asynccontextmanager
async def attached(
    make: Callable[[Client], PromptPolicy], validation: Sequence[Example]
) -> AsyncIterator[tuple[Scripted, PromptPolicy, Selection]]:
    """A policy from ``make`` on a client of a scripted simulated server, with a selection on
    ``validation`` attached: (the model, the policy, the selection)."""
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = make(client)
        sel = pol.attach_selection(score, validation)
        assert sel is not None
        yield model, pol, sel


# ----------------------------------------------------------------------------- cache


async def test_greedy_reevaluation_is_served_from_the_cache() -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = policy(client)
        pol.endpoint = endpoint(sim.base_url)
        good = pol.candidate(2)
        first = await pol.complete(good, ITEMS[1], greedy=True)
        again = await pol.complete(good, ITEMS[1], greedy=True)
        four = await pol.complete(good, ITEMS[1], greedy=True, n=4)
        other = await pol.complete(good, ITEMS[2], greedy=True)
    assert first.choices[0].text == again.choices[0].text == "odd"
    assert [c.text for c in four.choices] == ["odd"] * 4
    assert other.choices[0].text == "even"
    assert model.requests == 2  # one per (candidate, input); the rest from the cache
    assert pol.cache.hits == 2 and pol.cache.misses == 2
    assert pol.cache.calls_saved == 1 + 1  # the repeat, and the 4-choice one asked once
    assert again.requests == 0 and again.usage.total_tokens == 0


async def test_sampled_requests_are_not_cached_and_decoding_is_part_of_the_key() -> None:
    model = Scripted()
    async with (
        SimServer(SimConfig(model=model)) as sim,
        Client(endpoint(sim.base_url, 1.0)) as client,
    ):
        pol = policy(client, temperature=1.0)
        cand = pol.candidate(2)
        await pol.complete(cand, ITEMS[1])
        await pol.complete(cand, ITEMS[1])
        await pol.complete(cand, ITEMS[1], greedy=True)
        await pol.complete(cand, ITEMS[1], greedy=True)
        pol.endpoint = dataclasses.replace(pol.endpoint, max_tokens=8)  # another decoding
        await pol.complete(cand, ITEMS[1], greedy=True)
    assert model.requests == 4
    assert pol.cache.hits == 1


async def test_concurrent_misses_of_one_key_share_a_request() -> None:
    model = Scripted()
    async with (
        SimServer(SimConfig(model=model, latency=0.05)) as sim,
        Client(endpoint(sim.base_url)) as client,
    ):
        pol = policy(client)
        sel = Selection(score, [ITEMS[1]])
        cand = pol.candidate(2)
        ask = functools.partial(pol.complete, cand, ITEMS[3], greedy=True)
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(ask)
        scores = await sel.evaluate(pol, cand, [ITEMS[3]])
    assert model.requests == 1 and scores.tolist() == [1.0]
    assert pol.cache.hits == 5


def test_cache_keeps_no_failed_answer() -> None:
    cache = EvalCache()

    async def fail() -> object:
        raise BudgetSpent("spent", attempt=1, endpoint="")

    async def go() -> None:
        with pytest.raises(BudgetSpent):
            await cache.get_or_request("k", fail)  # type: ignore[arg-type]

    anyio.run(go)
    assert len(cache) == 0 and cache.misses == 1


# ----------------------------------------------------------------------------- Pareto


def matrix(rows: dict[int, list[float]]) -> tuple[ScoreMatrix, list[str]]:
    m = ScoreMatrix()
    keys = [f"x{i}" for i in range(len(next(iter(rows.values()))))]
    for c, r in rows.items():
        for k, v in zip(keys, r, strict=True):
            m.set(c, k, v)
    return m, keys


def test_pareto_front_keeps_a_candidate_best_on_one_example() -> None:
    m, keys = matrix(
        {
            0: [1, 1, 1, 0],  # best mean
            1: [0, 0, 0, 1],  # the only one right on x3: kept
            2: [1, 1, 0, 0],  # dominated by 0
            3: [0, 0, 0, 0],
        }
    )
    assert pareto_front(m, [0, 1, 2, 3], keys) == {0, 1}
    assert pareto_front(m, [2, 3], keys) == {2}
    m.set(4, "x0", 1.0)  # not scored on all of validation: not compared
    assert 4 not in pareto_front(m, [0, 1, 4], keys)


def test_pruning_retains_the_front_even_with_the_lowest_logit() -> None:
    pol = PromptPolicy(
        None,
        PromptPolicyConfig(max_candidates=5, propose_every=1),
        candidates=[(f"c{i}", (), None) for i in range(3)],
    )
    logits = pol.params["logits"]
    logits[:3] = [0.0, -5.0, -1.0]  # candidate 1 least probable
    pol.table.died[:] = np.iinfo(np.int64).max
    pol.table.born[:3] = -10
    growth = CandidateGrowth(pol.prompt, headroom=2, proposer_mode="completions", seed=0)
    # K - headroom = 3 live allowed: add two more live slots so two must go
    for s in (3, 4):
        cand = pol.table.new_candidate((f"c{s}", (), None), "seed", None)
        pol.table.place(s, cand, born=-10)
        logits[s] = -2.0 - s
    slots = GrowthSlots(pol.table, logits, pol._ref, None, pol.base_id, None,
                        keep=frozenset({1}))  # fmt: skip
    assert growth._prune(5, slots) == 2
    alive = {int(pol.table.ids[s]) for s in np.flatnonzero(pol.table.died > 6)}
    assert 1 in alive and 0 in alive  # the front and the base prompt stay
    assert alive == {0, 1, 2}  # the two lowest logits off the front went


def test_failure_demos_are_the_parents_misses_with_their_references() -> None:
    recs = [
        {"candidate": 3, "input": "a", "target": "A", "reward": 0.0, "step": 1},
        {"candidate": 3, "input": "b", "target": "B", "reward": 1.0, "step": 1},
        {"candidate": 4, "input": "c", "target": "C", "reward": 0.0, "step": 1},
        {"candidate": 3, "input": "a", "target": "A", "reward": 0.0, "step": 2},
        {"candidate": 3, "input": "d", "target": None, "reward": 0.0, "step": 2},
        {"candidate": 3, "input": "e", "target": "E", "reward": 0.5, "step": 2},
    ]
    assert failure_demos(recs, 3, 3) == (Demo("a", "A"), Demo("e", "E"))


# ----------------------------------------------------------------------------- acceptance


async def test_acceptance_needs_a_strict_minibatch_win_then_scores_validation() -> None:
    model = Scripted()
    val = ITEMS[20:28]
    batch = ITEMS[1:5]
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = policy(client)
        sel = Selection(score, val)
        base, half, good = (pol.candidate(i) for i in range(3))
        assert await sel.accept(pol, good, half, batch)
        assert sel.matrix.row(good.id, sel.keys) is not None  # scored on validation
        n = model.requests
        assert not await sel.accept(pol, base, half, batch)  # worse: rejected
        assert sel.matrix.row(base.id, sel.keys) is None  # never scored on validation
        assert model.requests == n + 4  # only the rejected child's minibatch was asked
        assert not await sel.accept(pol, half, half, batch)  # a tie is not a win
    assert sel.accepted == 1 and sel.rejected == 2


async def test_a_merge_is_accepted_on_a_tie_the_other_proposals_are_not() -> None:
    """``ties``: matching the parent on the minibatch is enough (merges); worse still fails."""
    async with (
        SimServer(SimConfig(model=Scripted())) as sim,
        Client(endpoint(sim.base_url)) as client,
    ):
        pol = policy(client)
        sel = Selection(score, ITEMS[20:28])
        base, half, good = (pol.candidate(i) for i in range(3))
        assert not await sel.accept(pol, good, good, ITEMS[1:5])
        assert await sel.accept(pol, good, good, ITEMS[1:5], ties=True)
        assert not await sel.accept(pol, base, half, ITEMS[0:4], ties=True)  # worse on evens
        merge = dataclasses.replace(half, id=99, origin="merge")
        pol.attach_selection(score, ITEMS[20:28])
        assert await pol._accept(merge, half, ITEMS[1:5])  # the policy passes ties for a merge
        assert not await pol._accept(dataclasses.replace(merge, origin="demos"), half, ITEMS[1:5])
    assert sel.accepted == 1 and sel.rejected == 2


async def test_growth_places_only_accepted_proposals() -> None:
    """A reflection that makes things worse is scored on the minibatch and never placed."""

    reflections: list[str] = []

    def model(req: SimRequest) -> str:
        p = req.prompt
        if "improving the instruction" in p:
            reflections.append(p)
            return "Say nothing.</instruction>"
        x = p.rsplit("Input:", 1)[-1].split("\n", 1)[0].strip()
        if not p.startswith("HALF"):
            return "maybe"
        if req.temperature == 0:
            return TRUTH.get(x, "")
        return TRUTH.get(x, "") if (req.seed or 0) % 2 == req.index % 2 else "maybe"

    async with SimServer(SimConfig(model=model)) as sim:
        cfg = train_config(sim.base_url, steps=2)
        cfg = dataclasses.replace(
            cfg,
            endpoint=endpoint(sim.base_url, 1.0),
            prompt=PromptPolicyConfig(
                instructions=("HALF answer.",),
                max_demos=0,
                max_candidates=4,
                propose_every=2,
                select_served=True,
            ),
        )
        async with Client(cfg.endpoint, limits=cfg.limits) as client:
            pol = PromptPolicy.from_config(cfg, client, examples=ITEMS[:20], separate_heldout=True)
            async with TrainingManager(
                cfg, policy=pol, rewarder=build_rewarder(cfg), train=ITEMS[:20],
                heldout=ITEMS[20:30], out=None,
            ) as tm:  # fmt: skip
                await tm.run()
    made = [pol.candidate(i) for i in range(pol.table.next_id)]
    said = [c for c in made if c.instruction == "Say nothing."]
    assert said  # proposed and scored ...
    # the training inputs its reflection was written from are its `seen`: never its evidence
    seen = set(said[0].seen)
    assert seen and seen <= {e.text for e in ITEMS[:20]} and seen <= said[0].shown
    assert all(any(f"Input: {x}" in r for r in reflections) for x in seen)
    assert Candidate.from_json(said[0].to_json()) == said[0]
    live = {int(i) for i in pol.table.ids[pol.table.live()]}
    assert all(pol.candidate(i).instruction != "Say nothing." for i in live)  # ... not placed
    assert pol.selection is not None and pol.selection.rejected >= 1


# ----------------------------------------------------------------------------- served choice


def test_served_choice_is_the_best_validation_mean_with_its_interval() -> None:
    m, keys = matrix({0: [0, 1, 0, 1, 0, 1, 0, 1], 1: [1] * 8, 2: [1, 1, 1, 1, 1, 1, 1, 0]})
    c = choose_served(m, [0, 1, 2], keys, base_id=0)
    assert c is not None and c.candidate == 1 and c.score == 1.0 and c.runner_up == 2
    assert (c.low, c.high) == pytest.approx(wilson(1.0, 8))
    assert c.coin_flip  # 8 against 7 of 8: the data cannot tell
    m2, keys2 = matrix({0: [0] * 12, 1: [1] * 12})
    c2 = choose_served(m2, [0, 1], keys2, base_id=0)
    assert c2 is not None and c2.candidate == 1 and not c2.coin_flip and c2.lead_low > 0
    m3, keys3 = matrix({3: [1, 0], 0: [0, 1]})  # a tie goes to the base prompt
    c3 = choose_served(m3, [0, 3], keys3, base_id=0)
    assert c3 is not None and c3.candidate == 0 and c3.coin_flip
    assert choose_served(ScoreMatrix(), [0], keys, 0) is None


def test_wilson_interval() -> None:
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0.0, 10)[0] == 0.0 and wilson(1.0, 10)[1] == pytest.approx(1.0)


async def test_served_prompt_is_chosen_by_validation_not_by_the_largest_logit() -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = policy(client)
        pol.params["logits"][:3] = [0.0, 3.0, -1.0]  # HALF is the most probable
        assert pol.served().id == 1  # no validation yet: the most probable
        sel = pol.attach_selection(score, ITEMS[20:32])
        assert sel is not None
        for i in range(3):
            await sel.evaluate(pol, pol.candidate(i), sel.validation)
        choice = pol.served_choice()
        assert pol.best().id == 1
        assert choice is not None and choice.candidate == 2 and pol.served().id == 2
        assert choice.score == 1.0 and choice.runner_up == 1 and not choice.coin_flip
        arrays, meta = pol.state()
    assert meta["served"]["candidate"] == 2
    other = policy(None)
    other.load_state(arrays, meta)  # a loaded model serves what the run chose
    assert other.served().id == 2


# ----------------------------------------------------------------------------- budgets


def train_config(url: str, steps: int = 6, **limits: object) -> RunConfig:
    return RunConfig(
        policy="prompt",
        steps=steps,
        seed=0,
        endpoint=endpoint(url),
        prompt=PromptPolicyConfig(
            instructions=("Answer.", "HALF answer.", "GOOD answer."),
            max_demos=0,
            max_candidates=6,
        ),
        grpo=GRPOConfig(group_size=4, mini_batch_size=4),
        optim=OptimConfig(lr=0.5),
        data=DataConfig(batch_size=4, eval_fraction=0.0),
        trainer=TrainerConfig(eval_every=0, checkpoint_every=0),
        limits=LimitsConfig(max_concurrency=8, **limits),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("limits", "which"),
    [({"max_requests": 20}, "calls"), ({"max_total_tokens": 300}, "tokens")],
)
async def test_calls_and_tokens_budgets_stop_the_run_with_a_checkpoint(
    tmp_path: Path, limits: dict[str, int], which: str
) -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim:
        cfg = train_config(sim.base_url, steps=50, **limits)
        spend = SpendMeter.from_config(cfg)
        async with Client(cfg.endpoint, limits=cfg.limits, spend=spend) as client:
            pol = PromptPolicy.from_config(cfg, client, examples=ITEMS[:20], separate_heldout=True)
            async with TrainingManager(
                cfg, policy=pol, rewarder=build_rewarder(cfg), train=ITEMS[:20],
                heldout=ITEMS[20:32], out=tmp_path / "run", spend=spend,
            ) as tm:  # fmt: skip
                summary = await tm.run()
    assert summary.stop_reason == "budget"
    assert summary.extra["budget_spent"] == which
    assert f"the {which} budget ended the run" in summary.extra["stop_detail"]
    assert 0 < summary.steps_done < 50
    if which == "calls":
        assert spend.admitted == model.requests == 20
    else:
        assert spend.tokens >= 300
    saved = orjson.loads((tmp_path / "run" / "summary.json").read_bytes())
    assert saved["stop_reason"] == "budget" and saved["budget_spent"] == which
    assert any((tmp_path / "run").rglob("*.npz")) or any(
        p.is_dir() and p.name.startswith("step") for p in (tmp_path / "run").rglob("*")
    )


def test_spend_meter_budgets_refuse_and_name_themselves() -> None:
    meter = SpendMeter(max_requests=2)
    meter.admit()
    meter.finish()
    assert not meter.exhausted
    meter.admit()
    meter.finish()
    assert meter.exhausted and meter.spent_budget == "calls"
    with pytest.raises(BudgetSpent, match="call budget spent"):
        meter.admit()
    from engine.types import Usage

    tokens = SpendMeter(max_tokens=10)
    tokens.cost(Usage(6, 5), "m", hosted=False)
    assert tokens.tokens == 11 and tokens.spent_budget == "tokens"
    assert "token budget spent" in str(tokens.refusal())
    with pytest.raises(ValueError):
        SpendMeter(max_requests=0)
    assert math.isfinite(SpendMeter().spent)


def test_served_choice_pools_unseen_training_scores_and_shrinks_little_evidence() -> None:
    m = ScoreMatrix()
    val = [f"v{i}" for i in range(4)]
    for k in val:
        m.set(0, k, 1.0)  # the base: right on all of validation ...
        m.set(5, k, 1.0)  # ... and so is candidate 5
    for i in range(10):
        m.set(0, f"t{i}", 1.0 if i < 9 else 0.0)  # the base: 9 of 10 training examples
    for k in ("t0", "t1", "t2"):
        m.set(5, k, 1.0)  # 3 of 3, one of them its own demo
    for k in ("t0", "t1", "t2", "t3"):
        m.set(7, k, 1.0)  # perfect on training, but not scored on all of validation
    m.set(7, "v0", 1.0)
    shown = {0: set(), 5: {"t0"}, 7: set()}
    c = choose_served(m, [0, 5, 7], val, base_id=0, shown=shown)
    assert c is not None and c.candidate == 0 and c.n == 14 and c.score == pytest.approx(13 / 14)
    assert c.validation == 1.0  # its validation mean, reported apart
    assert c.candidates == 2  # 7 lacks validation examples: not compared
    assert c.runner_up == 5 and c.coin_flip  # (13 + 1) / 16 = (6 + 1) / 8: a tie, the base
    only_val = choose_served(m, [0, 5], val, base_id=0)
    assert only_val is not None and only_val.candidate == 0 and only_val.n == 4
    for i in range(3, 40):
        m.set(5, f"t{i}", 1.0)
    c2 = choose_served(m, [0, 5], val, base_id=0, shown=shown)
    assert c2 is not None and c2.candidate == 5 and c2.n == 4 + 39  # t0 never counts for it
    assert c2.runner_up == 0 and c2.coin_flip  # paired on 4 + 9 examples, 1 difference


def test_validation_first_ranks_on_validation_and_breaks_its_ties_on_pooled_evidence() -> None:
    m = ScoreMatrix()
    val = [f"v{i}" for i in range(6)]
    for i, k in enumerate(val):
        m.set(1, k, 1.0 if i < 4 else 0.0)  # 4 of 6 on validation
        m.set(2, k, 1.0 if i < 3 else 0.0)  # 3 of 6 ...
        m.set(3, k, 1.0 if i < 4 else 0.0)  # 4 of 6, a tie with 1
    for i in range(30):
        m.set(2, f"t{i}", 1.0)  # ... but perfect on 30 training examples
        m.set(1, f"t{i}", 1.0 if i < 20 else 0.0)
        m.set(3, f"t{i}", 1.0 if i < 25 else 0.0)
    shown: dict[int, set[str]] = {1: set(), 2: set(), 3: set()}
    pooled = choose_served(m, [1, 2, 3], val, base_id=0, shown=shown)
    assert pooled is not None and pooled.candidate == 2  # 33 of 36 pooled
    c = choose_served(m, [1, 2, 3], val, base_id=0, shown=shown, validation_first=True)
    assert c is not None and c.candidate == 3 and c.runner_up == 1  # 4 of 6; the tie: 29 > 24
    assert c.tied and c.coin_flip and c.n == 6 and c.score == pytest.approx(4 / 6)
    assert c.validation == pytest.approx(4 / 6) and (c.low, c.high) == wilson(4 / 6, 6)
    assert c.tiebreak == pytest.approx(29 / 36) and c.tiebreak_n == 36
    assert c.lead_low == c.lead_high == 0.0  # the lead is paired on validation: none
    for i in range(30):
        m.set(3, f"t{i}", 0.0)
    c2 = choose_served(m, [1, 2, 3], val, base_id=0, shown=shown, validation_first=True)
    assert c2 is not None and c2.candidate == 1 and c2.runner_up == 3 and c2.tied
    m.set(3, "v5", 1.0)  # 3 now leads on validation: training evidence no longer matters
    c3 = choose_served(m, [1, 2, 3], val, base_id=0, shown=shown, validation_first=True)
    assert c3 is not None and c3.candidate == 3 and not c3.tied and c3.coin_flip
    assert c3.to_json()["tiebreak"] == pytest.approx(5 / 36)
    plain = choose_served(m, [1, 2, 3], val, base_id=0, validation_first=True)  # no shown
    assert plain is not None and plain.candidate == 3 and plain.tiebreak_n == 0


# ----------------------------------------------------------------------------- the race


async def test_validation_first_races_only_a_tie_on_validation() -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = racers(client, race_calls=4)
        assert pol.prompt.served_evidence == "validation_first"  # the default
        await two_scored(pol, ITEMS[20:26])
        tie = pol.served_choice()
        assert tie is not None and tie.tied and tie.n == 6  # 6 of 6 each
        assert (await pol.after_update(0, []))["prompt/raced"] == 4.0
        after = pol.served_choice()
        assert after is not None and after.tiebreak_n > 6 and after.n == 6
        lead = policy(client, race_calls=4)  # HALF and GOOD on 2 items: GOOD ahead, by little
        await two_scored(lead, ITEMS[20:22])
        choice = lead.served_choice()
        assert choice is not None and choice.coin_flip and not choice.tied
        assert (await lead.after_update(0, []))["prompt/raced"] == 0.0  # nothing to break


async def two_scored(pol: PromptPolicy, validation: Sequence[Example]) -> Selection:
    """Attach a selection on ``validation``, score candidates 1 and 2 on all of it, and show
    the policy's growth the first 10 items as the training examples seen (the race's pool)."""
    sel = pol.attach_selection(score, validation)
    assert sel is not None
    for i in (1, 2):
        await sel.evaluate(pol, pol.candidate(i), sel.validation)
    pol.growth.examples = {e.text: e for e in ITEMS[:10]}
    return sel


def racers(client: Client | None, **prompt: object) -> PromptPolicy:
    """Two candidates right on every item (one shows item 3 as a demo), the base never."""
    cfg = PromptPolicyConfig(max_candidates=6, select_served=True, **prompt)  # type: ignore[arg-type]
    return PromptPolicy(
        client,
        cfg,
        endpoint=endpoint("http://unused/v1"),
        candidates=[
            ("Answer.", (), None),
            ("GOOD answer.", (), None),
            ("GOOD reply.", (Demo(ITEMS[3].text, "odd"),), None),
        ],
    )


async def test_the_race_pairs_the_contenders_on_unseen_examples_within_its_calls() -> None:
    async with attached(racers, ITEMS[20:26]) as (model, pol, sel):
        a, b = pol.candidate(1), pol.candidate(2)
        await sel.evaluate(pol, a, sel.validation)
        await sel.evaluate(pol, b, sel.validation)
        await sel.evaluate(pol, a, ITEMS[:4])  # a has 4 training scores, b none
        n = model.requests
        pool = ITEMS[:10]
        assert await sel.race(pol, [a, b], pool, 0) == 0 and model.requests == n
        assert await sel.race(pol, [a, b], pool, 3) == 3 and model.requests == n + 3
        assert sel.raced == 3
        # b, with less evidence, first, on what a was scored on (paired), never on item 3,
        # its own demo; then on what neither was
        b_train = {k for k in sel.matrix.scores_of(b.id) if k not in sel.keys}
        assert b_train == {ITEMS[0].text, ITEMS[1].text, ITEMS[2].text}
        assert await sel.race(pol, [a, b], pool, 2) == 2
        b_train = {k for k in sel.matrix.scores_of(b.id) if k not in sel.keys}
        assert b_train == {e.text for e in ITEMS[:5]} - {ITEMS[3].text}  # 10 scores each
        a_train = {k for k in sel.matrix.scores_of(a.id) if k not in sel.keys}
        assert a_train == {e.text for e in ITEMS[:5]}  # its turn: the one b was scored on
        await sel.race(pol, [a, b], pool, 100)  # to the end of the pool
        assert set(sel.matrix.scores_of(a.id)) >= {e.text for e in pool}
        assert ITEMS[3].text not in sel.matrix.scores_of(b.id)
        assert await sel.race(pol, [a, b], pool, 100) == 0  # nothing left to score
        sel.stopped = True
        assert await sel.race(pol, [a, b], ITEMS[10:20], 5) == 0  # a spent budget: no more


async def test_pooled_evidence_never_counts_a_candidates_own_demos_or_seen_inputs() -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = racers(client, served_evidence="pooled")
        sel = pol.attach_selection(score, ITEMS[20:26])
        assert sel is not None
        b = pol.candidate(2)  # shows item 3 as a demo
        await sel.evaluate(pol, b, sel.validation)
        sel.matrix.set(b.id, ITEMS[3].text, 1.0)  # its own demo: right, and not evidence
        sel.matrix.set(b.id, ITEMS[4].text, 0.0)
        choice = pol.served_choice()
        assert choice is not None and choice.candidate == b.id
        assert choice.n == 7 and choice.score == pytest.approx(6 / 7)
        grown = pol.table.new_candidate(("GOOD answer.", (), 0.0), "reflection", b.id,
                                        seen=[ITEMS[5].text])  # fmt: skip
        assert grown.shown == {ITEMS[5].text}  # no demos of its own
        await sel.evaluate(pol, grown, sel.validation)
        sel.matrix.set(grown.id, ITEMS[5].text, 1.0)  # what its reflection saw: not evidence
        sel.matrix.set(grown.id, ITEMS[6].text, 1.0)
        choice = pol.served_choice()
        assert choice is not None and choice.candidate == grown.id and choice.n == 7


async def test_after_update_races_a_coin_flip_only_and_chooses_on_the_pooled_evidence() -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = racers(client, race_calls=4, served_evidence="pooled")
        sel = pol.attach_selection(score, ITEMS[20:26])
        assert sel is not None
        for i in (1, 2):
            await sel.evaluate(pol, pol.candidate(i), sel.validation)
        pol.growth.examples = {e.text: e for e in ITEMS[:10]}  # the training examples seen
        before = pol.served_choice()
        assert before is not None and before.coin_flip and before.n == 6  # 6 of 6 each
        metrics = await pol.after_update(0, [])
        assert metrics["prompt/raced"] == 4.0  # one update's race: race_calls evaluations
        for _ in range(10):
            await pol.after_update(0, [])
        assert sel.raced == 10 + 9  # every unseen training example, then nothing more
        after = pol.served_choice()
        assert after is not None and after.n in (15, 16) and after.coin_flip  # still tied
        off = racers(client, race_calls=0)
        await two_scored(off, ITEMS[20:26])
        assert (await off.after_update(0, []))["prompt/raced"] == 0.0
        clear = policy(client, race_calls=4)  # GOOD leads HALF beyond doubt: no race
        await two_scored(clear, ITEMS[20:32])
        choice = clear.served_choice()
        assert choice is not None and not choice.coin_flip
        assert (await clear.after_update(0, []))["prompt/raced"] == 0.0


# ----------------------------------------------------------------------------- served by default


def test_select_served_is_on_by_default_with_an_opt_out() -> None:
    assert PromptPolicyConfig().select_served is True
    off = PromptPolicy(
        None,
        PromptPolicyConfig(select_served=False),
        endpoint=endpoint("http://unused/v1"),
        candidates=[("Answer.", (), None), ("GOOD answer.", (), None)],
    )
    assert off.attach_selection(score, ITEMS[20:32]) is None
    assert off.served_report()["by"] == "most_probable"
    assert "select_served is off" in off.served_report()["reason"]


async def test_a_default_run_serves_the_best_held_out_prompt_and_says_why(tmp_path: Path) -> None:
    model = Scripted()
    out = tmp_path / "run"
    async with SimServer(SimConfig(model=model)) as sim:
        cfg = train_config(sim.base_url, steps=2)
        assert cfg.prompt.select_served  # the default, not set by train_config
        spend = SpendMeter.from_config(cfg)
        async with Client(cfg.endpoint, limits=cfg.limits, spend=spend) as client:
            pol = PromptPolicy.from_config(cfg, client, examples=ITEMS[:20], separate_heldout=True)
            pol.params["logits"][:3] = [0.0, 4.0, -4.0]  # HALF is the most probable
            async with TrainingManager(
                cfg, policy=pol, rewarder=build_rewarder(cfg), train=ITEMS[:20],
                heldout=ITEMS[20:32], out=out, spend=spend,
            ) as tm:  # fmt: skip
                summary = await tm.run()
    assert pol.selection is not None  # attached by default, with the held-out examples
    served = summary.extra["served"]
    assert served["candidate"] == 1 and served["by"] == "validation"
    # HALF: the even half of validation, and its greedy rollouts on training examples pooled
    pooled = pol.selection.matrix.scores_of(1)
    assert served["validation"] == served["score"] == 0.5 and served["n"] == 12
    assert served["tiebreak_n"] == len(pooled) > 12  # validation first, pooled for ties
    assert served["tiebreak"] == pytest.approx(np.mean(list(pooled.values())))
    assert served["tied"] is False
    assert (served["low"], served["high"]) == pytest.approx(wilson(served["score"], served["n"]))
    assert f"best mean held-out score {served['score']:.3f}" in served["reason"]
    assert served["coin_flip"] is False
    saved = orjson.loads((out / "summary.json").read_bytes())
    assert saved["served"]["candidate"] == 1
    run_artifacts(pol, out)  # what the run's trackers attach when they finish
    file = orjson.loads((out / "served_prompt.json").read_bytes())
    assert file["instruction"] == "HALF answer." and file["served"] == served


@pytest.mark.parametrize("evidence", ["validation", "pooled", "validation_first"])
async def test_the_served_score_counts_validation_or_unseen_training_examples(
    evidence: str,
) -> None:
    make = functools.partial(policy, served_evidence=evidence)
    async with attached(make, ITEMS[20:32]) as (_, pol, sel):
        await sel.evaluate(pol, pol.candidate(1), sel.validation)  # HALF: 6 of 12
        for ex in ITEMS[:20]:  # many perfect greedy scores on unseen training examples
            sel.matrix.set(1, ex.text, 1.0)
        await sel.evaluate(pol, pol.candidate(2), sel.validation[:6])  # GOOD: part only
        choice = pol.served_choice()
    assert choice is not None and choice.candidate == 1 and choice.validation == 0.5
    if evidence == "validation":
        assert choice.n == 12 and choice.score == pytest.approx(0.5)  # training left out
    elif evidence == "validation_first":  # the score is validation's, the pooled breaks ties
        assert choice.n == 12 and choice.score == pytest.approx(0.5)
        assert choice.tiebreak_n == 32 and choice.tiebreak == pytest.approx((6 + 20) / 32)
    else:
        assert choice.n == 32 and choice.score == pytest.approx((6 + 20) / 32)
    assert choice.candidates == 1  # GOOD, not scored on all of validation, is not compared


async def test_a_choice_without_a_rival_or_by_a_coin_flip_warns_once_and_says_so() -> None:
    async with attached(policy, ITEMS[20:32]) as (_, pol, sel):
        with structlog.testing.capture_logs() as logs:
            await sel.evaluate(pol, pol.candidate(1), sel.validation)  # HALF: the only one
            first, again = pol.served_choice(), pol.served_choice()
            report = pol.served_report()
            await sel.evaluate(pol, pol.candidate(0), sel.validation[:11])  # short of a row
            assert pol.served_choice() == first  # still unrivalled: no new warning
            await sel.evaluate(pol, pol.candidate(0), sel.validation)  # 0 of 12: a rival
            rivalled = pol.served_report()
    assert first is not None and first == again and first.candidates == 1
    assert first.unrivalled and first.unscored == 2
    assert "unrivalled: none of the other 2 candidates" in report["reason"]
    assert "unrivalled" not in rivalled["reason"] and rivalled["candidates"] == 2
    assert [e["event"] for e in logs] == ["prompt.served_unrivalled"]
    assert logs[0]["candidate"] == 1 and logs[0]["not_validated"] == 2
    sel.matrix.set(2, sel.keys[0], 1.0)  # GOOD right on one example, wrong on the rest: 1 of 12
    for k in sel.keys[1:]:
        sel.matrix.set(2, k, 0.0)
    for k in sel.keys[:7]:  # HALF against the base prompt: 6 of 12 vs 7 of 12, a coin flip
        sel.matrix.set(0, k, 1.0)
    with structlog.testing.capture_logs() as logs:
        flip = pol.served_choice()
        assert pol.served_choice() == flip
    assert flip is not None and flip.candidate == 0 and flip.coin_flip
    assert [e["event"] for e in logs] == ["prompt.served_coin_flip"]
    assert "a coin flip" in pol.served_report()["reason"]


async def test_eval_reward_measures_the_served_candidate_not_the_most_probable() -> None:
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim, Client(endpoint(sim.base_url)) as client:
        pol = policy(client)
        pol.params["logits"][:3] = [0.0, 3.0, -1.0]  # HALF is the most probable
        rewarder = build_rewarder(train_config(sim.base_url))
        test = ITEMS[32:40]
        before = await evaluate_heldout(pol, rewarder, pol.snapshot(pol.version), test, seed=0)
        assert before["eval/reward"] == pytest.approx(0.5)  # HALF: no served choice yet
        sel = pol.attach_selection(score, ITEMS[20:32])
        assert sel is not None
        for i in range(3):
            await sel.evaluate(pol, pol.candidate(i), sel.validation)
        after = await evaluate_heldout(pol, rewarder, pol.snapshot(pol.version), test, seed=0)
    assert pol.best().id == 1 and pol.served().id == 2
    assert after["eval/reward"] == 1.0 and after["eval/failures"] == 0


def test_checkpointed_call_and_token_counts_are_validated() -> None:
    meta = RunProgress(spent_usd=0.5, calls=17, tokens=900).to_meta()
    back = RunProgress.from_meta(orjson.loads(orjson.dumps(meta)))
    assert (back.calls, back.tokens) == (17, 900)
    old = {k: v for k, v in meta.items() if k not in ("calls", "tokens")}
    assert RunProgress.from_meta(old).calls == 0  # a checkpoint written before them
    for bad in (-1, 2.5, True, "3", None):
        with pytest.raises(CheckpointError, match="calls"):
            RunProgress.from_meta({**meta, "calls": bad})
    with pytest.raises(CheckpointError, match="tokens"):
        RunProgress.from_meta({**meta, "tokens": -5})
    meter = SpendMeter(max_requests=20)
    meter.restore(0.0, calls=20, tokens=3)
    assert meter.exhausted and meter.spent_budget == "calls" and meter.tokens == 3
    with pytest.raises(ValueError):
        meter.restore(0.0, calls=-1)


@pytest.mark.parametrize(("limit", "which"), [("max_requests", "calls"),
                                              ("max_total_tokens", "tokens")])  # fmt: skip
async def test_call_and_token_budgets_survive_a_resume(
    tmp_path: Path, limit: str, which: str
) -> None:
    out = tmp_path / "run"
    model = Scripted()
    async with SimServer(SimConfig(model=model)) as sim:
        base = train_config(sim.base_url, steps=3)
        first = dataclasses.replace(
            base,
            trainer=TrainerConfig(eval_every=0, checkpoint_every=1),
            prompt=dataclasses.replace(base.prompt, select_served=False),
        )
        done = await _run(first, out)
        used = {"calls": done.extra["calls"], "tokens": done.extra["tokens"]}
        assert done.steps_done == 3 and used[which] > 0
        # resumed with a budget just above what the first run used: it ends almost at once
        cap = used[which] + 1
        limits = dataclasses.replace(first.limits, **{limit: cap})
        more = dataclasses.replace(first, steps=50, limits=limits)
        sent = model.requests
        second = await _run(more, out, resume=True)
    assert second.stop_reason == "budget" and second.extra["budget_spent"] == which
    assert second.extra[which] >= cap
    if which == "calls":  # the meter went on from the checkpoint's count: one more call
        assert second.extra["calls"] == cap and model.requests - sent == 1
    assert second.steps_done <= done.steps_done + 1  # at most one step more, not a new budget


async def _run(cfg, out: Path, *, resume: bool = False):  # type: ignore[no-untyped-def]
    spend = SpendMeter.from_config(cfg)
    async with Client(cfg.endpoint, limits=cfg.limits, spend=spend) as client:
        pol = PromptPolicy.from_config(cfg, client, examples=ITEMS[:20], separate_heldout=True)
        async with TrainingManager(
            cfg, policy=pol, rewarder=build_rewarder(cfg), train=ITEMS[:20],
            heldout=ITEMS[20:32], out=out, spend=spend,
        ) as tm:  # fmt: skip
            return await tm.run(resume=out if resume else None)
