"""Loss masks of multi-turn episodes on the embedded LM: only the policy's own tokens carry
loss; the environment's tokens are context (issue 15, deliverable 4).

Every episode here is real: turns sampled by :meth:`TinyLM.generate_turn` from a perturbed
copy of the policy, environment replies encoded by the policy's tokenizer, the whole episode
one Sample with ``loss_mask``; gradients are the policy's exact ones (checked against central
differences).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.config.sections import GRPOConfig, TinyLMConfig
from engine.policies.base import TurnPolicy
from engine.policies.objective import grpo_objective
from engine.policies.tinylm import TinyLM
from engine.types import Example, Rollout, Sample

CALC = TinyLMConfig(vocab="calculator", context=6, embed_dim=3, hidden=6, init_scale=0.5)
FULL = GRPOConfig(epsilon=0.2, epsilon_high=0.28, beta=0.3, entropy_coef=0.05)
REPLIES = ("<tool_result>12</tool_result>", "<tool_result>error: bad</tool_result>")


def _perturb(policy: TinyLM, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in policy.parameters().values():
        v += rng.normal(0.0, scale, size=v.shape)


async def _episode(
    behaviour: TinyLM, example: Example, rng: np.random.Generator, turns: int
) -> tuple[Sample, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """One episode as ONE sample, and its turns as (context, tokens, logprobs)."""
    snap = behaviour.snapshot(0)
    prompt = behaviour.prompt_ids(example)
    context = prompt.copy()
    ids: list[np.ndarray] = []
    lps: list[np.ndarray] = []
    mask: list[np.ndarray] = []
    parts = []
    for t in range(turns):
        s = await behaviour.generate_turn(snap, context, rng, stop=["</tool_call>"], max_tokens=5)
        assert s.token_ids is not None and s.logprobs is not None
        parts.append((context.copy(), s.token_ids, s.logprobs))
        ids.append(s.token_ids)
        lps.append(s.logprobs)
        mask.append(np.ones(len(s.token_ids), dtype=bool))
        context = np.concatenate([context, s.token_ids])
        if t < turns - 1:
            env = behaviour.encode(REPLIES[t % 2])
            ids.append(env)
            lps.append(np.full(len(env), np.nan))
            mask.append(np.zeros(len(env), dtype=bool))
            context = np.concatenate([context, env])
    sample = Sample(
        text="",
        token_ids=np.concatenate(ids),
        logprobs=np.concatenate(lps),
        prompt_ids=prompt,
        loss_mask=np.concatenate(mask),
    )
    return sample, parts


async def _batch(
    seed: int = 0,
) -> tuple[TinyLM, list[Rollout], np.ndarray, list[list[tuple]]]:
    """Multi-turn rollouts whose behaviour policy, current policy and reference all differ."""
    policy = TinyLM(CALC, seed=seed)
    _perturb(policy, 0.4, seed=100)
    behaviour = TinyLM(CALC, seed=seed)
    behaviour.load_state(*policy.state())
    _perturb(behaviour, 0.15, seed=200)
    rng = np.random.default_rng(seed)
    rollouts, parts = [], []
    for i in range(4):
        ex = Example(id=f"calc-{i}", text=f"What is {i + 3} * 4?")
        sample, turns = await _episode(behaviour, ex, rng, turns=2 + i % 2)
        rollouts.append(Rollout(ex.id, 0, 0, sample))
        parts.append(turns)
    adv = np.random.default_rng(300).normal(size=len(rollouts))
    return policy, rollouts, adv, parts


def _env_changed(rollouts: list[Rollout], rng: np.random.Generator) -> list[Rollout]:
    """The same episodes with other behaviour log-probabilities at the environment's tokens."""

    def change(s: Sample) -> dict:
        lp = np.array(s.logprobs, copy=True)
        env = ~np.asarray(s.loss_mask, dtype=bool)
        lp[env] = rng.normal(-3.0, 2.0, size=int(env.sum()))
        return {"logprobs": lp}

    return [
        dataclasses.replace(r, sample=dataclasses.replace(r.sample, **change(r.sample)))
        for r in rollouts
    ]


def test_policies_are_turn_policies() -> None:
    """TinyLM satisfies the TurnPolicy protocol."""
    assert isinstance(TinyLM(CALC, seed=0), TurnPolicy)


async def test_environment_logprobs_do_not_change_the_gradient() -> None:
    """NaN, or any numbers, at the environment's positions: the same loss, metrics and
    gradient, bit for bit."""
    policy, rollouts, adv, _ = await _batch()
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        cfg = dataclasses.replace(FULL, loss_type=loss_type)
        m0, g0 = policy.loss_and_grad(rollouts, adv, cfg)
        m1, g1 = policy.loss_and_grad(_env_changed(rollouts, np.random.default_rng(1)), adv, cfg)
        assert m0 == m1
        for k in g0:
            np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)

    # the environment's tokens are real context: other reply tokens change the gradient
    def other_reply(s: Sample) -> Sample:
        ids = np.array(s.token_ids, copy=True)
        env = ~np.asarray(s.loss_mask, dtype=bool)
        ids[env] = policy.tokenizer.encode("7")[0]
        return dataclasses.replace(s, token_ids=ids)

    changed = [dataclasses.replace(r, sample=other_reply(r.sample)) for r in rollouts]
    _, g2 = policy.loss_and_grad(changed, adv, FULL)
    _, g0 = policy.loss_and_grad(rollouts, adv, FULL)
    assert not np.allclose(g0["W1"], g2["W1"])


async def test_masked_gradient_matches_finite_differences() -> None:
    """The masked loss's gradient equals central differences for every parameter."""
    policy, rollouts, adv, _ = await _batch()
    metrics, grads = policy.loss_and_grad(rollouts, adv, FULL)
    assert metrics["kl"] > 0.01 and metrics["entropy"] > 0.1 and 0 < metrics["clip_ratio"] < 1
    h = 1e-6
    for name, v in policy.parameters().items():
        num = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            orig = v[i]
            v[i] = orig + h
            up = policy.loss_and_grad(rollouts, adv, FULL)[0]["loss"]
            v[i] = orig - h
            down = policy.loss_and_grad(rollouts, adv, FULL)[0]["loss"]
            v[i] = orig
            num[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-8, err_msg=name)


async def test_one_masked_sequence_equals_its_turns() -> None:
    """Under the token-level mean (dapo) an episode trained as one masked sequence has the
    loss, metrics and gradient of its policy turns trained as separate completions of the
    context before each: the environment's tokens add nothing to the loss, KL, entropy,
    clip ratio or the token count."""
    policy, rollouts, adv, parts = await _batch()
    split: list[Rollout] = []
    split_adv: list[float] = []
    for r, a, turns in zip(rollouts, adv, parts, strict=True):
        for j, (context, ids, lps) in enumerate(turns):
            s = Sample(text="", token_ids=ids, logprobs=lps, prompt_ids=context)
            split.append(Rollout(r.group_id, j, 0, s))
            split_adv.append(float(a))
    cfg = dataclasses.replace(FULL, loss_type="dapo")
    m_seq, g_seq = policy.loss_and_grad(rollouts, adv, cfg)
    m_turn, g_turn = policy.loss_and_grad(split, np.array(split_adv), cfg)
    assert m_seq["tokens"] == sum(int(r.sample.loss_mask.sum()) for r in rollouts)
    assert m_seq["tokens"] < sum(len(r.sample.token_ids) for r in rollouts)
    assert m_seq.keys() == m_turn.keys()
    for k in m_seq:
        assert m_seq[k] == pytest.approx(m_turn[k], rel=1e-12, abs=1e-15), k
    for k in g_seq:
        np.testing.assert_allclose(g_seq[k], g_turn[k], rtol=1e-10, atol=1e-14, err_msg=k)


async def test_grpo_normalises_by_policy_tokens() -> None:
    """``grpo`` averages over each episode's policy tokens: an episode's loss is the mean over
    its masked-in tokens, the environment's do not dilute it."""
    policy, rollouts, adv, _ = await _batch()
    cfg = dataclasses.replace(FULL, loss_type="grpo")
    total = policy.loss_and_grad(rollouts, adv, cfg)[0]["loss"]
    per_episode = [
        policy.loss_and_grad([r], adv[i : i + 1], cfg)[0]["loss"] for i, r in enumerate(rollouts)
    ]
    assert total == pytest.approx(np.mean(per_episode), rel=1e-12)
    # and one episode's loss is the mean of its tokens' losses, from the objective itself
    r = rollouts[0]
    keep = np.asarray(r.sample.loss_mask, dtype=bool)
    _, actions, old_lp, _, counts = policy._token_batch([r])
    assert counts.tolist() == [int(keep.sum())]
    np.testing.assert_array_equal(actions, np.asarray(r.sample.token_ids)[keep])
    np.testing.assert_array_equal(old_lp, np.asarray(r.sample.logprobs)[keep])
    assert np.isfinite(old_lp).all()


async def test_all_ones_mask_is_no_mask() -> None:
    """A mask of ones trains exactly what no mask trains (single-turn samples unchanged)."""
    policy, rollouts, adv, _ = await _batch()
    plain = [
        dataclasses.replace(
            r,
            sample=dataclasses.replace(
                r.sample,
                token_ids=r.sample.token_ids[r.sample.loss_mask],
                logprobs=r.sample.logprobs[r.sample.loss_mask],
                loss_mask=None,
            ),
        )
        for r in rollouts
    ]
    ones = [
        dataclasses.replace(
            r, sample=dataclasses.replace(r.sample, loss_mask=np.ones(len(r.sample.token_ids)))
        )
        for r in plain
    ]
    m0, g0 = policy.loss_and_grad(plain, adv, FULL)
    m1, g1 = policy.loss_and_grad(ones, adv, FULL)
    assert m0 == m1
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k])


async def test_bad_masks_are_refused() -> None:
    """A mask of another length, or one that trains no token, is a clear error."""
    policy, rollouts, adv, _ = await _batch()
    r = rollouts[0]
    short = dataclasses.replace(r.sample, loss_mask=r.sample.loss_mask[:-1])
    with pytest.raises(ValueError, match="loss_mask/token_ids lengths"):
        policy.loss_and_grad([dataclasses.replace(r, sample=short)], adv[:1], FULL)
    none = dataclasses.replace(r.sample, loss_mask=np.zeros(len(r.sample.token_ids)))
    with pytest.raises(ValueError, match="trains no token"):
        policy.loss_and_grad([dataclasses.replace(r, sample=none)], adv[:1], FULL)


def test_objective_ignores_masked_entries_whatever_they_hold() -> None:
    """The shared objective: NaN or any numbers at masked-out entries (the environment's
    positions, padding) change neither the loss terms that count, d loss / d logp, nor the
    metrics, and the metrics equal those of the unmasked entries alone."""
    rng = np.random.default_rng(0)
    n, t = 3, 7
    new, old, ref = (rng.normal(-1.5, 0.3, size=(n, t)) for _ in range(3))
    ent = rng.uniform(0.5, 2.0, size=(n, t))
    mask = rng.random((n, t)) < 0.6
    mask[:, 0] = True
    adv = rng.normal(size=(n, 1))
    w = (1.0 / mask.sum()) * np.ones((n, 1))
    cfg = FULL
    a = grpo_objective(new, old, ref, adv, w, cfg, entropy=ent, mask=mask)
    noisy_old = np.where(mask, old, np.nan)
    noisy_new = np.where(mask, new, 50.0)
    b = grpo_objective(noisy_new, noisy_old, ref, adv, w, cfg, entropy=ent, mask=mask)
    assert a.metrics() == b.metrics()
    np.testing.assert_array_equal(a.dloss_dlogp, b.dloss_dlogp)
    assert np.isfinite(b.dloss_dlogp).all() and np.all(b.dloss_dlogp[~mask] == 0)
    flat = grpo_objective(
        new[mask],
        old[mask],
        ref[mask],
        np.broadcast_to(adv, (n, t))[mask],
        np.broadcast_to(w, (n, t))[mask],
        cfg,
        entropy=ent[mask],
    )
    for k, v in flat.metrics().items():
        assert a.metrics()[k] == pytest.approx(v, rel=1e-12), k


async def test_generate_turn_stops_at_stop_string_and_reports_logprobs() -> None:
    """A turn ends at ``</tool_call>`` (inside the call-close token), at ``<eos>`` or at
    max_tokens; its logprobs are the policy's recomputed ones."""
    policy = TinyLM(CALC, seed=0)
    tok = policy.tokenizer
    snap = policy.snapshot(0)
    prompt = policy.prompt_ids(Example(id="x", text="What is 3 * 4?"))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        s = await policy.generate_turn(snap, prompt, rng, stop=["</tool_call>"], max_tokens=6)
        ids = s.token_ids.tolist()
        assert s.prompt_ids.tolist() == prompt.tolist() and 1 <= len(ids) <= 6
        if ids[-1] == tok.eos:
            seen.add("eos")
            assert s.finish_reason == "stop" and tok.eos not in ids[:-1]
        elif ids[-1] == tok.call_close:
            seen.add("call")
            assert s.finish_reason == "stop" and s.text.endswith("</tool_call>")
        else:
            seen.add("length")
            assert s.finish_reason == "length" and len(ids) == 6
        # the initial policy is uniform over the completion vocabulary
        np.testing.assert_allclose(s.logprobs, -np.log(tok.num_outputs))
    assert seen == {"eos", "call", "length"}
    # greedy is deterministic and the logprobs match the training forward pass
    _perturb(policy, 0.5, seed=3)
    snap = policy.snapshot(1)
    g1 = await policy.generate_turn(snap, prompt, rng, stop=[], max_tokens=4, greedy=True)
    g2 = await policy.generate_turn(snap, prompt, rng, stop=[], max_tokens=4, greedy=True)
    assert g1.token_ids.tolist() == g2.token_ids.tolist()
    r = Rollout(
        "g", 0, 1, Sample(text="", token_ids=g1.token_ids, logprobs=g1.logprobs, prompt_ids=prompt)
    )
    windows, actions, _, _, _ = policy._token_batch([r])
    recomputed = policy._loss_forward(windows, actions).new_lp
    np.testing.assert_allclose(recomputed, g1.logprobs, rtol=1e-12)
