"""Adam(W) and gradient clipping: reference values, determinism, convergence."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.config.sections import OptimConfig
from engine.errors import CheckpointError
from engine.learning.schedule import lr_at
from engine.policies.optim import Adam, clip_grad_norm


def _norm(grads: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))


def _random_problem(seed: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    grads = [{k: rng.normal(size=p.shape) * 3.0 for k, p in params.items()} for _ in range(10)]
    return params, grads


# ----------------------------------------------------------------------------- Adam


def test_adam_first_two_steps_by_hand() -> None:
    """Two Adam steps match Kingma & Ba's Algorithm 1 worked out with plain floats."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    opt = Adam(OptimConfig(lr=lr, beta1=b1, beta2=b2, eps=eps, max_grad_norm=None))
    theta = {"x": np.array([1.0])}

    # Step 1, g = 0.5: m = 0.05, v = 0.00025; m_hat = 0.5, v_hat = 0.25; update = 0.5/(0.5+eps).
    opt.step(theta, {"x": np.array([0.5])}, lr)
    theta1 = 1.0 - lr * 0.5 / (0.5 + eps)
    assert theta["x"][0] == pytest.approx(theta1, rel=1e-15)

    # Step 2, g = -0.25: m = 0.9*0.05 - 0.025 = 0.02, v = 0.999*0.00025 + 0.0000625 = 0.00031225
    # m_hat = 0.02 / (1 - 0.81), v_hat = 0.00031225 / (1 - 0.998001).
    opt.step(theta, {"x": np.array([-0.25])}, lr)
    m_hat, v_hat = 0.02 / 0.19, 0.00031225 / 0.001999
    theta2 = theta1 - lr * m_hat / (math.sqrt(v_hat) + eps)
    assert theta["x"][0] == pytest.approx(theta2, rel=1e-13)
    assert opt.t == 2


def test_adamw_decay_is_decoupled() -> None:
    """Weight decay shrinks by lr*wd*theta outside the moments (AdamW), scaled by the step lr."""
    lr, wd = 0.1, 0.5
    opt = Adam(OptimConfig(lr=lr, weight_decay=wd, max_grad_norm=None))
    theta = {"x": np.array([2.0, -4.0])}
    zero = {"x": np.zeros(2)}
    for _ in range(3):  # zero gradient: moments stay 0, only the decay acts
        opt.step(theta, zero, lr)
    np.testing.assert_allclose(theta["x"], np.array([2.0, -4.0]) * (1 - lr * wd) ** 3, rtol=1e-15)

    # With a gradient: theta - lr * (g/(|g|+eps) + wd*theta); L2-in-the-gradient Adam would
    # instead normalize (g + wd*theta) and move by about lr only.
    opt = Adam(OptimConfig(lr=lr, weight_decay=wd, max_grad_norm=None))
    theta = {"x": np.array([2.0])}
    opt.step(theta, {"x": np.array([1.0])}, lr)
    assert theta["x"][0] == pytest.approx(2.0 - lr * (1.0 / (1.0 + 1e-8) + wd * 2.0), rel=1e-15)


def test_adam_is_bit_for_bit_deterministic() -> None:
    """Two optimizers fed the same data end with byte-identical parameters and moments."""
    results = []
    for _ in range(2):
        params, grads = _random_problem(seed=1)
        opt = Adam(OptimConfig(weight_decay=0.01, max_grad_norm=1.0))
        for g in grads:
            opt.step(params, g, 1e-2)
        arrays, _ = opt.state()
        results.append((params, arrays))
    (p1, s1), (p2, s2) = results
    assert all(p1[k].tobytes() == p2[k].tobytes() for k in p1)
    assert all(s1[k].tobytes() == s2[k].tobytes() for k in s1)


def test_adam_converges_on_quadratic() -> None:
    """Adam with a cosine schedule minimizes an ill-conditioned quadratic to its optimum."""
    a = np.array([100.0, 1.0, 0.01])  # curvatures over four orders of magnitude
    c = np.array([1.0, -2.0, 3.0])  # the minimum
    cfg = OptimConfig(lr=0.1, schedule="cosine", warmup_steps=10, max_grad_norm=None)
    opt = Adam(cfg)
    theta = {"x": np.zeros(3)}
    total = 3000
    for step in range(total):
        grad = {"x": a * (theta["x"] - c)}  # gradient of 0.5 * sum(a * (x - c)^2)
        opt.step(theta, grad, lr_at(step, cfg, total))
    np.testing.assert_allclose(theta["x"], c, atol=1e-3)


def test_adam_step_reports_norms_and_clips() -> None:
    """step() returns the pre-clip norm, the clipped norm and the parameter-change norm."""
    opt = Adam(OptimConfig(lr=0.1, max_grad_norm=1.0))
    theta = {"x": np.array([0.0, 0.0])}
    before = theta["x"].copy()
    stats = opt.step(theta, {"x": np.array([3.0, 4.0])}, 0.1)
    assert stats["grad_norm"] == 5.0
    assert stats["grad_norm_clipped"] == 1.0
    assert stats["update_norm"] == pytest.approx(np.linalg.norm(theta["x"] - before), rel=1e-12)


def test_adam_clips_before_moment_update() -> None:
    """The first moment is built from the clipped gradient, not the raw one."""
    opt = Adam(OptimConfig(lr=0.1, max_grad_norm=1.0))
    opt.step({"x": np.zeros(2)}, {"x": np.array([3.0, 4.0])}, 0.1)
    arrays, _ = opt.state()
    np.testing.assert_allclose(arrays["m.x"], 0.1 * np.array([0.6, 0.8]), rtol=1e-15)


def test_adam_float32_params_updated_in_place() -> None:
    """float32 parameters stay float32 and the same array objects are updated."""
    theta = {"x": np.ones(3, dtype=np.float32)}
    arr = theta["x"]
    Adam(OptimConfig()).step(theta, {"x": np.ones(3, dtype=np.float32)}, 0.01)
    assert theta["x"] is arr and arr.dtype == np.float32
    assert (arr < 1.0).all()


def test_adam_rejects_mismatched_or_nonfinite_grads() -> None:
    """Mismatched names or shapes raise ValueError; a non-finite norm leaves params untouched."""
    opt = Adam(OptimConfig())
    theta = {"x": np.ones(2)}
    with pytest.raises(ValueError, match=r"missing \['x'\], unexpected \['y'\]"):
        opt.step(theta, {"y": np.ones(2)}, 0.1)
    with pytest.raises(ValueError, match="shape"):
        opt.step(theta, {"x": np.ones(3)}, 0.1)
    with pytest.raises(FloatingPointError, match=r"\['x'\]"):
        opt.step(theta, {"x": np.array([1.0, math.nan])}, 0.1)
    np.testing.assert_array_equal(theta["x"], [1.0, 1.0])
    assert opt.t == 0
    with pytest.raises(ValueError, match="lr"):
        opt.step(theta, {"x": np.ones(2)}, -1.0)


def test_adam_rejects_beta_of_one() -> None:
    """beta1 or beta2 equal to 1 would divide by zero in the bias correction."""
    with pytest.raises(ValueError, match="beta"):
        Adam(OptimConfig(beta2=1.0))


def test_adam_param_set_cannot_change_between_steps() -> None:
    """After the first step the parameter names and shapes are fixed."""
    opt = Adam(OptimConfig())
    opt.step({"x": np.ones(2)}, {"x": np.ones(2)}, 0.1)
    with pytest.raises(ValueError, match="optimizer state in use"):
        opt.step({"x": np.ones(3)}, {"x": np.ones(3)}, 0.1)


# ----------------------------------------------------------------------------- state


def _savez_round_trip(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_state_round_trip_continues_bit_for_bit() -> None:
    """Saving after 5 steps, loading into a new Adam and continuing equals an uninterrupted run."""
    cfg = OptimConfig(weight_decay=0.01, max_grad_norm=2.0)
    params_a, grads = _random_problem(seed=2)
    params_b = {k: v.copy() for k, v in params_a.items()}

    full = Adam(cfg)
    for g in grads:
        full.step(params_a, g, 1e-2)

    first = Adam(cfg)
    for g in grads[:5]:
        first.step(params_b, g, 1e-2)
    arrays, meta = first.state()
    resumed = Adam(cfg)
    resumed.load_state(_savez_round_trip(arrays), dict(meta))
    assert resumed.t == 5
    for g in grads[5:]:
        resumed.step(params_b, g, 1e-2)

    assert all(params_a[k].tobytes() == params_b[k].tobytes() for k in params_a)
    assert resumed.t == full.t == 10


def test_state_is_a_copy() -> None:
    """Arrays returned by state() do not change when the optimizer steps again."""
    opt = Adam(OptimConfig())
    theta = {"x": np.ones(2)}
    opt.step(theta, {"x": np.ones(2)}, 0.1)
    arrays, meta = opt.state()
    saved = arrays["m.x"].copy()
    opt.step(theta, {"x": np.ones(2)}, 0.1)
    np.testing.assert_array_equal(arrays["m.x"], saved)
    assert meta == {"t": 1}


def test_load_state_rejects_mismatches() -> None:
    """Mismatched names, shapes or t raise CheckpointError, also when params differ later."""
    m, v = np.zeros(2), np.ones(2)
    with pytest.raises(CheckpointError, match="moments differ"):
        Adam(OptimConfig()).load_state({"m.x": m, "v.y": v}, {"t": 1})
    with pytest.raises(CheckpointError, match="moments differ"):
        Adam(OptimConfig()).load_state({"m.x": m, "v.x": np.ones(3)}, {"t": 1})
    with pytest.raises(CheckpointError, match="unexpected array"):
        Adam(OptimConfig()).load_state({"m.x": m, "v.x": v, "w": v}, {"t": 1})
    with pytest.raises(CheckpointError, match="'t'"):
        Adam(OptimConfig()).load_state({"m.x": m, "v.x": v}, {})
    with pytest.raises(CheckpointError, match="t=0"):
        Adam(OptimConfig()).load_state({"m.x": m, "v.x": v}, {"t": 0})

    running = Adam(OptimConfig())
    running.step({"x": np.ones(5)}, {"x": np.ones(5)}, 0.1)
    with pytest.raises(CheckpointError, match="does not match this optimizer"):
        running.load_state({"m.x": m, "v.x": v}, {"t": 3})

    loaded = Adam(OptimConfig())
    loaded.load_state({"m.x": m, "v.x": v}, {"t": 3})
    with pytest.raises(CheckpointError, match="loaded from the checkpoint"):
        loaded.step({"x": np.ones(5)}, {"x": np.ones(5)}, 0.1)


# ----------------------------------------------------------------------------- clipping


@settings(max_examples=200, deadline=None)
@given(
    a=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-1e3, 1e3)),
    b=hnp.arrays(np.float64, (2, 2), elements=st.floats(-1e3, 1e3)),
    max_norm=st.floats(1e-3, 1e3),
)
def test_clip_grad_norm_property(a: np.ndarray, b: np.ndarray, max_norm: float) -> None:
    """Above max_norm the clipped global norm equals max_norm; below it nothing changes."""
    grads = {"a": a, "b": b}
    originals = {k: g.copy() for k, g in grads.items()}
    clipped, norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(_norm(originals), rel=1e-12)
    if norm > max_norm:
        assert _norm(clipped) == pytest.approx(max_norm, rel=1e-12)
        for k in grads:  # direction kept: a positive multiple of the original
            np.testing.assert_allclose(clipped[k], originals[k] * (max_norm / norm), rtol=1e-15)
    else:
        assert all(clipped[k] is grads[k] for k in grads)
    for k in grads:  # inputs never modified
        np.testing.assert_array_equal(grads[k], originals[k])


def test_clip_grad_norm_none_disables() -> None:
    """max_norm=None returns the gradients unchanged with their norm."""
    grads = {"x": np.array([30.0, 40.0])}
    clipped, norm = clip_grad_norm(grads, None)
    assert norm == 50.0 and clipped["x"] is grads["x"]
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, 0.0)
