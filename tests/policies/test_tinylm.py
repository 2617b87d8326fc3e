"""The embedded LM: exact GRPO gradients, sampling, determinism, state, and that it learns."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import pytest

from engine.config.sections import GRPOConfig, TinyLMConfig
from engine.data.tasks import make_examples, reward
from engine.errors import CheckpointError
from engine.policies.base import Policy
from engine.policies.tinylm import TinyLM
from engine.types import Example, Rollout

SMALL = TinyLMConfig(context=8, embed_dim=3, hidden=8, init_scale=0.5)


def _perturb(policy: TinyLM, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in policy.parameters().values():
        v += rng.normal(0.0, scale, size=v.shape)


async def _rollouts(
    policy: TinyLM, cfg: TinyLMConfig, n_prompts: int, g: int, seed: int
) -> list[Rollout]:
    """Sample g completions for each of n_prompts prompts from the current parameters."""
    rng = np.random.default_rng(seed)
    snap = policy.snapshot(0)
    out: list[Rollout] = []
    for ex in make_examples(cfg, n_prompts, seed):
        samples = await policy.generate(snap, ex, g, rng)
        for i, s in enumerate(samples):
            out.append(Rollout(ex.id, i, 0, s, reward=reward(ex, s.text)))
    return out


async def _offpolicy_batch(
    loss_seed: int = 0,
) -> tuple[TinyLM, list[Rollout], np.ndarray]:
    """Rollouts whose behaviour policy, current policy and reference all differ."""
    policy = TinyLM(SMALL, seed=loss_seed)  # reference = these initial parameters
    _perturb(policy, 0.4, seed=100)  # current policy: away from the reference (KL > 0)
    behaviour = TinyLM(SMALL, seed=loss_seed)
    behaviour.load_state(*policy.state())
    _perturb(behaviour, 0.15, seed=200)  # old logprobs from a perturbed copy: ratio != 1
    rollouts = await _rollouts(behaviour, SMALL, n_prompts=3, g=4, seed=loss_seed)
    advantages = np.random.default_rng(300).normal(size=len(rollouts))
    return policy, rollouts, advantages


def _numeric_grad(
    policy: TinyLM, rollouts: list[Rollout], adv: np.ndarray, cfg: GRPOConfig, h: float = 1e-6
) -> dict[str, np.ndarray]:
    out = {}
    for name, v in policy.parameters().items():
        g = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            orig = v[i]
            v[i] = orig + h
            up = policy.loss_and_grad(rollouts, adv, cfg)[0]["loss"]
            v[i] = orig - h
            down = policy.loss_and_grad(rollouts, adv, cfg)[0]["loss"]
            v[i] = orig
            g[i] = (up - down) / (2 * h)
        out[name] = g
    return out


def _all_logprobs(
    params: Mapping[str, np.ndarray], seq: list[int], t: int, cfg: TinyLMConfig, pad: int
) -> np.ndarray:
    """log p(. | seq[:t]) over the completion vocabulary, by the formula, for one position."""
    window = [seq[j] if j >= 0 else pad for j in range(t - cfg.context, t)]
    x = np.concatenate([params["embed"][tok] for tok in window])
    h = np.tanh(x @ params["W1"] + params["b1"])
    z = (h @ params["W2"] + params["b2"]) / cfg.temperature
    return z - math.log(sum(math.exp(zj) for zj in z))


def _naive_logprobs(
    params: Mapping[str, np.ndarray], seq: list[int], start: int, cfg: TinyLMConfig, pad: int
) -> list[float]:
    """log p(seq[t] | seq[:t]) for t >= start, one position at a time."""
    return [float(_all_logprobs(params, seq, t, cfg, pad)[seq[t]]) for t in range(start, len(seq))]


def test_tinylm_is_a_policy() -> None:
    """TinyLM satisfies the Policy protocol and names itself tinylm."""
    policy = TinyLM(TinyLMConfig(), seed=0)
    assert isinstance(policy, Policy)
    assert policy.name == "tinylm"
    assert all(v.dtype == np.float64 for v in policy.parameters().values())


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("epsilon_high", [None, 0.28])
async def test_gradient_matches_finite_differences(
    loss_type: str, epsilon_high: float | None
) -> None:
    """Every parameter's gradient equals central differences, off-policy, with KL and entropy."""
    policy, rollouts, adv = await _offpolicy_batch()
    cfg = GRPOConfig(
        epsilon=0.2, epsilon_high=epsilon_high, beta=0.3, entropy_coef=0.05, loss_type=loss_type
    )
    metrics, grads = policy.loss_and_grad(rollouts, adv, cfg)
    # the case is non-trivial: both clip sides active, KL and entropy non-zero
    assert metrics["clip_ratio/low"] > 0 and metrics["clip_ratio/high"] > 0
    assert metrics["clip_ratio"] < 1 and metrics["kl"] > 0.01 and metrics["entropy"] > 0.1
    numeric = _numeric_grad(policy, rollouts, adv, cfg)
    assert grads.keys() == policy.parameters().keys()
    for name, g in grads.items():
        assert g.shape == policy.parameters()[name].shape
        np.testing.assert_allclose(g, numeric[name], rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
async def test_loss_equals_naive_loop(loss_type: str) -> None:
    """The batched loss and metrics equal a plain per-token loop over the paper's formulas."""
    policy, rollouts, adv = await _offpolicy_batch()
    beta, ent_coef, eps, eps_high = 0.3, 0.05, 0.2, 0.28
    cfg = GRPOConfig(
        epsilon=eps, epsilon_high=eps_high, beta=beta, entropy_coef=ent_coef, loss_type=loss_type
    )
    metrics, _ = policy.loss_and_grad(rollouts, adv, cfg)
    params = policy.parameters()
    ref = {k[4:]: v for k, v in policy.state()[0].items() if k.startswith("ref/")}
    pad = policy.tokenizer.pad
    loss_seq: list[list[float]] = []  # per rollout, per token: total loss
    pg_seq: list[list[float]] = []  # per rollout, per token: clipped surrogate
    kls: list[float] = []
    ents: list[float] = []
    for r, a in zip(rollouts, adv, strict=True):
        s = r.sample
        seq = [*s.prompt_ids.tolist(), *s.token_ids.tolist()]
        start = len(s.prompt_ids)
        loss_seq.append([])
        pg_seq.append([])
        for t, lp_old in enumerate(s.logprobs):
            logp = _all_logprobs(params, seq, start + t, SMALL, pad)
            lp_new = logp[seq[start + t]]
            lp_ref = _all_logprobs(ref, seq, start + t, SMALL, pad)[seq[start + t]]
            ratio = math.exp(lp_new - lp_old)
            pg = max(-a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps_high))
            kl = math.exp(lp_ref - lp_new) - (lp_ref - lp_new) - 1
            ent = -sum(math.exp(x) * x for x in logp)
            loss_seq[-1].append(pg + beta * kl - ent_coef * ent)
            pg_seq[-1].append(pg)
            kls.append(kl)
            ents.append(ent)

    def aggregate(per_seq: list[list[float]]) -> float:
        n, flat = len(per_seq), [x for xs in per_seq for x in xs]
        if loss_type == "grpo":
            return sum(sum(xs) / len(xs) for xs in per_seq) / n
        if loss_type == "dapo":
            return sum(flat) / len(flat)
        return sum(flat) / (n * (SMALL.prompt_len + 1))

    assert metrics["loss"] == pytest.approx(aggregate(loss_seq), rel=1e-10)
    assert metrics["policy_loss"] == pytest.approx(aggregate(pg_seq), rel=1e-10)
    assert metrics["kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-10)
    assert metrics["entropy"] == pytest.approx(sum(ents) / len(ents), rel=1e-10)
    assert metrics["tokens"] == len(kls)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
async def test_sampled_logprobs_equal_recomputed(temperature: float) -> None:
    """Sample.logprobs are the model's log-probabilities (at the temperature) of those tokens."""
    cfg = dataclasses.replace(SMALL, temperature=temperature)
    policy = TinyLM(cfg, seed=1)
    _perturb(policy, 0.5, seed=2)  # a non-uniform model
    rollouts = await _rollouts(policy, cfg, n_prompts=4, g=6, seed=3)
    for r in rollouts:
        s = r.sample
        seq = [*s.prompt_ids.tolist(), *s.token_ids.tolist()]
        pad = policy.tokenizer.pad
        expected = _naive_logprobs(policy.parameters(), seq, len(s.prompt_ids), cfg, pad)
        np.testing.assert_allclose(s.logprobs, expected, rtol=1e-12, atol=1e-12)
    # and the loss sees the same numbers: on-policy ratio is exactly 1
    m, _ = policy.loss_and_grad(rollouts, np.ones(len(rollouts)), GRPOConfig())
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-12)


async def test_samples_are_well_formed() -> None:
    """Text decodes token_ids; EOS ends 'stop' samples; the cap gives 'length'; usage counts."""
    cfg = TinyLMConfig()
    policy = TinyLM(cfg, seed=0)
    ex = make_examples(cfg, 1, seed=0)[0]
    samples = await policy.generate(policy.snapshot(0), ex, 64, np.random.default_rng(0))
    assert len(samples) == 64
    eos = policy.tokenizer.eos
    assert {s.finish_reason for s in samples} == {"stop", "length"}
    for s in samples:
        assert s.error is None and s.prompt == ex.text
        assert s.prompt_ids.tolist() == policy.tokenizer.encode_prompt(ex.text).tolist()
        assert 1 <= len(s.token_ids) <= cfg.prompt_len + 1
        assert len(s.logprobs) == len(s.token_ids)
        assert np.all(s.logprobs <= 0)
        assert (s.finish_reason == "stop") == (s.token_ids[-1] == eos)
        assert eos not in s.token_ids[:-1].tolist()
        assert s.text == policy.tokenizer.decode(s.token_ids)
        assert s.usage.prompt_tokens == cfg.prompt_len + 2
        assert s.usage.completion_tokens == len(s.token_ids)


async def test_initial_policy_is_uniform() -> None:
    """The output layer starts at zero: every token has probability 1 / (digits + 1)."""
    cfg = TinyLMConfig()
    policy = TinyLM(cfg, seed=0)
    ex = make_examples(cfg, 1, seed=0)[0]
    samples = await policy.generate(policy.snapshot(0), ex, 8, np.random.default_rng(0))
    for s in samples:
        np.testing.assert_allclose(s.logprobs, -math.log(cfg.vocab_digits + 1))


async def test_greedy_is_deterministic() -> None:
    """Greedy decoding ignores the rng: every sample and every call gives the same argmax path."""
    policy = TinyLM(SMALL, seed=0)
    _perturb(policy, 0.5, seed=1)
    ex = make_examples(SMALL, 1, seed=0)[0]
    snap = policy.snapshot(0)
    a = await policy.generate(snap, ex, 4, np.random.default_rng(0), greedy=True)
    b = await policy.generate(snap, ex, 2, np.random.default_rng(99), greedy=True)
    assert len({s.text for s in a + b}) == 1
    assert all(np.array_equal(s.token_ids, a[0].token_ids) for s in a + b)


async def test_sampling_reproducible_by_seed() -> None:
    """The same rng seed gives the same samples; another seed gives others."""
    policy = TinyLM(TinyLMConfig(), seed=0)
    ex = make_examples(TinyLMConfig(), 1, seed=0)[0]
    snap = policy.snapshot(0)

    async def texts(seed: int) -> list[list[int]]:
        out = await policy.generate(snap, ex, 16, np.random.default_rng(seed))
        return [s.token_ids.tolist() for s in out]

    assert await texts(5) == await texts(5)
    assert await texts(5) != await texts(6)


async def test_unencodable_prompt_gives_error_samples() -> None:
    """A prompt outside the task's vocabulary yields n samples carrying an error, no exception."""
    policy = TinyLM(TinyLMConfig(), seed=0)
    ex = Example(id="x", text="Write a poem about the sea")
    samples = await policy.generate(policy.snapshot(0), ex, 3, np.random.default_rng(0))
    assert len(samples) == 3
    assert all(s.error and "not a digit" in s.error for s in samples)


async def test_snapshot_is_frozen_and_loss_does_not_mutate() -> None:
    """Snapshots are read-only copies; loss_and_grad leaves the parameters untouched."""
    policy = TinyLM(SMALL, seed=0)
    snap = policy.snapshot(3)
    assert snap.version == 3
    with pytest.raises(ValueError):
        snap.params["W1"][0, 0] = 1.0
    before = {k: v.copy() for k, v in policy.parameters().items()}
    policy.parameters()["b2"] += 1.0  # a later in-place update does not reach the snapshot
    np.testing.assert_array_equal(snap.params["b2"], before["b2"])
    policy.parameters()["b2"] -= 1.0
    rollouts = await _rollouts(policy, SMALL, 2, 3, seed=0)
    policy.loss_and_grad(rollouts, np.arange(6.0) - 2.5, GRPOConfig(beta=0.1, entropy_coef=0.1))
    for k, v in policy.parameters().items():
        np.testing.assert_array_equal(v, before[k])


async def test_clip_ratio_zero_on_policy() -> None:
    """When old == new logprobs, nothing is clipped and the surrogate is -mean(advantage)."""
    policy = TinyLM(SMALL, seed=0)
    _perturb(policy, 0.3, seed=1)
    rollouts = await _rollouts(policy, SMALL, 3, 4, seed=2)
    adv = np.random.default_rng(3).normal(size=len(rollouts))
    m, _ = policy.loss_and_grad(rollouts, adv, GRPOConfig(epsilon=0.1, beta=0.0))
    assert m["clip_ratio"] == 0 and m["clip_ratio/low"] == 0 and m["clip_ratio/high"] == 0
    assert m["approx_kl"] == pytest.approx(0.0, abs=1e-12)
    assert m["policy_loss"] == pytest.approx(-adv.mean(), rel=1e-12)


@pytest.mark.parametrize(
    ("advantage", "shift", "clipped_side"),
    [
        (1.0, -1.0, "high"),  # A > 0, ratio = e > 1 + eps_high: clipped, no gradient
        (-1.0, 1.0, "low"),  # A < 0, ratio = 1/e < 1 - eps: clipped, no gradient
        (1.0, 1.0, None),  # A > 0, ratio < 1 - eps: the pessimistic bound keeps the gradient
        (-1.0, -1.0, None),  # A < 0, ratio > 1 + eps: likewise
    ],
)
async def test_clipped_tokens_have_zero_surrogate_gradient(
    advantage: float, shift: float, clipped_side: str | None
) -> None:
    """Tokens on the active side of the clip contribute no gradient; the other side does."""
    policy = TinyLM(SMALL, seed=0)
    _perturb(policy, 0.3, seed=1)
    [r] = await _rollouts(policy, SMALL, 1, 1, seed=2)
    r.sample.logprobs = r.sample.logprobs + shift  # logratio = -shift at every token
    cfg = GRPOConfig(epsilon=0.2, epsilon_high=0.28, beta=0.0, entropy_coef=0.0)
    m, grads = policy.loss_and_grad([r], np.array([advantage]), cfg)
    total = sum(float(np.abs(g).sum()) for g in grads.values())
    if clipped_side is None:
        assert m["clip_ratio"] == 0 and total > 0
    else:
        assert m["clip_ratio"] == 1 and m[f"clip_ratio/{clipped_side}"] == 1
        assert total == 0.0


def test_state_round_trip() -> None:
    """state() -> load_state() restores parameters and the KL reference exactly."""
    a = TinyLM(SMALL, seed=0)
    _perturb(a, 0.2, seed=1)
    arrays, meta = a.state()
    assert {"params/W1", "ref/W1"} <= arrays.keys()
    assert meta["config"]["hidden"] == SMALL.hidden and meta["vocab"] == a.tokenizer.vocab()
    b = TinyLM(SMALL, seed=7)
    live = b.parameters()["W1"]
    b.load_state(arrays, meta)
    assert b.parameters()["W1"] is live  # in place: an optimizer's references stay valid
    for prefix in ("params", "ref"):
        for k, v in b.state()[0].items():
            if k.startswith(prefix):
                np.testing.assert_array_equal(v, arrays[k])


@pytest.mark.parametrize(
    "change",
    [
        {"hidden": 9},
        {"embed_dim": 4},
        {"context": 6},
        {"vocab_digits": 5},
        {"task": "sort"},
        {"prompt_len": 5},
    ],
)
def test_load_state_rejects_mismatched_config(change: dict) -> None:
    """A checkpoint of another architecture or task is a CheckpointError naming the field."""
    arrays, meta = TinyLM(SMALL, seed=0).state()
    other = TinyLM(dataclasses.replace(SMALL, **change), seed=0)
    with pytest.raises(CheckpointError, match=next(iter(change))):
        other.load_state(arrays, meta)


def test_load_state_rejects_bad_arrays_and_meta() -> None:
    """Missing or misshapen arrays, or another policy's meta, are CheckpointErrors."""
    policy = TinyLM(SMALL, seed=0)
    arrays, meta = policy.state()
    with pytest.raises(CheckpointError, match="lacks"):
        policy.load_state({k: v for k, v in arrays.items() if k != "ref/b1"}, meta)
    with pytest.raises(CheckpointError, match="shape"):
        policy.load_state({**arrays, "params/b2": np.zeros(3)}, meta)
    with pytest.raises(CheckpointError, match="non-finite"):
        policy.load_state({**arrays, "params/b2": np.full(7, np.nan)}, meta)
    with pytest.raises(CheckpointError, match="policy"):
        policy.load_state(arrays, {**meta, "policy": "prompt"})


async def test_learns_copy_task() -> None:
    """A short GRPO run with Adam lifts the copy task's reward well above chance."""
    cfg = TinyLMConfig(task="copy")
    grpo = GRPOConfig(beta=0.01)
    policy = TinyLM(cfg, seed=0)
    params = policy.parameters()
    m1 = {k: np.zeros_like(v) for k, v in params.items()}
    m2 = {k: np.zeros_like(v) for k, v in params.items()}
    rng = np.random.default_rng(0)
    data = make_examples(cfg, 400, seed=0)
    curve = []
    for step in range(25):
        snap = policy.snapshot(step)
        rollouts, adv = [], []
        for ex in data[step * 8 : step * 8 + 8]:
            samples = await policy.generate(snap, ex, 8, rng)
            r = np.array([reward(ex, s.text) for s in samples])
            for i, (s, x) in enumerate(zip(samples, r, strict=True)):
                rollouts.append(Rollout(ex.id, i, step, s, reward=float(x)))
            adv.append((r - r.mean()) / (r.std() + 1e-4))
        curve.append(np.mean([r.reward for r in rollouts]))
        _, grads = policy.loss_and_grad(rollouts, np.concatenate(adv), grpo)
        for k, g in grads.items():  # Adam, lr 0.01
            m1[k] = 0.9 * m1[k] + 0.1 * g
            m2[k] = 0.999 * m2[k] + 0.001 * g * g
            t = step + 1
            params[k] -= 0.01 * (m1[k] / (1 - 0.9**t)) / (np.sqrt(m2[k] / (1 - 0.999**t)) + 1e-8)
    assert np.mean(curve[:3]) < 0.2
    assert np.mean(curve[-3:]) > 0.6
