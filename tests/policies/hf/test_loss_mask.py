"""The hf policy on a tiny random Llama: TurnPolicy turns and loss masks of multi-turn
episodes (only the policy's tokens carry loss; the environment's are context)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from engine.config.sections import GRPOConfig, OptimConfig  # noqa: E402
from engine.policies.base import TurnPolicy  # noqa: E402
from engine.policies.hf.objective import grpo_loss  # noqa: E402
from engine.policies.hf.policy import HFPolicy  # noqa: E402
from engine.policies.objective import grpo_objective  # noqa: E402
from engine.types import Example, Rollout, Sample  # noqa: E402

from .tiny import tiny_policy  # noqa: E402

EXAMPLE = Example("e", "the food was good")
FULL = GRPOConfig(epsilon=0.2, beta=0.3, entropy_coef=0.05)
REPLY = "review : not very great"


async def _episodes(
    policy: HFPolicy, n: int, seed: int = 0, turns: int = 3
) -> tuple[list[Rollout], list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
    """n episodes of ``turns`` policy turns with an environment reply between them, each ONE
    sample with a loss mask; and each episode's turns as (context, tokens, logprobs)."""
    snap = policy.snapshot(0)
    rng = np.random.default_rng(seed)
    out, parts = [], []
    for i in range(n):
        prompt = policy.prompt_ids(EXAMPLE)
        context = prompt.copy()
        ids, lps, mask, turn_parts = [], [], [], []
        for t in range(turns):
            s = await policy.generate_turn(snap, context, rng, stop=["bad"], max_tokens=4)
            turn_parts.append((context.copy(), s.token_ids, s.logprobs))
            ids.append(s.token_ids)
            lps.append(s.logprobs)
            mask.append(np.ones(len(s.token_ids), dtype=bool))
            context = np.concatenate([context, s.token_ids])
            if t < turns - 1:
                env = policy.encode(REPLY)
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
        out.append(Rollout("0-0", i, 0, sample))
        parts.append(turn_parts)
    return out, parts


def _grads(policy: HFPolicy, rollouts: list[Rollout], adv: np.ndarray, grpo: GRPOConfig):
    """The accumulated gradient of the update's loss (before the optimizer step) and the
    tokens' numbers, through the policy's own micro-steps on its model thread."""

    def run() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        seqs = policy._sequences(rollouts, adv, grpo)
        record: dict[str, list[np.ndarray]] = {
            k: [] for k in ("new", "old", "ref", "adv", "w", "ent", "beh")
        }
        for p in policy._params.values():
            p.grad = None
        for mb in policy._micro_batches(seqs):
            policy._micro_step(mb, grpo, record)
        grads = {n: p.grad.detach().clone().numpy() for n, p in policy._params.items()}
        for p in policy._params.values():
            p.grad = None
        return grads, {k: np.concatenate(v) for k, v in record.items()}

    return policy._thread.call(run)


async def _moved(policy: HFPolicy) -> None:
    """Move the trained adapter off the reference, so KL and ratios are not trivial."""
    policy.configure_optimizer(OptimConfig(lr=0.05))
    warm, _ = await _episodes(policy, 4, seed=7, turns=2)
    policy.update(warm, np.array([1.0, -1.0, 0.5, -0.5]), grpo=GRPOConfig(), lr=0.05)


def test_hf_policy_is_a_turn_policy() -> None:
    assert isinstance(tiny_policy(), TurnPolicy)


async def test_generate_turn_continues_the_context_and_stops() -> None:
    """A turn continues the given ids, stops at a stop string (kept in the text) or at
    max_tokens, and reports the logprobs a forward pass of the context computes."""
    policy = tiny_policy(temperature=0.8)
    snap = policy.snapshot(0)
    context = np.concatenate([policy.prompt_ids(EXAMPLE), policy.encode("review : the room")])
    rng = np.random.default_rng(0)
    reasons = set()
    for _ in range(12):
        s = await policy.generate_turn(snap, context, rng, stop=["bad"], max_tokens=5)
        assert s.prompt_ids.tolist() == context.tolist()
        assert 1 <= len(s.token_ids) == len(s.logprobs) <= 5
        words = [policy.tokenizer.decode([t]) for t in s.token_ids.tolist()]
        if s.finish_reason == "length":
            assert len(s.token_ids) == 5 and "bad" not in words
        else:
            assert words[-1] in ("bad", "<eos>") and "bad" not in words[:-1]
            if words[-1] == "bad":
                assert s.text.endswith("bad")
        reasons.add(s.finish_reason)
        ids = torch.tensor([[*context.tolist(), *s.token_ids.tolist()]])
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0, len(context) - 1 : -1]
        lp = torch.log_softmax(logits / 0.8, -1).gather(-1, torch.tensor(s.token_ids)[:, None])
        np.testing.assert_allclose(s.logprobs, lp[:, 0].numpy(), atol=1e-5)
    assert reasons == {"stop", "length"}
    g1 = await policy.generate_turn(snap, context, rng, stop=[], max_tokens=3, greedy=True)
    g2 = await policy.generate_turn(snap, context, rng, stop=[], max_tokens=3, greedy=True)
    assert g1.token_ids.tolist() == g2.token_ids.tolist()
    enc = policy.encode("the food").tolist()
    assert policy.tokenizer.decode(enc) == "the food" and policy.tokenizer.bos_token_id not in enc


async def test_environment_logprobs_do_not_change_the_gradient() -> None:
    """NaN or any numbers at the environment's positions: the same gradient, bit for bit;
    the metrics count the policy's tokens only."""
    policy = tiny_policy(micro_batch_tokens=40)  # several micro-batches
    await _moved(policy)
    rollouts, _ = await _episodes(policy, 4)
    adv = np.array([1.0, -0.5, 0.25, -1.0])
    rng = np.random.default_rng(1)
    changed = []
    for r in rollouts:
        lp = np.array(r.sample.logprobs, copy=True)
        env = ~r.sample.loss_mask
        lp[env] = rng.normal(-2.0, 3.0, size=int(env.sum()))
        changed.append(dataclasses.replace(r, sample=dataclasses.replace(r.sample, logprobs=lp)))
    g0, rec0 = _grads(policy, rollouts, adv, FULL)
    g1, _ = _grads(policy, changed, adv, FULL)
    for n in g0:
        np.testing.assert_array_equal(g0[n], g1[n], err_msg=n)
    assert any(np.abs(g).sum() > 0 for g in g0.values())
    n_policy = sum(int(r.sample.loss_mask.sum()) for r in rollouts)
    assert rec0["new"].size == n_policy < sum(len(r.sample.token_ids) for r in rollouts)
    assert np.isfinite(rec0["old"]).all()
    metrics = policy.update(rollouts, adv, grpo=FULL, lr=0.01)
    assert metrics["tokens"] == n_policy and np.isfinite(list(metrics.values())).all()


async def test_one_masked_sequence_equals_its_turns() -> None:
    """dapo (token-level mean): an episode trained as one masked sequence has the gradient
    and the tokens' numbers of its turns trained as separate completions of the context
    before each -- the environment's tokens add nothing but context."""
    policy = tiny_policy()
    await _moved(policy)
    rollouts, parts = await _episodes(policy, 3)
    adv = np.array([1.0, -0.5, 0.75])
    split, split_adv = [], []
    for r, a, turns in zip(rollouts, adv, parts, strict=True):
        for j, (context, ids, lps) in enumerate(turns):
            s = Sample(text="", token_ids=ids, logprobs=lps, prompt_ids=context)
            split.append(Rollout(r.group_id, 10 * r.index + j, 0, s))
            split_adv.append(float(a))
    cfg = dataclasses.replace(FULL, loss_type="dapo")
    g_seq, rec_seq = _grads(policy, rollouts, adv, cfg)
    g_turn, rec_turn = _grads(policy, split, np.array(split_adv), cfg)
    for k in ("new", "old", "ref", "ent", "w", "adv"):
        np.testing.assert_allclose(rec_seq[k], rec_turn[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for n in g_seq:
        np.testing.assert_allclose(g_seq[n], g_turn[n], rtol=1e-3, atol=1e-6, err_msg=n)


async def test_bad_masks_are_refused() -> None:
    policy = tiny_policy()
    rollouts, _ = await _episodes(policy, 1, turns=2)
    s = rollouts[0].sample
    policy.configure_optimizer(OptimConfig(lr=0.01))
    for mask, match in ((s.loss_mask[:-1], "lengths"), (np.zeros_like(s.loss_mask), "no token")):
        bad = dataclasses.replace(rollouts[0], sample=dataclasses.replace(s, loss_mask=mask))
        with pytest.raises(ValueError, match=match):
            policy.update([bad], np.array([1.0]), grpo=FULL, lr=0.01)


def test_torch_objective_ignores_masked_entries_whatever_they_hold() -> None:
    """grpo_loss with NaN old logprobs at masked-out entries: the reference's loss and a
    finite gradient that is zero there."""
    rng = np.random.default_rng(0)
    n, t = 3, 6
    new, old, ref = (rng.normal(-1.5, 0.3, size=(n, t)) for _ in range(3))
    ent = rng.uniform(0.5, 2.0, size=(n, t))
    mask = rng.random((n, t)) < 0.6
    mask[:, 0] = True
    adv = rng.normal(size=(n, 1))
    w = np.full((n, 1), 1.0 / mask.sum())
    terms = grpo_objective(new, old, ref, adv, w, FULL, entropy=ent, mask=mask)
    new_t = torch.tensor(new, requires_grad=True)
    loss = grpo_loss(
        new_t,
        torch.tensor(np.where(mask, old, np.nan)),
        torch.tensor(ref),
        torch.tensor(adv),
        torch.tensor(w),
        FULL,
        entropy=torch.tensor(ent),
        mask=torch.tensor(mask),
    )
    loss.backward()
    assert float(loss.detach()) == pytest.approx(terms.metrics()["loss"], rel=1e-12)
    grad = new_t.grad.numpy()
    np.testing.assert_allclose(grad, terms.dloss_dlogp, rtol=1e-10, atol=1e-15)
    assert np.all(grad[~mask] == 0)
