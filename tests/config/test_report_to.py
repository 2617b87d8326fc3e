"""``report_to`` and ``[tracking]``: known tracker names only, once each; sane defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.config.sections import TRACKERS
from engine.errors import ConfigError


def test_report_to_is_empty_by_default() -> None:
    config = load_config()
    assert config.report_to == ()
    assert config.tracking.project == "grpo-engine" and config.tracking.run_name == ""
    assert config.tracking.wandb_mode == "offline"


def test_report_to_takes_every_known_tracker_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'report_to = ["tensorboard", "mlflow", "wandb", "trackio"]\n'
        '[tracking]\nproject = "p"\nmlflow_tracking_uri = "http://127.0.0.1:5000"\n'
    )
    config = load_config(path)
    assert config.report_to == TRACKERS
    assert config.tracking.project == "p"


def test_an_unknown_tracker_names_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('report_to = ["tensorboard", "neptune"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'report_to'" in msg and "'neptune'" in msg
    assert "known trackers: tensorboard, mlflow, wandb, trackio" in msg


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ('report_to=["mlflow", "mlflow"]', "named twice"),
        ('report_to="mlflow"', "expected"),
        ("tracking.queue_size=0", "must be >= 1"),
        ("tracking.close_timeout=0", "must be > 0"),
        ('tracking.wandb_mode="disabled"', "expected one of"),
    ],
)
def test_bad_tracking_values_are_config_errors(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(overrides=[override])
