"""Group-relative advantages: hand-computed values, masking, zero-std groups, the naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.errors import CheckpointError
from engine.learning.advantages import (
    Advantages,
    RunningNorm,
    group_advantages,
)
from tests.learning.reference_advantages import naive_group_advantages

nan = math.nan
SQRT8 = math.sqrt(8.0)

# Two groups used by several tests. Group 0: mean 2, deviations (-2, 0, 2), sum of squares 8,
# unbiased variance 8 / 2 = 4, std 2. Group 1: the same shifted by 4: mean 6, std 2.
# Over the batch: values 0 2 4 4 6 8, mean 4, squares 16+4+0+0+4+16 = 40, variance 40/5 = 8.
R = np.array([[0.0, 2.0, 4.0], [4.0, 6.0, 8.0]])


def test_group_scale_hand_values() -> None:
    """scale=group gives (r - mean) / (std + eps) with the unbiased (ddof=1) group std."""
    adv = group_advantages(R, scale="group", eps=0.0)
    np.testing.assert_allclose(adv.values, [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]], rtol=1e-15)
    np.testing.assert_allclose(adv.group_mean, [2.0, 6.0])
    np.testing.assert_allclose(adv.group_std, [2.0, 2.0])
    assert not adv.zero_std.any() and not adv.dropped.any()
    assert adv.frac_reward_zero_std == 0.0


def test_group_scale_default_eps_is_added_to_std() -> None:
    """The default eps=1e-4 is added to the std, not to the variance."""
    adv = group_advantages(R)
    np.testing.assert_allclose(adv.values[0], np.array([-2.0, 0.0, 2.0]) / (2.0 + 1e-4))


def test_batch_scale_hand_values() -> None:
    """scale=batch divides by the std of all valid rewards of the batch (sqrt(8) here)."""
    adv = group_advantages(R, scale="batch", eps=0.0)
    expected = np.array([[-2.0, 0.0, 2.0], [-2.0, 0.0, 2.0]]) / SQRT8
    np.testing.assert_allclose(adv.values, expected, rtol=1e-15)


def test_none_scale_only_subtracts_mean() -> None:
    """scale=none (Dr. GRPO) is r - group mean, not divided by any std."""
    adv = group_advantages(R, scale="none")
    np.testing.assert_array_equal(adv.values, [[-2.0, 0.0, 2.0], [-2.0, 0.0, 2.0]])


def test_leave_one_out_hand_values() -> None:
    """RLOO: each member's baseline is the mean of the others; group/batch scale still divide."""
    # Group [0, 2, 4]: baselines mean(2,4)=3, mean(0,4)=2, mean(0,2)=1 -> advantages -3, 0, 3.
    none = group_advantages(R[:1], scale="none", leave_one_out=True)
    np.testing.assert_allclose(none.values, [[-3.0, 0.0, 3.0]], rtol=1e-15)
    group = group_advantages(R[:1], scale="group", leave_one_out=True, eps=0.0)
    np.testing.assert_allclose(group.values, [[-1.5, 0.0, 1.5]], rtol=1e-15)  # / std 2
    batch = group_advantages(R, scale="batch", leave_one_out=True, eps=0.0)
    np.testing.assert_allclose(batch.values, np.array([[-3.0, 0, 3], [-3, 0, 3]]) / SQRT8)


def test_leave_one_out_ignores_failed_members() -> None:
    """RLOO baselines average only the other *valid* members."""
    # Valid [1, 5, 6]: baselines mean(5,6)=5.5, mean(1,6)=3.5, mean(1,5)=3.
    adv = group_advantages([[1.0, nan, 5.0, 6.0]], scale="none", leave_one_out=True)
    np.testing.assert_allclose(adv.values, [[-4.5, nan, 1.5, 3.0]], rtol=1e-15)


def test_failed_rollout_is_masked_not_zero() -> None:
    """A NaN reward is left out of mean and std and gets a NaN advantage; it is not a 0."""
    adv = group_advantages([[0.0, nan, 2.0, 4.0]], eps=0.0)
    # Valid members [0, 2, 4]: mean 2, std 2.
    np.testing.assert_allclose(adv.values, [[-1.0, nan, 0.0, 1.0]], rtol=1e-15)
    assert adv.group_mean[0] == 2.0 and adv.group_std[0] == 2.0
    # Counting the failure as 0 would give [0, 0, 2, 4]: mean 1.5, a different std and signal.
    as_zero = group_advantages([[0.0, 0.0, 2.0, 4.0]], eps=0.0)
    assert as_zero.group_mean[0] == 1.5
    assert not np.allclose(as_zero.values[0, [0, 2, 3]], adv.values[0, [0, 2, 3]])


def test_batch_std_ignores_failed_rollouts() -> None:
    """The batch std of scale=batch is over valid rewards only."""
    with_nan = np.array([[0.0, 2.0, 4.0, nan], [4.0, 6.0, 8.0, nan]])
    adv = group_advantages(with_nan, scale="batch", eps=0.0)
    np.testing.assert_allclose(adv.values[:, :3], np.array([[-2.0, 0, 2], [-2, 0, 2]]) / SQRT8)
    assert np.isnan(adv.values[:, 3]).all()


def test_zero_std_groups_reported_with_zero_advantage() -> None:
    """Equal rewards, one valid member, or none: zero_std True, valid members get exactly 0."""
    r = [[1.0, 1.0, 1.0], [0.0, 2.0, 4.0], [5.0, nan, nan], [nan, nan, nan]]
    adv = group_advantages(r)
    np.testing.assert_array_equal(adv.zero_std, [True, False, True, True])
    assert adv.frac_reward_zero_std == 0.75
    np.testing.assert_array_equal(adv.values[0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(adv.values[2], [0.0, nan, nan])
    assert np.isnan(adv.values[3]).all()
    np.testing.assert_array_equal(adv.group_mean, [1.0, 2.0, 5.0, nan])
    np.testing.assert_array_equal(adv.group_std, [0.0, 2.0, 0.0, 0.0])
    assert not adv.dropped.any()


def test_equal_rewards_with_rounding_are_exactly_zero() -> None:
    """[0.1, 0.1, 0.1] is zero-std although its computed mean is not exactly 0.1."""
    assert sum([0.1, 0.1, 0.1]) / 3 != 0.1  # the rounding this guards against
    adv = group_advantages([[0.1, 0.1, 0.1]], eps=1e-12)
    assert adv.zero_std[0] and adv.group_std[0] == 0.0
    np.testing.assert_array_equal(adv.values, [[0.0, 0.0, 0.0]])


def test_drop_zero_std_marks_groups_dropped() -> None:
    """drop_zero_std (DAPO) gives zero-std groups NaN advantages and dropped=True."""
    r = [[1.0, 1.0, 1.0], [0.0, 2.0, 4.0], [5.0, nan, nan]]
    adv = group_advantages(r, drop_zero_std=True, eps=0.0)
    np.testing.assert_array_equal(adv.dropped, [True, False, True])
    assert np.isnan(adv.values[[0, 2]]).all()
    np.testing.assert_allclose(adv.values[1], [-1.0, 0.0, 1.0])
    assert adv.frac_reward_zero_std == pytest.approx(2 / 3)


def test_result_is_float64_and_input_untouched() -> None:
    """Integer input is accepted, the result is float64 and the caller's array is not modified."""
    r = np.array([[0, 2, 4]])
    adv = group_advantages(r, drop_zero_std=True)
    assert adv.values.dtype == np.float64 and adv.values.shape == (1, 3)
    np.testing.assert_array_equal(r, [[0, 2, 4]])
    assert isinstance(adv, Advantages)
    f = np.asfortranarray([[1.0, 1.0], [nan, 3.0], [0.0, 5.0]])  # r.T is C-contiguous here
    for kw in ({"drop_zero_std": True}, {"leave_one_out": True}, {"scale": "batch"}):
        out = group_advantages(f, **kw)  # type: ignore[arg-type]
        np.testing.assert_array_equal(f, [[1.0, 1.0], [nan, 3.0], [0.0, 5.0]])
        assert out.values.flags.c_contiguous


def test_empty_batch() -> None:
    """B=0 gives empty arrays and a zero-std fraction of 0."""
    adv = group_advantages(np.zeros((0, 4)))
    assert adv.values.shape == (0, 4) and adv.zero_std.shape == (0,)
    assert adv.frac_reward_zero_std == 0.0


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), ()])
def test_rejects_non_2d_rewards(shape: tuple[int, ...]) -> None:
    """Rewards that are not (B, G) raise a ValueError naming the shape."""
    with pytest.raises(ValueError, match=r"2-D.*\(B groups, G rollouts\)"):
        group_advantages(np.zeros(shape))


def test_rejects_infinite_reward_and_bad_options() -> None:
    """An infinite reward, an unknown scale or a negative eps raise ValueError."""
    with pytest.raises(ValueError, match="group 1, rollout 0"):
        group_advantages([[0.0, 1.0], [math.inf, 1.0]])
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages([[0.0, 1.0]], scale="std")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        group_advantages([[0.0, 1.0]], eps=-1.0)
    with pytest.raises(ValueError, match="at least one rollout"):
        group_advantages(np.zeros((3, 0)))


@st.composite
def reward_arrays(draw: st.DrawFn) -> np.ndarray:
    """(B, G) rewards with ties (values on a coarse grid or repeated) and random NaN masks."""
    B = draw(st.integers(1, 12))
    G = draw(st.integers(1, 9))
    coarse = draw(st.booleans())
    elements = (
        st.integers(-3, 3).map(float)
        if coarse
        # below 1e-100 a reward is 0: squared deviations of rewards ~1e-159 apart underflow
        # to subnormals, where no float computation keeps 9 digits (found by Hypothesis)
        else st.floats(-100.0, 100.0, allow_nan=False).map(lambda x: 0.0 if abs(x) < 1e-100 else x)
    )
    r = draw(hnp.arrays(np.float64, (B, G), elements=elements))
    mask = draw(hnp.arrays(np.bool_, (B, G)))
    r[mask] = np.nan
    return r


def _assert_same(a: Advantages, b: Advantages) -> None:
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(a.group_mean, b.group_mean, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(a.group_std, b.group_std, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.zero_std, b.zero_std)
    np.testing.assert_array_equal(a.dropped, b.dropped)
    assert a.frac_reward_zero_std == b.frac_reward_zero_std


@settings(max_examples=300, deadline=None)
@given(
    r=reward_arrays(),
    scale=st.sampled_from(["group", "batch", "none"]),
    leave_one_out=st.booleans(),
    drop_zero_std=st.booleans(),
    eps=st.sampled_from([0.0, 1e-4, 1.0]),
)
def test_vectorized_equals_naive_loop(
    r: np.ndarray, scale: str, leave_one_out: bool, drop_zero_std: bool, eps: float
) -> None:
    """The vectorized advantages equal the plain per-group loop on random shapes and masks."""
    kw = dict(scale=scale, leave_one_out=leave_one_out, drop_zero_std=drop_zero_std, eps=eps)
    _assert_same(group_advantages(r, **kw), naive_group_advantages(r, **kw))  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(r=reward_arrays())
def test_group_advantages_have_zero_mean_and_unit_std(r: np.ndarray) -> None:
    """With eps=0, each non-zero-std group's advantages have mean 0 and (ddof=1) std 1."""
    adv = group_advantages(r, eps=0.0)
    for b in np.flatnonzero(~adv.zero_std):
        a = adv.values[b][~np.isnan(adv.values[b])]
        assert abs(a.mean()) < 1e-9
        assert a.std(ddof=1) == pytest.approx(1.0, rel=1e-9)


# ----------------------------------------------------------------------------- RunningNorm


def test_running_norm_matches_numpy_on_concatenated_data() -> None:
    """Mean and std after several batches equal numpy's on all the data, NaN excluded."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 3.0, size=n) for n in (1, 7, 100, 3, 1000)]
    batches.append(np.array([nan, 2.0, nan]))
    batches.append(np.array([]))
    norm = RunningNorm()
    for x in batches:
        norm.update(x)
    data = np.concatenate(batches)
    data = data[~np.isnan(data)]
    assert norm.count == data.size
    assert norm.mean == pytest.approx(np.mean(data), rel=1e-12)
    assert norm.std == pytest.approx(np.std(data), rel=1e-12)
    x = np.array([1.0, nan, 9.0])
    np.testing.assert_allclose(
        norm.normalize(x), (x - np.mean(data)) / (np.std(data) + norm.eps), rtol=1e-12
    )


def test_running_norm_accepts_2d_rewards() -> None:
    """A (B, G) reward array updates the statistics like its flattened values."""
    r = np.array([[1.0, 2.0], [nan, 6.0]])
    norm = RunningNorm()
    norm.update(r)
    assert norm.count == 3 and norm.mean == 3.0
    assert norm.normalize(r).shape == (2, 2)


def test_running_norm_identity_before_update() -> None:
    """Before any value, normalize returns its input unchanged (as a float64 copy)."""
    x = np.array([1.0, 2.0])
    out = RunningNorm().normalize(x)
    np.testing.assert_array_equal(out, x)
    assert out is not x


def test_running_norm_state_round_trip() -> None:
    """from_state(state()) continues exactly like the original."""
    a = RunningNorm(eps=1e-6)
    a.update([1.0, 2.0, 4.0])
    b = RunningNorm.from_state(a.state())
    for n in (a, b):
        n.update([10.0, -3.0])
    assert a.state() == b.state()


def test_running_norm_bad_state_and_input() -> None:
    """A missing or invalid state key raises CheckpointError; an infinite value ValueError."""
    with pytest.raises(CheckpointError, match="'m2'"):
        RunningNorm.from_state({"count": 1, "mean": 0.0, "eps": 1e-8})
    with pytest.raises(CheckpointError, match="count"):
        RunningNorm.from_state({"count": -1, "mean": 0.0, "m2": 0.0, "eps": 1e-8})
    with pytest.raises(ValueError, match="finite"):
        RunningNorm().update([1.0, math.inf])
