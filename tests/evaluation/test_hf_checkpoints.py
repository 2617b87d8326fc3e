"""``eval`` and ``compare`` on hf checkpoints and saved hf models (a tiny random Llama saved
in tmp_path as ``hf.model``): the generator and evaluation restore the trained adapter,
``#ref`` is the base model."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import numpy as np
import orjson
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from engine.cli.main import main
from engine.evaluation.compare import load_generator
from engine.evaluation.compare.generation import PolicyGenerator
from engine.training.finetune import HFFineTunedModel, finetune
from engine.types import Example

from ..policies.hf.tiny import save_tiny
from ..training.test_finetune_hf import EXAMPLES, TEMPLATE, TEXTS, goodness, hf_config


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[HFFineTunedModel, Path, Path, Path]:
    """(the trained model, its run directory, its saved directory, a JSONL eval file)."""
    root = tmp_path_factory.mktemp("hf_eval")
    model_dir = save_tiny(root / "tiny")
    config = hf_config(model_dir, "reward.functions=['non_empty']")

    async def run() -> HFFineTunedModel:
        model = await finetune(
            EXAMPLES,
            base_prompt=TEMPLATE,
            reward=goodness,
            config=config,  # type: ignore[arg-type]
            out=root / "run",
        )
        assert isinstance(model, HFFineTunedModel)
        return model

    model = anyio.run(run)
    saved = model.save(root / "saved")
    data = root / "eval.jsonl"
    data.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EXAMPLES[: len(TEXTS)]))
    return model, root / "run", saved, data


@pytest.mark.parametrize("which", ["run", "saved"])
def test_eval_cli_scores_the_trained_adapter(
    hf_run: tuple[HFFineTunedModel, Path, Path, Path],
    which: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """eval --checkpoint on a run dir and on a saved model: the rows are the trained model's
    greedy answers."""
    model, run_dir, saved, data = hf_run
    rows = tmp_path / "rows.jsonl"
    args = ["eval", "--checkpoint", str(run_dir if which == "run" else saved)]
    rc = main([*args, "--data", str(data), "--json", "--quiet", "--out", str(rows)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["policy"] == "hf" and summary["n"] == len(TEXTS)
    assert summary["errors"] == 0 and summary["requests"] == 0
    got = [orjson.loads(line) for line in rows.read_bytes().splitlines()]

    async def greedy() -> list[str]:
        return [await model.generate(t) for t in TEXTS]

    want = anyio.run(greedy)
    assert [str(r["output"]).strip() for r in got] == want


async def test_load_generator_restores_the_adapter_and_ref_is_the_base_model(
    hf_run: tuple[HFFineTunedModel, Path, Path, Path],
) -> None:
    model, run_dir, saved, _ = hf_run
    for spec in (str(saved), str(run_dir)):
        gen = await load_generator(spec)
        assert isinstance(gen, PolicyGenerator)
        params = gen.snapshot.params
        for k, v in model.policy.trainable_arrays().items():
            np.testing.assert_array_equal(params[k], v)
        await gen.aclose()
    ref = await load_generator(f"{run_dir}#ref")
    assert isinstance(ref, PolicyGenerator) and ref.snapshot.version == 0
    b = [v for k, v in ref.snapshot.params.items() if "lora_B" in k]
    assert b and all(not np.any(x) for x in b)  # a fresh adapter: the base model's outputs
    texts = await ref.generate(Example("e", TEXTS[0]), 2, seed=0)
    assert len(texts) == 2
    await ref.aclose()


def test_compare_cli_on_hf_ref_against_saved_model(
    hf_run: tuple[HFFineTunedModel, Path, Path, Path], tmp_path: Path
) -> None:
    _, run_dir, saved, data = hf_run
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            "--a",
            f"{run_dir}#ref",
            "--b",
            str(saved),
            "--data",
            str(data),
            "--samples",
            "2",
            "--resamples",
            "200",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = orjson.loads((out / "comparison.json").read_bytes())
    assert result["n_inputs"] == len(TEXTS) and "quality" in result["metrics"]
