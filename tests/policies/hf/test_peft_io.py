"""The hf policy's adapter in PEFT format: written by peft itself, loaded by
``peft.PeftModel.from_pretrained`` with the same logits, read back into a policy, and checked
(config against weights, config against ``[hf]``) rather than obeyed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
safetensors = pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402

from engine.errors import CheckpointError  # noqa: E402
from engine.policies.hf.policy import HFPolicy  # noqa: E402

from .tiny import tiny_model, tiny_policy  # noqa: E402


def peft_load(base: object, directory: str) -> object:
    """peft's own loader (peft reads a property transformers 5 deprecates: not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return peft.PeftModel.from_pretrained(base, directory)


def _trained(policy: HFPolicy, seed: int = 1) -> HFPolicy:
    """The policy with random non-zero adapter weights (LoRA B starts at zero)."""
    arrays, meta = policy.state()
    rng = np.random.default_rng(seed)
    policy.load_state(
        {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in arrays.items()}, meta
    )
    return policy


def _ids() -> torch.Tensor:
    return torch.tensor([[1, 13, 6, 12, 7, 5, 6], [1, 8, 16, 14, 9, 5, 6]])


def test_saved_adapter_is_peft_format_and_loads_in_peft_with_equal_logits(
    tmp_path: Path,
) -> None:
    """adapter_config.json + adapter_model.safetensors, peft's names (no adapter name, as
    vLLM's --lora-modules reads them); PeftModel.from_pretrained(base, dir) computes the
    policy's logits exactly."""
    policy = _trained(tiny_policy())
    policy.save_adapter(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "tiny"
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert len(keys) == len(policy.trainable_arrays()) == 2 * 4 * 2
    assert all(".default." not in k and ".gen." not in k for k in keys)
    assert not (tmp_path / "gen").exists()  # the generation slot is not saved
    loaded = peft_load(tiny_model(0), str(tmp_path))
    loaded.eval()
    with torch.no_grad():
        want = policy.model(input_ids=_ids()).logits
        got = loaded(input_ids=_ids()).logits
        base = tiny_model(0)(input_ids=_ids()).logits
    assert not torch.allclose(want, base, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_read_adapter_restores_the_weights_into_another_policy(tmp_path: Path) -> None:
    """An adapter read back into a policy of another init seed gives the saved weights."""
    policy = _trained(tiny_policy())
    policy.save_adapter(tmp_path)
    other = tiny_policy(seed=7)
    arrays = other.read_adapter(tmp_path)
    other.load_state(arrays, policy.state()[1])
    want, got = policy.trainable_arrays(), other.trainable_arrays()
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_config_of_another_rank_than_its_weights_is_an_error(tmp_path: Path) -> None:
    tiny_policy().save_adapter(tmp_path)
    _edit_config(tmp_path, r=4)
    with pytest.raises(CheckpointError, match=r"of rank 8, the adapter config says r=4"):
        tiny_policy(lora_rank=4).read_adapter(tmp_path)


def test_a_config_of_other_target_modules_than_its_weights_is_an_error(tmp_path: Path) -> None:
    tiny_policy().save_adapter(tmp_path)
    _edit_config(tmp_path, target_modules=["q_proj", "v_proj"])
    policy = tiny_policy(target_modules=("q_proj", "v_proj"))
    with pytest.raises(CheckpointError, match=r"adapts module '(k|o)_proj'.*do not name"):
        policy.read_adapter(tmp_path)


def test_an_adapter_config_unlike_the_hf_section_is_an_error(tmp_path: Path) -> None:
    tiny_policy().save_adapter(tmp_path)
    with pytest.raises(CheckpointError, match=r"r=8 .*but \[hf\] says r=4"):
        tiny_policy(lora_rank=4).read_adapter(tmp_path)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"peft_type": "IA3"}, "not 'LORA'"),
        ({"r": "8"}, "bad LoRA rank"),
        ({"use_dora": True}, "DoRA"),
        ({"target_modules": "q_proj"}, "list of module names"),
    ],
)
def test_malformed_adapter_configs_are_errors(
    tmp_path: Path, changes: dict[str, object], match: str
) -> None:
    tiny_policy().save_adapter(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=match):
        tiny_policy().read_adapter(tmp_path)


def test_missing_or_corrupt_adapter_files_are_errors(tmp_path: Path) -> None:
    policy = tiny_policy()
    with pytest.raises(CheckpointError, match="no PEFT adapter config"):
        policy.read_adapter(tmp_path)
    policy.save_adapter(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        policy.read_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        policy.read_adapter(tmp_path)


def test_a_fully_fine_tuned_policy_has_no_adapter(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no LoRA adapter"):
        tiny_policy(full_finetune=True).save_adapter(tmp_path)
