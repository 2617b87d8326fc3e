"""Without the torch extra: `import engine` never imports torch, and asking for the hf policy
is one ConfigError saying what to install. Runs with or without torch installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.loading import load_config
from engine.config.sections import HFConfig
from engine.errors import ConfigError
from engine.policies.hf import build_hf_policy

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_engine_and_its_assembly_imports_no_torch() -> None:
    code = (
        "import sys, engine, engine.training.assembly, engine.policies.hf, engine.cli.run\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def _without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("torch", "peft") else real(name, *a),
    )


def test_policy_hf_without_the_extra_is_one_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without_torch(monkeypatch)
    cfg = tmp_path / "run.toml"
    cfg.write_text('policy = "hf"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    err = info.value
    assert err.key == "policy" and str(cfg) in str(err)
    assert "pip install 'grpo-engine[torch]'" in str(err) and "needs torch" in str(err)
    assert "peft" in str(err)
    with pytest.raises(ConfigError, match=r"pip install 'grpo-engine\[torch\]'"):
        build_hf_policy(HFConfig(), seed=0)
    load_config(None, ["policy='tinylm'"])  # other policies do not need it


def test_hf_section_rules() -> None:
    with pytest.raises(ConfigError, match="LoRA needs target modules"):
        load_config(None, ["hf.target_modules=[]"])
    load_config(None, ["hf.target_modules=[]", "hf.full_finetune=true"])
    with pytest.raises(ConfigError, match="must contain"):
        load_config(None, ["hf.prompt_template='no placeholder'"])
    with pytest.raises(ConfigError, match=r"hf\.lora_rank"):
        load_config(None, ["hf.lora_rank=0"])
