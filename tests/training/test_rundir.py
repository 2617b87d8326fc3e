"""claim_run_dir: one owner per run directory; the trainer claims its ``out`` itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.loading import load_config
from engine.errors import ConfigError
from engine.training.rundir import LOCK_NAME, claim_run_dir
from engine.training.trainer import TrainingManager


def test_a_held_directory_is_refused_naming_the_pid(tmp_path: Path) -> None:
    """A second claim while the first holds the lock fails at once and names its pid."""
    with claim_run_dir(tmp_path / "a") as claim:
        assert (tmp_path / "a" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            claim_run_dir(tmp_path / "a")
        assert claim.held
    assert not (tmp_path / "a").exists()  # made for the claim, nothing written: removed again
    with claim_run_dir(tmp_path / "a"):  # free again
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    """A lock file naming a process that died (and so holds no lock) is taken over."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(f"{pid}\n")
    with claim_run_dir(tmp_path) as claim:
        assert claim.stale_pid == pid
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    """run.lock as a symlink to a file elsewhere: refused, and the target is untouched."""
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / LOCK_NAME).symlink_to(target)
    with pytest.raises(ConfigError, match="lock file"):
        claim_run_dir(tmp_path / "a")
    assert target.read_text() == "keep"


def test_out_onto_a_file_is_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_run_dir(tmp_path / "file")


async def test_the_trainer_refuses_a_directory_with_another_run(tmp_path: Path) -> None:
    """TrainingManager claims ``out``: another run's directory needs resume or overwrite."""
    cfg = load_config(
        None, ["steps=2", "data.batch_size=2", "grpo.group_size=2", "trainer.eval_every=0"]
    )
    async with TrainingManager(cfg, out=tmp_path) as a:
        await a.run()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()
    async with TrainingManager(cfg, out=tmp_path) as b:
        with pytest.raises(ConfigError, match="holds another run"):
            await b.run()
    async with TrainingManager(cfg, out=tmp_path, overwrite=True) as c:
        assert (await c.run()).steps_done == 2
