"""TensorBoard: a real run's event files read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from .support import metrics, no_secret_in, numbers, run_engine, tracker_state

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _read(logdir: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_every_step_config_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_engine(out, ["tensorboard"], steps=3)
    assert proc.returncode == 0, proc.stderr
    acc = _read(out / "tensorboard")
    lines = metrics(out)
    assert [m["step"] for m in lines] == [0, 1, 2]
    for line in lines:
        for key, value in numbers(line).items():
            (event,) = [e for e in acc.Scalars(key) if e.step == line["step"]]
            assert math.isclose(event.value, value, rel_tol=1e-6, abs_tol=1e-6), key
    tags = acc.Tags()
    assert "reward" in tags["scalars"] and "eval/reward" in tags["scalars"]
    assert "summary/steps_done" in tags["scalars"]
    assert acc.Scalars("summary/steps_done")[-1].value == 3
    texts = set(tags["tensors"])  # text summaries are tensors to the reader
    assert {"config/text_summary", "summary/text_summary", "artifacts/text_summary"} <= texts
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"group_size": 4' in config_text and "TRACKERS_TEST_KEY" in config_text
    assert tracker_state(out)["tensorboard"]["run_id"] == str(out / "tensorboard")
    no_secret_in(out)


def test_tensorboard_resume_continues_the_same_logdir(tmp_path: Path) -> None:
    """A crash after step 3 whose last checkpoint is step 2 (step-3 removed): the resumed run
    redoes step 2, and purge_step drops the first run's events of it."""
    out = tmp_path / "run"
    first = run_engine(out, ["tensorboard"], steps=3)
    assert first.returncode == 0 and "warning: tracker" not in first.stderr, first.stderr
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    shutil.rmtree(out / "checkpoints" / "step-3")
    proc = run_engine(out, ["tensorboard"], steps=4, resume=True)
    assert proc.returncode == 0 and "warning: tracker" not in proc.stderr, proc.stderr
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    acc = _read(out / "tensorboard")
    rewards = acc.Scalars("reward")
    assert [e.step for e in rewards] == [0, 1, 2, 3]  # one event per step, none twice
    by_step = {m["step"]: m["reward"] for m in metrics(out)}
    for e in rewards:
        assert math.isclose(e.value, by_step[e.step], rel_tol=1e-6)
    assert tracker_state(out)["tensorboard"]["run_id"] == str(out / "tensorboard")
