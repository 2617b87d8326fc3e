"""[prices."model"] tables and limits.max_cost_usd: loaded, checked, written back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.loading import load_config, to_dict
from engine.config.sections import ModelPrice
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_prices_load_from_toml_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[limits]\nmax_cost_usd = 2.5\n[prices."openai/gpt-4o-mini"]\ninput = 0.15\n'
        "output = 0.60\n[prices.local]\ninput = 0\n"
    )
    config = load_config(path)
    assert config.limits.max_cost_usd == 2.5
    assert config.prices == {
        "openai/gpt-4o-mini": ModelPrice(0.15, 0.60),
        "local": ModelPrice(0.0, 0.0),
    }
    assert load_config(base=to_dict(config)) == config
    assert load_config().limits.max_cost_usd is None and load_config().prices == {}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("limits.max_cost_usd=0", "limits.max_cost_usd"),
        ("limits.max_cost_usd=-1.0", "limits.max_cost_usd"),
        ("limits.max_cost_usd=inf", "limits.max_cost_usd"),
        ('prices={"m" = {input = -0.1}}', 'prices."m".input'),
        ('prices={"m" = {input = nan}}', 'prices."m".input'),
        ('prices={"m" = {inputs = 1.0}}', 'prices."m".inputs'),
        ('prices={"m" = 3}', 'prices."m"'),
        ('prices={"" = {input = 1.0}}', 'prices.""'),
        ("prices=[1]", "prices"),
    ],
)
def test_bad_prices_and_budgets_are_refused(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key


def test_bad_budget_on_the_command_line_is_one_line_and_status_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--out", str(out), "--set",
         "limits.max_cost_usd=-3"],
        capture_output=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.decode().strip().count("\n") == 0
    assert done.stderr.decode().startswith("error: ") and "max_cost_usd" in done.stderr.decode()
    assert not out.exists()
