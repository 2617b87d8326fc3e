"""The hf policy on a tiny random Llama: generation, the update, state, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from engine.config.sections import GRPOConfig, HFConfig, OptimConfig  # noqa: E402
from engine.errors import CheckpointError, ConfigError  # noqa: E402
from engine.policies.hf.loading import load_model  # noqa: E402
from engine.policies.hf.policy import HFPolicy  # noqa: E402
from engine.types import Example, Rollout  # noqa: E402

from .tiny import save_tiny, tiny_policy  # noqa: E402

EXAMPLE = Example("e", "the food was good")


async def _rollouts(policy: HFPolicy, n: int = 4, seed: int = 0, version: int = 0) -> list[Rollout]:
    samples = await policy.generate(
        policy.snapshot(version), EXAMPLE, n, np.random.default_rng(seed)
    )
    return [Rollout("0-0", i, version, s, reward=float(i % 2)) for i, s in enumerate(samples)]


async def test_generation_logprobs_match_a_forward_pass() -> None:
    """Sample.logprobs are log softmax(logits / T) of the sampled tokens, as a forward pass
    of prompt + completion computes them; ids and lengths are consistent."""
    policy = tiny_policy(temperature=0.7)
    rollouts = await _rollouts(policy, n=6)
    model = policy.model
    for r in rollouts:
        s = r.sample
        assert s.token_ids is not None and s.logprobs is not None and s.prompt_ids is not None
        assert len(s.token_ids) == len(s.logprobs) == s.usage.completion_tokens >= 1
        ids = torch.tensor([[*s.prompt_ids.tolist(), *s.token_ids.tolist()]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1]
        lp = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(s.token_ids)[:, None])
        np.testing.assert_allclose(s.logprobs, lp[:, 0].numpy(), atol=1e-5)


async def test_generation_is_seeded_and_greedy_is_the_argmax() -> None:
    policy = tiny_policy()
    snap = policy.snapshot(0)
    a = await policy.generate(snap, EXAMPLE, 4, np.random.default_rng(5))
    b = await policy.generate(snap, EXAMPLE, 4, np.random.default_rng(5))
    assert [s.token_ids.tolist() for s in a] == [s.token_ids.tolist() for s in b]
    g = await policy.generate(snap, EXAMPLE, 2, np.random.default_rng(1), greedy=True)
    assert g[0].token_ids.tolist() == g[1].token_ids.tolist()
    ids = torch.tensor([g[0].prompt_ids.tolist()])
    with torch.no_grad():
        first = int(policy.model(input_ids=ids).logits[0, -1].argmax())
    assert g[0].token_ids[0] == first


async def test_stop_sequences_end_a_sample_and_are_cut_from_the_text() -> None:
    """With every word a stop sequence, each sample ends after its first token."""
    words = ["good", "bad", "the", "food", "was", "review", "sentiment", ":", "great"]
    policy = tiny_policy(stop=tuple(words))
    samples = await policy.generate(policy.snapshot(0), EXAMPLE, 8, np.random.default_rng(0))
    for s in samples:
        text_of_first = policy.tokenizer.decode(s.token_ids[:1].tolist())
        if text_of_first in words:
            assert len(s.token_ids) == 1 and s.finish_reason == "stop" and s.text == ""


async def test_update_changes_only_the_adapter_and_reports_finite_metrics() -> None:
    policy = tiny_policy(micro_batch_tokens=16)  # several micro-batches
    rollouts = await _rollouts(policy)
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    policy.configure_optimizer(OptimConfig(lr=0.05))
    metrics = policy.update(
        rollouts, np.array([1.0, -1.0, 0.5, -0.5]), grpo=GRPOConfig(beta=0.04), lr=0.05
    )
    for key in ("policy_loss", "kl", "entropy", "clip_ratio", "grad_norm", "update_norm"):
        assert math.isfinite(metrics[key]), key
    assert metrics["tokens"] == sum(len(r.sample.token_ids) for r in rollouts)
    changed = {
        n for n, p in policy.model.named_parameters() if not torch.equal(p.detach(), base[n])
    }
    assert changed and changed == {n for n in changed if ".lora_" in n and ".default." in n}
    assert any(".lora_B.default." in n for n in changed)


async def test_micro_batches_accumulate_the_same_step() -> None:
    """The accumulated gradient over micro-batches is the whole mini-batch's: one pass and
    many give the same weights after a step."""
    results = []
    for budget in (10_000, 12):
        policy = tiny_policy(micro_batch_tokens=budget)
        rollouts = await _rollouts(policy, n=5)
        policy.configure_optimizer(OptimConfig(lr=0.01))
        policy.update(rollouts, np.linspace(-1, 1, 5), grpo=GRPOConfig(loss_type="dapo"), lr=0.01)
        results.append(policy.trainable_arrays())
    for n in results[0]:
        np.testing.assert_allclose(results[0][n], results[1][n], atol=1e-6, err_msg=n)


async def test_a_snapshot_generates_with_its_own_adapter() -> None:
    """After an update, the old snapshot still samples exactly what it sampled before."""
    policy = tiny_policy()
    snap0 = policy.snapshot(0)
    before = await policy.generate(snap0, EXAMPLE, 4, np.random.default_rng(9))
    policy.configure_optimizer(OptimConfig(lr=0.5))
    rollouts = await _rollouts(policy)
    policy.update(rollouts, np.array([1.0, -1.0, 1.0, -1.0]), grpo=GRPOConfig(), lr=0.5)
    snap1 = policy.snapshot(1)
    after1 = await policy.generate(snap1, EXAMPLE, 4, np.random.default_rng(9))
    after0 = await policy.generate(snap0, EXAMPLE, 4, np.random.default_rng(9))
    np.testing.assert_array_equal(
        np.concatenate([s.logprobs for s in before]), np.concatenate([s.logprobs for s in after0])
    )
    assert not np.allclose(before[0].logprobs, after1[0].logprobs[: len(before[0].logprobs)])


async def test_state_round_trip_and_another_base_model_is_refused() -> None:
    policy = tiny_policy()
    policy.configure_optimizer(OptimConfig(lr=0.05))
    policy.update(await _rollouts(policy), np.array([1.0, -1.0, 1, -1]), grpo=GRPOConfig(), lr=0.05)
    arrays, meta = policy.state()
    o_arrays, o_meta = policy.optimizer_state()
    assert o_meta == {"t": 1} and len(o_arrays) == 2 * len(arrays)
    other = tiny_policy()
    other.configure_optimizer(OptimConfig(lr=0.05))
    other.load_state(arrays, meta)
    other.load_optimizer_state(o_arrays, o_meta)
    for n, a in policy.trainable_arrays().items():
        np.testing.assert_array_equal(other.trainable_arrays()[n], a)
    # the next step is identical
    rollouts = await _rollouts(policy, seed=3, version=1)
    adv = np.array([0.5, -0.5, 1.0, -1.0])
    policy.update(rollouts, adv, grpo=GRPOConfig(), lr=0.05)
    other.update(rollouts, adv, grpo=GRPOConfig(), lr=0.05)
    for n, a in policy.trainable_arrays().items():
        np.testing.assert_array_equal(other.trainable_arrays()[n], a)
    stranger = tiny_policy(model_seed=1)
    with pytest.raises(CheckpointError, match="base model"):
        stranger.load_state(arrays, meta)
    bad = dict(arrays)
    bad[next(iter(bad))] = np.zeros(3, dtype=np.float32)
    with pytest.raises(CheckpointError, match="shape"):
        other.load_state(bad, meta)


def test_bad_model_inputs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a model directory"):
        load_model(HFConfig(model=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(HFConfig(model=str(tmp_path / "missing.gguf")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_model(HFConfig(model=str(tmp_path / "empty")))
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConfigError, match="transformers cannot"):
        load_model(HFConfig(model=str(weird)))
    with pytest.raises(ConfigError, match="no module 'c_attn'") as info:
        tiny_policy(target_modules=("q_proj", "c_attn"))
    assert info.value.key == "hf.target_modules" and "v_proj" in str(info.value)


def test_a_model_directory_loads(tmp_path: Path) -> None:
    d = save_tiny(tmp_path / "tiny")
    policy = HFPolicy.from_config(HFConfig(model=str(d), max_new_tokens=4), seed=0)
    assert policy.source == str(d) and policy.trainable_arrays()


def test_a_gguf_conversion_is_cached_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache key follows the file's bytes; a cached conversion is reused, not redone."""
    from engine.policies.hf import loading

    monkeypatch.setenv("GRPO_ENGINE_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a.gguf", tmp_path / "b" / "a.gguf"
    b.parent.mkdir()
    a.write_bytes(b"GGUF one")
    b.write_bytes(b"GGUF one")
    assert loading.converted_dir(a) == loading.converted_dir(b)
    assert loading.converted_dir(a).parent == tmp_path / "cache" / "models"
    b.write_bytes(b"GGUF two")
    assert loading.converted_dir(a) != loading.converted_dir(b)
    calls: list[Path] = []
    monkeypatch.setattr(loading, "_convert_gguf", lambda src, dst: calls.append(dst))
    target = loading.converted_dir(a)
    assert loading._directory(str(a)) == target and calls == [target]
    save_tiny(target)  # as a finished conversion leaves it
    assert loading._directory(str(a)) == target and calls == [target]  # not converted again


async def test_full_finetuning_trains_every_weight_and_snapshots_still_hold() -> None:
    policy = tiny_policy(full_finetune=True)
    names = set(policy.trainable_arrays())
    assert names == {n for n, _ in policy.model.named_parameters()}
    snap0 = policy.snapshot(0)
    before = await policy.generate(snap0, EXAMPLE, 3, np.random.default_rng(4))
    policy.configure_optimizer(OptimConfig(lr=0.05))
    rollouts = await _rollouts(policy)
    metrics = policy.update(rollouts, np.array([1.0, -1.0, 1, -1]), grpo=GRPOConfig(), lr=0.05)
    assert math.isfinite(metrics["kl"]) and metrics["update_norm"] > 0
    again = await policy.generate(snap0, EXAMPLE, 3, np.random.default_rng(4))
    for a, b in zip(before, again, strict=True):
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
    live = policy.trainable_arrays()
    assert any(not np.array_equal(live[n], snap0.params[n]) for n in names)


async def test_generation_and_updates_all_run_on_the_policys_one_model_thread() -> None:
    """Calls from the loop's worker threads and from the caller all land on one thread (so
    torch's allocations share one malloc arena: see engine.policies.hf.worker)."""
    import threading

    import anyio.to_thread

    policy = tiny_policy()
    seen: list[int] = []
    for name in ("_generate_sync", "_update", "_completion_logprobs"):
        inner = getattr(policy, name)

        def spy(*args: object, _inner: object = inner) -> object:
            seen.append(threading.get_ident())
            return _inner(*args)  # type: ignore[operator]

        setattr(policy, name, spy)
    rollouts = await _rollouts(policy)
    rollouts += await _rollouts(policy, seed=1)
    policy.configure_optimizer(OptimConfig(lr=0.05))
    adv = np.array([1.0, -1.0] * 4)
    await anyio.to_thread.run_sync(lambda: policy.update(rollouts, adv, grpo=GRPOConfig(), lr=0.05))
    policy.completion_logprobs(rollouts)
    assert len(seen) == 4 and len(set(seen)) == 1 and threading.get_ident() not in seen
