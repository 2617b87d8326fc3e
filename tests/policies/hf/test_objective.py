"""The torch GRPO loss equals the numpy reference on the same numbers: value and gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.config.sections import GRPOConfig  # noqa: E402
from engine.policies.hf.objective import grpo_loss  # noqa: E402
from engine.policies.objective import grpo_objective, sequence_weights  # noqa: E402


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize(
    "grpo",
    [
        GRPOConfig(beta=0.04, entropy_coef=0.01),
        GRPOConfig(beta=0.0, epsilon=0.1, epsilon_high=0.3),
        GRPOConfig(beta=0.1, entropy_coef=0.0, epsilon=0.05),
    ],
)
def test_torch_loss_matches_numpy(loss_type: str, grpo: GRPOConfig) -> None:
    rng = np.random.default_rng(3)
    n, t = 5, 7
    lengths = np.array([7, 3, 5, 1, 6])
    mask = np.arange(t)[None, :] < lengths[:, None]
    new = rng.normal(-2.0, 0.5, size=(n, t))
    old = new + rng.normal(0.0, 0.3, size=(n, t))  # ratios far enough from 1 to clip
    ref = new + rng.normal(0.0, 0.2, size=(n, t))
    ent = rng.uniform(0.5, 2.0, size=(n, t))
    adv = rng.normal(size=(n, 1))
    cfg = dataclasses.replace(grpo, loss_type=loss_type)
    w = sequence_weights(lengths, loss_type, max_tokens=8)[:, None]
    terms = grpo_objective(new, old, ref, adv, w, cfg, entropy=ent, mask=mask)
    assert terms.clipped[mask].any()  # the clipped branch is exercised

    new_t = torch.tensor(new, requires_grad=True)
    ent_t = torch.tensor(ent, requires_grad=True)
    loss = grpo_loss(
        new_t,
        torch.tensor(old),
        torch.tensor(ref),
        torch.tensor(adv),
        torch.tensor(w),
        cfg,
        entropy=ent_t,
        mask=torch.tensor(mask),
    )
    loss.backward()
    assert float(loss.detach()) == pytest.approx(terms.metrics()["loss"], rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(new_t.grad.numpy(), terms.dloss_dlogp, rtol=1e-10, atol=1e-15)
    expected_dh = np.where(mask, terms.dloss_dentropy, 0.0)
    np.testing.assert_allclose(ent_t.grad.numpy(), expected_dh, rtol=1e-10, atol=1e-15)


def test_flat_inputs_without_mask_or_entropy() -> None:
    rng = np.random.default_rng(0)
    new, old, ref = (rng.normal(-1.0, 0.3, 20) for _ in range(3))
    adv, w = rng.normal(size=20), np.full(20, 1 / 20)
    grpo = GRPOConfig(beta=0.05)
    terms = grpo_objective(new, old, ref, adv, w, grpo)
    new_t = torch.tensor(new, requires_grad=True)
    loss = grpo_loss(new_t, *(torch.tensor(a) for a in (old, ref, adv, w)), grpo)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(terms.metrics()["loss"], rel=1e-12)
    np.testing.assert_allclose(new_t.grad.numpy(), terms.dloss_dlogp, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("cap", [1.2, 2.0, 10.0])
def test_torch_tis_matches_numpy(cap: float) -> None:
    rng = np.random.default_rng(11)
    n, t = 4, 6
    lengths = np.array([6, 2, 4, 5])
    mask = np.arange(t)[None, :] < lengths[:, None]
    new = rng.normal(-2.0, 0.5, size=(n, t))
    old = new + rng.normal(0.0, 0.3, size=(n, t))
    ref = new + rng.normal(0.0, 0.2, size=(n, t))
    behaviour = old + rng.normal(0.0, 0.7, size=(n, t))
    adv = rng.normal(size=(n, 1))
    cfg = GRPOConfig(beta=0.04, entropy_coef=0.0)
    w = sequence_weights(lengths, "grpo", max_tokens=8)[:, None]
    terms = grpo_objective(
        new, old, ref, adv, w, cfg, mask=mask, behaviour_logp=behaviour, tis_cap=cap
    )
    new_t = torch.tensor(new, requires_grad=True)
    loss = grpo_loss(
        new_t,
        torch.tensor(old),
        torch.tensor(ref),
        torch.tensor(adv),
        torch.tensor(w),
        cfg,
        mask=torch.tensor(mask),
        behaviour_logp=torch.tensor(behaviour),
        tis_cap=cap,
    )
    loss.backward()
    assert float(loss.detach()) == pytest.approx(terms.metrics()["loss"], rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(new_t.grad.numpy(), terms.dloss_dlogp, rtol=1e-10, atol=1e-15)
    plain = grpo_objective(new, old, ref, adv, w, cfg, mask=mask)
    assert float(loss.detach()) != pytest.approx(plain.metrics()["loss"], rel=1e-6)
