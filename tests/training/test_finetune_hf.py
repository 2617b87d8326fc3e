"""``finetune()`` and the saved model for the hf policy, on a tiny random Llama saved to disk:
training with no endpoint, save in PEFT format plus the engine's JSON, load, greedy
generation, and a base model that is not the adapter's."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anyio
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from engine.config.loading import load_config  # noqa: E402
from engine.errors import CheckpointError, ConfigError  # noqa: E402
from engine.training.finetune import (  # noqa: E402
    FineTunedModel,
    HFFineTunedModel,
    finetune,
    finetune_config,
)
from engine.types import Example  # noqa: E402

from ..policies.hf.tiny import save_tiny, tiny_model  # noqa: E402

TEMPLATE = "review : {text} sentiment :"
TEXTS = ["the food was good", "the room was bad", "very great food", "not good", "awful room"]
EXAMPLES = [
    {"input": {"text": t}, "output": {"generated": "positive" if "good" in t else "negative"}}
    for t in TEXTS * 4
]


def peft_load(base: object, directory: str) -> object:
    """peft's own loader (peft reads a property transformers 5 deprecates: not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return peft.PeftModel.from_pretrained(base, directory)


def goodness(example: Example, text: str) -> float:
    words = text.split()
    return sum(w in ("good", "great", "positive") for w in words) / max(1, len(words))


def hf_config(model_dir: Path, *extra: str) -> object:
    return load_config(
        None,
        [
            "policy='hf'",
            f"hf.model='{model_dir}'",
            "hf.max_new_tokens=4",
            "steps=2",
            "data.batch_size=2",
            "grpo.group_size=4",
            "grpo.mini_batch_size=2",
            "optim.lr=0.05",
            "trainer.eval_every=0",
            "trainer.eval_size=2",
            "trainer.checkpoint_every=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[HFFineTunedModel, Path, Path]:
    """(the model finetune() returns, its run directory, its saved directory)."""
    root = tmp_path_factory.mktemp("hf_finetune")
    model_dir = save_tiny(root / "tiny")

    async def run() -> HFFineTunedModel:
        model = await finetune(
            EXAMPLES,
            base_prompt=TEMPLATE,
            reward=goodness,
            config=hf_config(model_dir),  # type: ignore[arg-type]
            out=root / "run",
        )
        assert isinstance(model, HFFineTunedModel)
        return model

    model = anyio.run(run)
    saved = model.save(root / "saved")
    return model, root / "run", saved


def test_finetune_trains_the_adapter_without_an_endpoint(
    trained: tuple[HFFineTunedModel, Path, Path],
) -> None:
    model, run_dir, _ = trained
    assert model.summary is not None and model.summary.steps_done == 2
    assert model.step == 2 and model.policy.client is None and model._owned == []
    b = [v for k, v in model.policy.trainable_arrays().items() if "lora_B" in k]
    assert b and max(float(np.abs(x).max()) for x in b) > 0  # LoRA B left zero
    assert model.best_prompt == TEMPLATE and model.candidates == []
    assert (run_dir / "checkpoints").is_dir()


def test_saved_model_is_peft_plus_json_and_no_pickle(
    trained: tuple[HFFineTunedModel, Path, Path],
) -> None:
    model, _, saved = trained
    names = {p.name for p in saved.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "meta.json"} <= names
    assert names <= {"adapter_config.json", "adapter_model.safetensors", "meta.json",
                     "arrays.npz", "README.md"}  # fmt: skip
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["model"] == "grpo-engine/finetuned-hf-policy" and meta["adapter_format"] == "peft"
    assert meta["base_model"] == {
        "model": model.config.hf.model,
        "fingerprint": model.policy.base_fingerprint,
    }
    assert meta["config"]["policy"] == "hf" and meta["step"] == 2
    np.load(saved / "arrays.npz", allow_pickle=False)  # numeric arrays only


def test_saved_adapter_loads_in_peft_with_the_policys_logits(
    trained: tuple[HFFineTunedModel, Path, Path],
) -> None:
    model, _, saved = trained
    base = type(tiny_model()).from_pretrained(model.config.hf.model)
    loaded = peft_load(base, str(saved)).eval()
    ids = torch.tensor([[1, 13, 6, 12, 7, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits,
            model.policy.model(input_ids=ids).logits,
            rtol=0,
            atol=1e-6,
        )


async def test_load_restores_the_model_and_generates_its_greedy_text(
    trained: tuple[HFFineTunedModel, Path, Path],
) -> None:
    model, _, saved = trained
    loaded = FineTunedModel.load(saved)
    assert isinstance(loaded, HFFineTunedModel) and loaded.step == 2
    want, got = model.policy.trainable_arrays(), loaded.policy.trainable_arrays()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    for text in TEXTS:
        assert await loaded.generate(text) == await model.generate(text)
    assert await loaded.generate({"text": TEXTS[0]}, sample=True, seed=3) == await model.generate(
        TEXTS[0], sample=True, seed=3
    )


def test_load_of_a_run_directory_gives_its_latest_checkpoint(
    trained: tuple[HFFineTunedModel, Path, Path],
) -> None:
    model, run_dir, _ = trained
    loaded = FineTunedModel.load(run_dir)
    assert isinstance(loaded, HFFineTunedModel)
    want, got = model.policy.trainable_arrays(), loaded.policy.trainable_arrays()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_an_adapter_of_another_base_model_is_one_error_naming_both(
    trained: tuple[HFFineTunedModel, Path, Path], tmp_path: Path
) -> None:
    model, _, saved = trained
    other = save_tiny(tmp_path / "other-tiny", seed=1)
    with pytest.raises(CheckpointError) as info:
        FineTunedModel.load(saved, overrides=[f"hf.model='{other}'"])
    message = str(info.value)
    assert model.config.hf.model in message and str(other) in message
    assert model.policy.base_fingerprint in message


def test_a_tampered_adapter_config_is_an_error_not_obeyed(
    trained: tuple[HFFineTunedModel, Path, Path], tmp_path: Path
) -> None:
    _, _, saved = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in saved.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj"]
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="target_modules"):
        FineTunedModel.load(copy)


def test_finetune_config_for_hf(tmp_path: Path) -> None:
    config = finetune_config(
        base_prompt=TEMPLATE, hf={"model": str(tmp_path), "lora_rank": 4}, optimizer={"lr": 1e-3}
    )
    assert config.policy == "hf" and config.hf.prompt_template == TEMPLATE
    assert config.hf.lora_rank == 4 and config.optim.lr == 1e-3 and config.steps == 20
    with pytest.raises(ConfigError, match=r"needs \{text\}"):
        finetune_config(base_prompt="Classify.", hf={"model": str(tmp_path)})
    kept = finetune_config(config=config)
    assert kept.hf.prompt_template == TEMPLATE


async def test_evaluate_scores_the_model_with_its_training_rewards(
    trained: tuple[HFFineTunedModel, Path, Path],
) -> None:
    model, _, _ = trained
    result = await model.evaluate(EXAMPLES[: len(TEXTS)])
    assert result.summary()["n"] == len(TEXTS) and result.summary()["errors"] == 0
    want = [goodness(Example("e", t), await model.generate(t)) for t in TEXTS]
    assert sorted(r["reward"] for r in result.rows) == pytest.approx(sorted(want))


async def test_a_fully_fine_tuned_model_saves_and_loads_without_an_adapter(
    tmp_path: Path,
) -> None:
    """Full fine-tuning has no LoRA adapter: the engine checkpoint alone round-trips."""
    from engine.policies.hf import build_hf_policy

    config = hf_config(save_tiny(tmp_path / "tiny"), "hf.full_finetune=true")
    policy = build_hf_policy(config.hf, seed=0)  # type: ignore[attr-defined]
    arrays, meta = policy.state()
    rng = np.random.default_rng(0)
    policy.load_state({k: v + rng.normal(0, 0.05, v.shape) for k, v in arrays.items()}, meta)
    model = HFFineTunedModel(policy, config)  # type: ignore[arg-type]
    saved = model.save(tmp_path / "saved")
    assert not (saved / "adapter_config.json").exists()
    assert json.loads((saved / "meta.json").read_text())["adapter_format"] is None
    loaded = FineTunedModel.load(saved)
    for text in TEXTS[:3]:
        assert await loaded.generate(text) == await model.generate(text)
    model.save(saved)  # replaces the directory
    assert FineTunedModel.load(saved).step == 0


async def test_a_fully_fine_tuned_model_saves_a_transformers_directory(tmp_path: Path) -> None:
    """Full fine-tuning: save writes the model by save_pretrained (loadable by transformers
    with the trained weights) beside the engine checkpoint, and load restores it."""
    model_dir = save_tiny(tmp_path / "tiny")
    model = await finetune(
        EXAMPLES[:8],
        base_prompt=TEMPLATE,
        reward=goodness,
        config=hf_config(model_dir, "hf.full_finetune=true", "steps=1"),  # type: ignore[arg-type]
    )
    assert isinstance(model, HFFineTunedModel)
    saved = model.save(tmp_path / "saved")
    names = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "meta.json"} <= names
    assert "adapter_config.json" not in names
    reloaded = type(tiny_model()).from_pretrained(saved).eval()
    base = type(tiny_model()).from_pretrained(model_dir).eval()
    ids = torch.tensor([[1, 13, 6, 12, 7, 5, 6]])
    with torch.no_grad():
        want = model.policy.model(input_ids=ids).logits
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want, rtol=0, atol=1e-6)
        assert not torch.allclose(base(input_ids=ids).logits, want)  # the weights moved
    again = FineTunedModel.load(saved)
    assert isinstance(again, HFFineTunedModel)
    for k, v in model.policy.trainable_arrays().items():
        np.testing.assert_array_equal(again.policy.trainable_arrays()[k], v, err_msg=k)


def test_a_lora_model_has_no_transformers_directory_to_save(
    trained: tuple[HFFineTunedModel, Path, Path], tmp_path: Path
) -> None:
    model, _, _ = trained
    with pytest.raises(CheckpointError, match="save_adapter"):
        model.policy.save_pretrained(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
