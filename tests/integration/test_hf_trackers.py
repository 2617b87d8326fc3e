"""The hf policy's LoRA adapter reaches the trackers (``report_to``): one GRPO step of
examples/hf_sentiment.toml on CPU through ``python -m engine run``, read back with
TensorBoard's own reader. Skipped only where torch or tensorboardX is not installed;
``.ci/run`` installs both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "hf_sentiment.toml"


def test_an_hf_run_attaches_its_adapter(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine", "run", "--config", str(EXAMPLE_CONFIG)]
    cmd += ["--out", str(out), "--steps", "1", "--quiet", "--set", 'report_to=["tensorboard"]']
    for kv in ("data.batch_size=2", "grpo.group_size=2", "trainer.eval_every=0"):
        cmd += ["--set", kv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    adapter = out / "adapter"
    config = orjson.loads((adapter / "adapter_config.json").read_bytes())
    assert config["peft_type"] == "LORA" and (adapter / "adapter_model.safetensors").exists()
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("artifacts/text_summary")]
    assert f"`{adapter}`" in texts and f"`{out / 'report.html'}`" in texts
    assert [e.step for e in acc.Scalars("reward")] == [0]
