"""The GRPO objective: hand-computed values, finite-difference dloss/dlogp, masks, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.config.sections import GRPOConfig
from engine.policies.objective import grpo_objective, sequence_weights, tis_weights


def _problem(seed: int, m: int = 12) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    new = np.log(rng.uniform(0.05, 0.95, m))
    old = new + rng.normal(0.0, 0.3, m)
    ref = new + rng.normal(0.0, 0.3, m)
    adv = rng.normal(0.0, 1.0, m)
    entropy = rng.uniform(0.1, 2.0, m)
    return new, old, ref, adv, entropy


def test_hand_computed_single_action() -> None:
    """One action: ratio 2 clipped at 1.2 for A = 1, the k3 KL and the loss by hand."""
    grpo = GRPOConfig(epsilon=0.2, beta=0.5, entropy_coef=0.1)
    new, old, ref = np.array([math.log(0.5)]), np.array([math.log(0.25)]), np.array([0.0])
    terms = grpo_objective(new, old, ref, np.array([1.0]), np.ones(1), grpo, entropy=np.ones(1))
    m = terms.metrics()
    kl = 2.0 - math.log(2.0) - 1.0  # exp(d) - d - 1 with d = log 1 - log 0.5
    assert m["ratio_mean"] == pytest.approx(2.0)
    assert m["policy_loss"] == pytest.approx(-1.2)
    assert m["kl"] == pytest.approx(kl)
    assert m["loss"] == pytest.approx(-1.2 + 0.5 * kl - 0.1)
    assert m["clip_ratio"] == 1.0 and m["clip_ratio/high"] == 1.0 and m["clip_ratio/low"] == 0.0
    assert m["approx_kl"] == pytest.approx(1.0 - math.log(2.0))
    assert m["tokens"] == 1.0
    # clipped: only the KL moves it; d kl / d logp_new = 1 - exp(ref - new) = 1 - 2
    assert terms.dloss_dlogp[0] == pytest.approx(0.5 * (1.0 - 2.0))
    assert terms.dloss_dentropy[0] == pytest.approx(-0.1)


def test_clip_higher_widens_the_upper_bound_only() -> None:
    """epsilon_high: a ratio of 1.25 is clipped at 1.2 without it and not clipped at 0.28."""
    new, old, z = np.array([math.log(1.25)]), np.zeros(1), np.zeros(1)
    plain = grpo_objective(new, old, z, np.ones(1), np.ones(1), GRPOConfig(epsilon=0.2))
    high = grpo_objective(
        new, old, z, np.ones(1), np.ones(1), GRPOConfig(epsilon=0.2, epsilon_high=0.28)
    )
    assert plain.metrics()["clip_ratio"] == 1.0 and high.metrics()["clip_ratio"] == 0.0
    assert high.metrics()["policy_loss"] == pytest.approx(-1.25)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_dloss_dlogp_matches_finite_differences(loss_type: str) -> None:
    """d loss / d logp_new of each action equals a central difference of the loss."""
    grpo = GRPOConfig(
        epsilon=0.2, epsilon_high=0.3, beta=0.3, entropy_coef=0.05, loss_type=loss_type
    )  # type: ignore[arg-type]
    new, old, ref, adv, entropy = _problem(0)
    seq = np.repeat(np.arange(4), 3)
    weights = sequence_weights(np.full(4, 3), loss_type, max_tokens=5)[seq]

    def loss(x: np.ndarray) -> float:
        t = grpo_objective(x, old, ref, adv, weights, grpo, entropy=entropy)
        return t.metrics()["loss"]

    grad = grpo_objective(new, old, ref, adv, weights, grpo, entropy=entropy).dloss_dlogp
    h = 1e-6
    for k in range(new.size):
        e = np.zeros_like(new)
        e[k] = h
        assert grad[k] == pytest.approx((loss(new + e) - loss(new - e)) / (2 * h), abs=1e-7)


def test_dloss_dentropy_matches_finite_differences() -> None:
    """d loss / d H of each action equals a central difference of the loss."""
    grpo = GRPOConfig(beta=0.1, entropy_coef=0.2, loss_type="dapo")
    new, old, ref, adv, entropy = _problem(1)
    w = sequence_weights(np.array([12]), "dapo", max_tokens=12)[np.zeros(12, dtype=int)]
    d = grpo_objective(new, old, ref, adv, w, grpo, entropy=entropy).dloss_dentropy
    h = 1e-6
    e = np.zeros_like(entropy)
    e[3] = h
    up = grpo_objective(new, old, ref, adv, w, grpo, entropy=entropy + e).metrics()["loss"]
    down = grpo_objective(new, old, ref, adv, w, grpo, entropy=entropy - e).metrics()["loss"]
    assert d[3] == pytest.approx((up - down) / (2 * h), abs=1e-8)


def test_padded_with_mask_equals_flat() -> None:
    """Padded (N, T) inputs with a mask give the flat inputs' loss, metrics and gradients."""
    grpo = GRPOConfig(beta=0.2, entropy_coef=0.01)
    lengths = np.array([3, 1, 4])
    new, old, ref, _, entropy = _problem(2, m=int(lengths.sum()))
    seq = np.repeat(np.arange(3), lengths)
    adv_seq = np.array([0.7, -1.2, 0.4])
    w_seq = sequence_weights(lengths, "grpo", max_tokens=4)
    flat = grpo_objective(new, old, ref, adv_seq[seq], w_seq[seq], grpo, entropy=entropy)

    mask = np.arange(4)[None, :] < lengths[:, None]  # (N, T)

    def pad(x: np.ndarray) -> np.ndarray:
        out = np.full(mask.shape, np.nan)  # garbage outside the mask must not leak
        out[mask] = x
        return out

    padded = grpo_objective(
        pad(new), pad(old), pad(ref), adv_seq[:, None], w_seq[:, None], grpo,
        entropy=pad(entropy), mask=mask,
    )  # fmt: skip
    for k, v in flat.metrics().items():
        assert padded.metrics()[k] == pytest.approx(v, rel=1e-12), k
    np.testing.assert_allclose(padded.dloss_dlogp[mask], flat.dloss_dlogp, rtol=1e-12)
    assert np.all(padded.dloss_dlogp[~mask] == 0.0) and np.all(padded.dloss_t_dlogp[~mask] == 0.0)
    assert np.all(padded.dloss_dentropy[~mask] == 0.0)


def test_sequence_weights() -> None:
    """grpo: 1/(N T_i); dapo: 1/sum T; dr_grpo: 1/(N max(T_max, longest)); grpo/dapo sum to 1."""
    lengths = np.array([2, 4])
    np.testing.assert_allclose(sequence_weights(lengths, "grpo", max_tokens=5), [1 / 4, 1 / 8])
    np.testing.assert_allclose(sequence_weights(lengths, "dapo", max_tokens=5), [1 / 6, 1 / 6])
    np.testing.assert_allclose(sequence_weights(lengths, "dr_grpo", max_tokens=5), [0.1, 0.1])
    np.testing.assert_allclose(sequence_weights(lengths, "dr_grpo", max_tokens=3), [1 / 8] * 2)
    for kind in ("grpo", "dapo"):
        assert float(sequence_weights(lengths, kind, max_tokens=5) @ lengths) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_type"):
        sequence_weights(lengths, "ppo", max_tokens=5)


def test_no_entropy_given_means_no_entropy_term() -> None:
    """Without an entropy, the loss is the surrogate plus the KL and no entropy metric is made."""
    new, old, ref, adv, _ = _problem(3)
    w = np.full(new.size, 1.0 / new.size)
    terms = grpo_objective(new, old, ref, adv, w, GRPOConfig(beta=0.4, entropy_coef=0.5))
    m = terms.metrics()
    assert "entropy" not in m
    assert m["loss"] == pytest.approx(m["policy_loss"] + 0.4 * float(w @ terms.kl))


def test_tis_weights_truncate_by_hand() -> None:
    old = np.array([-1.0, -2.0, -0.5, -3.0])
    behaviour = np.array([-1.0, -1.0, -2.0, -3.1])
    w = tis_weights(old, behaviour, 2.0)
    # exp(0) = 1, exp(-1), exp(1.5) = 4.48 -> 2 (capped), exp(0.1)
    np.testing.assert_allclose(w, [1.0, np.exp(-1.0), 2.0, np.exp(0.1)], rtol=1e-15)
    with pytest.raises(ValueError, match="tis_cap"):
        tis_weights(old, behaviour, 0.0)


def test_tis_multiplies_each_actions_loss_and_reports_the_mismatch() -> None:
    rng = np.random.default_rng(5)
    n = 12
    new, old, ref = (rng.normal(-1.5, 0.3, n) for _ in range(3))
    behaviour = old + rng.normal(0.0, 0.8, n)
    adv, w = rng.normal(size=n), np.full(n, 1 / n)
    grpo = GRPOConfig(beta=0.04)
    plain = grpo_objective(new, old, ref, adv, w, grpo)
    tis = grpo_objective(new, old, ref, adv, w, grpo, behaviour_logp=behaviour, tis_cap=1.5)
    iw = np.minimum(np.exp(old - behaviour), 1.5)
    assert (np.exp(old - behaviour) > 1.5).any() and (np.exp(old - behaviour) < 1.5).any()
    # same per-action terms (the ratio is against the trainer's old logp), weighted by iw
    np.testing.assert_array_equal(tis.loss, plain.loss)
    np.testing.assert_allclose(tis.weights, w * iw, rtol=1e-15)
    np.testing.assert_allclose(tis.dloss_dlogp, plain.dloss_dlogp * iw, rtol=1e-14)
    m = tis.metrics()
    assert m["loss"] == pytest.approx(float((w * iw) @ plain.loss), rel=1e-14)
    d = old - behaviour
    assert m["mismatch/abs_logp"] == pytest.approx(np.abs(d).mean(), rel=1e-14)
    assert m["mismatch/k3_kl"] == pytest.approx((np.exp(d) - 1 - d).mean(), rel=1e-14)
    assert m["mismatch/k3_kl"] > 0
    assert m["mismatch/capped"] == pytest.approx((np.exp(d) > 1.5).mean())
    assert m["mismatch/is_weight"] == pytest.approx(iw.mean())
    assert not any(k.startswith("mismatch/") for k in plain.metrics())


def test_tis_with_equal_engines_is_the_plain_loss() -> None:
    rng = np.random.default_rng(6)
    new, old, ref = (rng.normal(-1.0, 0.3, 8) for _ in range(3))
    adv, w = rng.normal(size=8), np.full(8, 1 / 8)
    grpo = GRPOConfig(beta=0.1)
    plain = grpo_objective(new, old, ref, adv, w, grpo)
    tis = grpo_objective(new, old, ref, adv, w, grpo, behaviour_logp=old.copy())
    np.testing.assert_array_equal(tis.dloss_dlogp, plain.dloss_dlogp)
    assert tis.metrics()["mismatch/abs_logp"] == 0.0
    assert tis.metrics()["mismatch/capped"] == 0.0
