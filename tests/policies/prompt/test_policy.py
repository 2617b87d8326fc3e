"""The prompt policy: GRPO over prompt candidates (math, sampling, growth, state, training)."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

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
from engine.endpoints.parsing import Choice, Completion
from engine.errors import CheckpointError, ServerError
from engine.learning.checkpoint import load_checkpoint, save_checkpoint
from engine.policies.base import Policy
from engine.policies.prompt import (
    PromptPolicy,
    PromptSample,
)
from engine.telemetry.events import EventLog
from engine.testing.sim import SimConfig, SimRequest, SimServer
from engine.training.assembly import build_rewarder
from engine.training.trainer import BatchMetrics, TrainingManager
from engine.types import Example, Group, Rollout, Usage

# ----------------------------------------------------------------------------- helpers

NOKL = GRPOConfig(beta=0.0)


class FakeClient:
    """An in-process stand-in for engine.endpoints.client.Client: records calls, answers by a
    function."""

    def __init__(
        self,
        answer: Callable[[Any, Mapping[str, Any]], str] = lambda prompt, kw: " ok",
        fail: Exception | None = None,
    ) -> None:
        self.answer = answer
        self.fail = fail
        self.calls: list[tuple[Any, int, dict[str, Any]]] = []

    async def complete(self, prompt: Any, *, n: int = 1, **kw: Any) -> Completion:
        self.calls.append((prompt, n, kw))
        if self.fail is not None:
            raise self.fail
        text = self.answer(prompt, kw)
        choices = [
            Choice(i, text, "stop", logprobs=[-0.25, -0.5], tokens=[text, "\n\n"]) for i in range(n)
        ]
        return Completion(choices, Usage(7 * n, 2 * n), "id", "fake", 0.01, 1, 1)


def seeded(names: Sequence[str], k: int = 8, **cfg: Any) -> PromptPolicy:
    """A policy with one zero-shot candidate per name, in slots 0..len-1 of k."""
    return PromptPolicy(
        None,
        PromptPolicyConfig(max_candidates=k, **cfg),
        candidates=[(n, (), None) for n in names],
    )


def rollout(choice: int, old_lp: float, adv: float = 0.0, reward: float = 1.0) -> Rollout:
    s = PromptSample(text="x", choice=choice, logprobs=np.array([old_lp]))
    r = Rollout("g", 0, 0, s, reward=reward)
    r.advantage = adv
    return r


def logp_of(policy: PromptPolicy) -> np.ndarray:
    live = np.flatnonzero(policy.table.live())
    z = policy.params["logits"][live]
    return z - np.log(np.exp(z - z.max()).sum()) - z.max()


# ----------------------------------------------------------------------------- the math


def test_is_a_policy() -> None:
    """PromptPolicy satisfies the Policy protocol and its parameters are one (K,) array."""
    pol = seeded(["a", "b"], k=5)
    assert isinstance(pol, Policy)
    assert list(pol.parameters()) == ["logits"] and pol.parameters()["logits"].shape == (5,)


def test_hand_computed_loss_and_gradient() -> None:
    """Two candidates, p = (1/4, 3/4), one on-policy rollout of candidate 1 with A = 1."""
    pol = seeded(["a", "b"], k=3)
    pol.params["logits"][:2] = [0.0, math.log(3.0)]
    m, g = pol.loss_and_grad([rollout(1, math.log(0.75), adv=1.0)], np.array([1.0]), NOKL)
    assert m["policy_loss"] == pytest.approx(-1.0)
    assert m["ratio_mean"] == pytest.approx(1.0) and m["clip_ratio"] == 0.0
    assert m["entropy"] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # d(-A * pi(1)/pi_old(1)) / d theta = -(e_1 - p)
    np.testing.assert_allclose(g["logits"], [0.25, -0.25, 0.0], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_finite_differences(seed: int) -> None:
    """The analytic gradient (surrogate, both clips, k3 KL, entropy) equals central differences."""
    rng = np.random.default_rng(seed)
    pol = seeded([f"c{i}" for i in range(5)], k=8)
    pol._ref[:5] = rng.normal(0, 0.5, 5)
    pol.params["logits"][:5] = rng.normal(0, 1.0, 5)
    cfg = GRPOConfig(epsilon=0.2, epsilon_high=0.3, beta=0.1, entropy_coef=0.05)
    lp = logp_of(pol)
    rollouts, adv = [], []
    for i in range(12):
        c = int(rng.integers(5))
        offset = [-0.6, -0.05, 0.05, 0.6][i % 4]  # inside and outside both clip ranges
        a = float(rng.normal())
        rollouts.append(rollout(c, lp[c] + offset, adv=a))
        adv.append(a)
    adv_arr = np.array(adv)
    m, g = pol.loss_and_grad(rollouts, adv_arr, cfg)
    assert 0 < m["clip_ratio"] < 1
    h = 1e-6
    theta = pol.params["logits"]
    for k in range(8):
        old = theta[k]
        theta[k] = old + h
        up = pol.loss_and_grad(rollouts, adv_arr, cfg)[0]["loss"]
        theta[k] = old - h
        down = pol.loss_and_grad(rollouts, adv_arr, cfg)[0]["loss"]
        theta[k] = old
        assert g["logits"][k] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8), k
    assert np.all(g["logits"][5:] == 0.0)  # empty slots get no gradient


def test_clipping_stops_the_gradient_only_on_the_pessimistic_side() -> None:
    """Ratio beyond 1+eps with A>0 (or below 1-eps with A<0) is clipped: no gradient."""
    pol = seeded(["a", "b"], k=2)
    lp = logp_of(pol)
    cfg = GRPOConfig(epsilon=0.2, beta=0.0)
    m, g = pol.loss_and_grad([rollout(0, lp[0] - math.log(2.0))], np.array([1.0]), cfg)
    assert m["clip_ratio"] == 1.0 and m["clip_ratio/high"] == 1.0
    np.testing.assert_array_equal(g["logits"], 0.0)
    m, g = pol.loss_and_grad([rollout(0, lp[0] + math.log(2.0))], np.array([-1.0]), cfg)
    assert m["clip_ratio"] == 1.0 and m["clip_ratio/low"] == 1.0
    np.testing.assert_array_equal(g["logits"], 0.0)
    # ratio 2 with A < 0: the unclipped branch is the pessimistic one, so it still pushes down
    m, g = pol.loss_and_grad([rollout(0, lp[0] - math.log(2.0))], np.array([-1.0]), cfg)
    assert m["clip_ratio"] == 0.0 and g["logits"][0] > 0  # gradient descent lowers logit 0


def test_kl_to_the_initial_distribution() -> None:
    """KL is 0 at the reference, positive away from it, and its gradient points back."""
    pol = seeded(["a", "b", "c"], k=3)
    cfg = GRPOConfig(beta=1.0)
    r = [rollout(c, logp_of(pol)[c]) for c in range(3)]
    m, _ = pol.loss_and_grad(r, np.zeros(3), cfg)
    assert m["kl"] == pytest.approx(0.0) and m["kl_exact"] == pytest.approx(0.0)
    pol.params["logits"][:] = [2.0, -1.0, 0.0]
    m, g = pol.loss_and_grad(r, np.zeros(3), cfg)
    assert m["kl"] > 0 and m["kl_exact"] > 0
    before = m["kl_exact"]
    pol.params["logits"] -= 0.1 * g["logits"]
    assert pol.loss_and_grad(r, np.zeros(3), cfg)[0]["kl_exact"] < before


def test_entropy_bonus_flattens_the_distribution() -> None:
    """With only the entropy term, a gradient step raises the candidate entropy."""
    pol = seeded(["a", "b", "c"], k=3)
    pol.params["logits"][:] = [3.0, 0.0, -1.0]
    cfg = GRPOConfig(entropy_coef=1.0, beta=0.0)
    r = [rollout(0, logp_of(pol)[0])]
    m, g = pol.loss_and_grad(r, np.zeros(1), cfg)
    pol.params["logits"] -= 0.5 * g["logits"]
    assert pol.loss_and_grad(r, np.zeros(1), cfg)[0]["entropy"] > m["entropy"]


def test_rollouts_of_retired_candidates_are_excluded() -> None:
    """A rollout whose candidate is no longer live is left out of the loss and counted."""
    pol = seeded(["a", "b"], k=2)
    m, g = pol.loss_and_grad([rollout(99, -1.0, adv=1.0)], np.array([1.0]), NOKL)
    assert m["prompt/excluded_rollouts"] == 1.0 and m["tokens"] == 0.0
    np.testing.assert_array_equal(g["logits"], 0.0)


# ----------------------------------------------------------------------------- generation


async def test_sampling_follows_the_logits() -> None:
    """Candidate frequencies over many rollouts match softmax(logits)."""
    pol = seeded(["a", "b", "c"], k=4)
    pol.client = FakeClient()
    pol.params["logits"][:3] = [1.0, 0.0, -1.0]
    ex = Example("e", "hello")
    samples = await pol.generate(pol.snapshot(0), ex, 6000, np.random.default_rng(0))
    counts = Counter(s.choice for s in samples)
    p = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    for cid in range(3):
        assert counts[cid] / 6000 == pytest.approx(p[cid], abs=0.02)
        lp = [float(s.logprobs[0]) for s in samples if s.choice == cid]
        np.testing.assert_allclose(lp, math.log(p[cid]), rtol=1e-12)
    assert len(pol.client.calls) == 3  # rollouts sharing a candidate share one request


async def test_greedy_takes_the_most_probable_candidate_at_temperature_0() -> None:
    """greedy: one request for the argmax candidate at temperature 0, repeated n times."""
    client = FakeClient(lambda prompt, kw: " yes")
    pol = seeded(["a", "b"], k=2)
    pol.client = client
    pol.params["logits"][:] = [0.0, 2.0]
    samples = await pol.generate(
        pol.snapshot(0), Example("e", "x"), 3, np.random.default_rng(0), greedy=True
    )
    assert [s.choice for s in samples] == [1, 1, 1] and all(s.text == " yes" for s in samples)
    assert len(client.calls) == 1 and client.calls[0][1] == 1
    assert client.calls[0][2]["temperature"] == 0.0


async def test_same_seed_same_samples_and_completion_tokens_kept() -> None:
    """Generation is a function of the generator; completion logprobs are kept for export."""
    pol = seeded(["a", "b", "c"], k=3)
    pol.client = FakeClient()
    a = await pol.generate(pol.snapshot(0), Example("e", "x"), 8, np.random.default_rng(5))
    b = await pol.generate(pol.snapshot(0), Example("e", "x"), 8, np.random.default_rng(5))
    assert [s.choice for s in a] == [s.choice for s in b]
    s = a[0]
    assert isinstance(s, PromptSample)
    np.testing.assert_array_equal(s.completion_logprobs, [-0.25, -0.5])
    assert s.completion_tokens == (" ok", "\n\n") and s.usage.prompt_tokens == 7


async def test_failed_requests_give_error_samples() -> None:
    """An endpoint error becomes samples carrying the error, never an exception."""
    pol = seeded(["a", "b"], k=2)
    pol.client = FakeClient(fail=ServerError("boom", status=503))
    samples = await pol.generate(pol.snapshot(0), Example("e", "x"), 4, np.random.default_rng(0))
    assert len(samples) == 4 and all(s.error and "ServerError" in s.error for s in samples)
    pol.client = None
    samples = await pol.generate(pol.snapshot(0), Example("e", "x"), 2, np.random.default_rng(0))
    assert all(s.error == "no client" for s in samples)


def test_seed_candidates_put_the_base_prompt_first() -> None:
    """Candidate 0 is the base prompt, zero-shot; the product fills up to max_candidates."""
    pool = [Example(f"e{i}", f"t{i}", target=str(i % 2)) for i in range(10)]
    pol = PromptPolicy(
        None,
        PromptPolicyConfig(instructions=("base", "other"), max_candidates=16, max_demos=2),
        demo_pool=pool,
    )
    cands = [c for c, _ in pol.probabilities()]
    assert len(cands) == 6
    assert pol.best().instruction == "base" and pol.best().demos == ()  # ties: the base prompt
    assert {(c.instruction, len(c.demos)) for c in cands} == {
        ("base", 0), ("other", 0), ("base", 2), ("other", 2)
    }  # fmt: skip


# ----------------------------------------------------------------------------- growth and state


def _groups(pol: PromptPolicy, step: int, rng: np.random.Generator) -> list[Group]:
    """Two scored groups over the live candidates: candidate 1 is the good one."""
    out = []
    live = [c.id for c, _ in pol.probabilities()]
    for j in range(2):
        g = Group(f"{step}-{j}", step, Example(f"x{j}", f"input {j}", target="yes"), pol.version)
        rewards = []
        for i in range(4):
            cid = live[int(rng.integers(len(live)))]
            r = 1.0 if cid == 1 or rng.random() < 0.2 else 0.0
            s = PromptSample(text="yes" if r else "no", choice=cid, logprobs=np.array([-1.0]))
            g.rollouts.append(Rollout(g.group_id, i, pol.version, s, reward=r))
            rewards.append(r)
        mu = float(np.mean(rewards))
        for ro in g.rollouts:
            ro.advantage = ro.reward - mu
        out.append(g)
    return out


def _reflector(prompt: Any, kw: Mapping[str, Any]) -> str:
    assert kw["kind"] == "proposal"
    return f"<instruction>Be exact, variant {kw['seed']}.</instruction>"


async def test_growth_keeps_shapes_and_optimizer_consistent() -> None:
    """Growth adds and retires candidates in fixed-shape slots; Adam's state stays aligned."""
    pol = PromptPolicy(
        FakeClient(_reflector),
        PromptPolicyConfig(max_candidates=6, max_demos=2, propose_every=1),
        candidates=[("base", (), None), ("good", (), None), ("meh", (), None), ("bad", (), None)],
    )
    pol.configure_optimizer(OptimConfig(lr=0.3))
    logits = pol.parameters()["logits"]
    rng = np.random.default_rng(0)
    totals: Counter[str] = Counter()
    for step in range(8):
        version = step + 1
        groups = _groups(pol, step, rng)
        items = [r for g in groups for r in g.rollouts]
        adv = np.array([r.advantage for r in items])
        pol.update(items, adv, grpo=GRPOConfig(), lr=0.3)
        visible_before = pol.snapshot(version).params["visible"].copy()
        m = await pol.after_update(step, groups, version=version)
        totals.update({k: int(v) for k, v in m.items() if k.startswith("prompt/p")})
        assert m["prompt/placed"] <= m["prompt/proposed"]
        assert pol.parameters()["logits"] is logits and logits.shape == (6,)  # in place, fixed
        arrays, _ = pol.optimizer_state()
        assert arrays["m.logits"].shape == (6,)
        # snapshot `version` (already published) is unchanged by the growth
        np.testing.assert_array_equal(pol.snapshot(version).params["visible"], visible_before)
        live = pol.table.live()
        assert live.sum() <= 6 - pol.headroom + m["prompt/placed"]
        born_now = pol.table.born == version + 1
        assert born_now.sum() == m["prompt/placed"]
        assert np.all(arrays["m.logits"][born_now] == 0.0)  # reused slots start without momentum
        assert pol.base_id in {c.id for c, _ in pol.probabilities()}  # never pruned
    assert totals["prompt/placed"] >= 4 and totals["prompt/pruned"] >= 2
    origins = Counter(pol.candidate(int(i)).origin for i in pol.table.ids if i >= 0)
    assert origins["reflection"] >= 1 and origins["demos"] >= 1
    assert sum(p for _, p in pol.probabilities()) == pytest.approx(1.0)


async def test_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    """state() -> checkpoint files (no pickle) -> load_state() restores the same policy."""
    pol = PromptPolicy(
        FakeClient(_reflector),
        PromptPolicyConfig(max_candidates=5, max_demos=2, propose_every=1),
        candidates=[("base", (), None), ("good", (), None), ("meh", (), None)],
    )
    rng = np.random.default_rng(1)
    for step in range(3):
        await pol.after_update(step, _groups(pol, step, rng))
        pol.params["logits"] += rng.normal(0, 0.1, 5)
    arrays, meta = pol.state()
    save_checkpoint(tmp_path / "ck", arrays, {"policy": meta})
    loaded_arrays, loaded_meta = load_checkpoint(tmp_path / "ck")
    other = PromptPolicy(
        None, PromptPolicyConfig(max_candidates=5, propose_every=1), candidates=[("x", (), None)]
    )
    logits = other.parameters()["logits"]
    other.load_state(loaded_arrays, loaded_meta["policy"])
    assert other.parameters()["logits"] is logits  # restored in place
    assert [(c, p) for c, p in other.probabilities()] == [(c, p) for c, p in pol.probabilities()]
    for v in range(5):
        for k in ("logits", "ids", "visible"):
            np.testing.assert_array_equal(other.snapshot(v).params[k], pol.snapshot(v).params[k])
    assert other.state()[1] == pol.state()[1]
    small = PromptPolicy(None, PromptPolicyConfig(max_candidates=4), candidates=[("x", (), None)])
    with pytest.raises(CheckpointError, match="max_candidates"):
        small.load_state(loaded_arrays, loaded_meta["policy"])


# ----------------------------------------------------------------------------- training (sim)

ITEMS = [Example(f"e{i}", f"item {i}", target="even" if i % 2 == 0 else "odd") for i in range(120)]
TRUTH = {e.text: e.target for e in ITEMS}


def scripted(req: SimRequest) -> str:
    """A fake model that is right 90% of the time under a GOOD instruction, 50% with demos,
    10% otherwise (greedy: right iff at least 50%); reflection asks get a GOOD instruction."""
    p = req.prompt
    if "improving the instruction" in p:
        return "GOOD: reply even or odd, nothing else.</instruction>"
    x = p.rsplit("Input:", 1)[-1].split("\n", 1)[0].strip()
    truth = str(TRUTH.get(x, "even"))
    q = 0.9 if "GOOD" in p else (0.5 if "Output: " in p else 0.1)
    if req.temperature == 0:
        return truth if q >= 0.5 else "maybe"
    r = random.Random(f"{req.seed}:{req.index}:{p}")
    return truth if r.random() < q else "maybe"


def sim_config(base_url: str, **changes: Any) -> RunConfig:
    cfg = RunConfig(
        policy="prompt",
        steps=8,
        seed=0,
        endpoint=EndpointConfig(base_url=base_url, model="sim", mode="completions", max_tokens=4),
        prompt=PromptPolicyConfig(
            instructions=("Answer.", "GOOD: say even or odd."), max_demos=2, max_candidates=6
        ),
        grpo=GRPOConfig(group_size=4, mini_batch_size=2),
        optim=OptimConfig(lr=0.3),
        data=DataConfig(batch_size=4, eval_fraction=0.25),
        trainer=TrainerConfig(eval_every=4, eval_size=24, checkpoint_every=3),
        limits=LimitsConfig(max_concurrency=32),
    )
    return dataclasses.replace(cfg, **changes)


async def test_training_moves_mass_to_the_good_candidates_and_improves_heldout() -> None:
    """Against a scripted server, GRPO puts the mass on GOOD prompts; held-out accuracy rises."""
    async with SimServer(SimConfig(model=scripted)) as sim:
        cfg = sim_config(sim.base_url)
        async with Client(cfg.endpoint, limits=cfg.limits) as client:
            pol = PromptPolicy.from_config(cfg, client, examples=ITEMS)
            good = {c.id for c, _ in pol.probabilities() if "GOOD" in c.instruction}
            mass0 = sum(p for c, p in pol.probabilities() if c.id in good)
            async with TrainingManager(
                cfg, policy=pol, rewarder=build_rewarder(cfg), train=ITEMS, out=None
            ) as tm:
                summary = await tm.run()
    mass = sum(p for c, p in pol.probabilities() if c.id in good)
    assert mass0 == pytest.approx(0.5)  # 2 instructions x (zero-shot + 2 demo sets)
    assert mass > 0.8
    assert summary.eval_before == 0.0  # greedy base prompt: "maybe"
    assert summary.eval_after is not None and summary.eval_after >= 0.9
    assert pol.best().instruction.startswith("GOOD")


async def test_growth_against_the_sim_adds_reflected_candidates() -> None:
    """Reflection proposes a GOOD instruction from the rollouts; GOOD prompts take the mass."""
    async with SimServer(SimConfig(model=scripted)) as sim:
        cfg = sim_config(
            sim.base_url,
            prompt=PromptPolicyConfig(
                instructions=("Answer.",),
                max_demos=2,
                max_candidates=5,
                propose_every=2,
                select_served=False,  # growth without acceptance: see test_selection.py
            ),
        )
        events = EventLog(None)
        async with Client(cfg.endpoint, limits=cfg.limits, events=events) as client:
            pol = PromptPolicy.from_config(cfg, client, examples=ITEMS)
            seen: list[BatchMetrics] = []
            async with TrainingManager(
                cfg, policy=pol, rewarder=build_rewarder(cfg), train=ITEMS, out=None,
                on_batch_complete=seen.append, events=events,
            ) as tm:  # fmt: skip
                summary = await tm.run()
    reflected = [pol.candidate(i) for i in range(pol.table.next_id)]
    reflected = [c for c in reflected if c.origin == "reflection"]
    assert reflected and reflected[0].instruction.startswith("GOOD")
    assert seen[1].all["prompt/proposed"] >= 1 and seen[1].all["requests/proposal"] == 1
    assert all(m.all["prompt/candidates"] <= 5 for m in seen)
    assert pol.best().instruction.startswith("GOOD")
    assert summary.eval_before == 0.0 and summary.eval_after == 1.0


async def test_resume_with_growth_continues_exactly(tmp_path: Path) -> None:
    """Interrupted and resumed, a run with candidate growth ends where the straight one does."""
    async with SimServer(SimConfig(model=scripted)) as sim:
        cfg = sim_config(
            sim.base_url,
            steps=6,
            prompt=PromptPolicyConfig(
                instructions=("Answer.", "Reply."), max_demos=2, max_candidates=6, propose_every=2
            ),
            trainer=TrainerConfig(eval_every=0, checkpoint_every=1),
        )
        async with Client(cfg.endpoint, limits=cfg.limits) as client:

            def fresh() -> PromptPolicy:
                return PromptPolicy.from_config(cfg, client, examples=ITEMS)

            rew = build_rewarder(cfg)
            async with TrainingManager(
                cfg, policy=fresh(), rewarder=rew, train=ITEMS, out=tmp_path / "a"
            ) as a:
                await a.run()
                straight = a.policy.state()

            def stop_after_3(m: BatchMetrics) -> None:
                if m.batch_id == 2:
                    b.request_stop()

            async with TrainingManager(
                cfg, policy=fresh(), rewarder=rew, train=ITEMS, out=tmp_path / "b",
                on_batch_complete=stop_after_3,
            ) as b:  # fmt: skip
                await b.run()
            async with TrainingManager(
                cfg, policy=fresh(), rewarder=rew, train=ITEMS, out=tmp_path / "b"
            ) as c:
                await c.run(resume=tmp_path / "b")
                resumed = c.policy.state()
    for k in straight[0]:
        np.testing.assert_array_equal(resumed[0][k], straight[0][k], err_msg=k)
    assert resumed[1] == straight[1]


def test_cli_runs_the_local_example_against_the_sim(tmp_path: Path) -> None:
    """``python -m engine run --config examples/local.toml`` works with the prompt policy."""
    root = Path(__file__).resolve().parents[3]
    sim = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve-sim", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        out = tmp_path / "run"
        proc = subprocess.run(
            [
                sys.executable, "-m", "engine", "run",
                "--config", str(root / "examples/local.toml"), "--out", str(out),
                "--steps", "2", "--set", f"endpoint.base_url='{base_url}'",
                "--export-groups", str(out / "groups.jsonl"), "--quiet",
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summary = orjson.loads((out / "summary.json").read_bytes())
        assert summary["policy"] == "prompt" and summary["steps_done"] == 2
        events = [orjson.loads(x) for x in (out / "events.jsonl").read_bytes().splitlines()]
        assert any(e.get("kind") == "generation" and e.get("status") == 200 for e in events)
        assert len((out / "groups.jsonl").read_bytes().splitlines()) == 2 * 4
        proc = subprocess.run(
            [
                sys.executable, "-m", "engine", "eval", "--checkpoint", str(out),
                "--data", str(root / "engine/data/datasets/sentiment.jsonl"), "--limit", "6",
                "--set", f"endpoint.base_url='{base_url}'", "--json", "--quiet",
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = orjson.loads(proc.stdout)
        assert result["n"] == 6 and result["errors"] == 0 and result["requests"] == 6
    finally:
        sim.terminate()
        sim.wait(timeout=30)
        if sim.stdout is not None:
            sim.stdout.close()


@pytest.mark.parametrize(("lr", "warned"), [(0.01, True), (0.2, False)])
def test_a_learning_rate_too_low_for_the_prompt_policy_is_warned(lr: float, warned: bool) -> None:
    """build_components warns when the prompt policy gets the embedded LM's learning rate."""
    import structlog

    from engine.config.loading import load_config
    from engine.training.assembly import build_components

    cfg = load_config(None, ["policy='prompt'", f"optim.lr={lr}"])
    client = Client(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    with structlog.testing.capture_logs() as logs:
        build_components(cfg, client=client)
    low = [e for e in logs if e["event"] == "prompt_policy.low_lr"]
    assert bool(low) is warned
    if warned:
        assert low[0]["log_level"] == "warning" and low[0]["lr"] == 0.01
