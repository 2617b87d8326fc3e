"""The [cluster] section: its rules, and the one error when Ray is not installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.loading import load_config
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_local_and_need_no_ray() -> None:
    c = load_config(None).cluster
    assert (c.backend, c.address, c.shards, c.remote_rewards) == ("local", "", 0, ())


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (["cluster.shards=2"], "cluster.shards", 'needs cluster.backend = "ray"'),
        (
            ['reward.functions=["exact_match"]', 'cluster.remote_rewards=["exact_match"]'],
            "cluster.remote_rewards",
            'needs cluster.backend = "ray"',
        ),
        (['cluster.remote_rewards=["slow"]'], "cluster.remote_rewards", "is not one of"),
        (["cluster.shards=-1"], "cluster.shards", "must be >= 0"),
        (["cluster.reward_workers=0"], "cluster.reward_workers", "must be >= 1"),
        (["cluster.connect_timeout=0"], "cluster.connect_timeout", "must be > 0"),
        (['cluster.backend="spark"'], "cluster.backend", "expected one of"),
    ],
)
def test_bad_cluster_settings_name_the_key(overrides: list[str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(None, overrides)
    assert key in str(info.value)


def test_ray_backend_without_ray_is_one_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install 'grpo-engine\[ray\]'") as info:
        load_config(None, ["cluster.backend=ray"])
    assert "cluster.backend" in str(info.value)


def test_import_engine_does_not_import_ray() -> None:
    code = "import sys, engine, engine.cluster; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "False"
