"""Symlinks planted in a run directory never make the engine write outside it.

A shared run directory lets anyone plant ``OUT/summary.json -> ~/precious``; each test plants
symlinks named like every file the engine writes there (and like the fixed temporary names it
once used), runs ``python -m engine run`` / ``report`` / ``run --export-groups`` as a user
would, and checks that every symlink's target outside the run directory is untouched: the
symlink is replaced by the engine's file (atomic writes) or the run stops with one
``error:`` line and exit status 2 (the append-only logs, the checkpoint directory).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO, engine_env

SMALL = [
    "--set", "data.batch_size=2", "--set", "grpo.group_size=2", "--set", "trainer.eval_every=0",
    "--set", "data.num_examples=40", "--set", "trainer.checkpoint_every=1", "--quiet",
]  # fmt: skip

REPLACED = (  # written whole through a new temporary file: a symlink here is replaced
    "config.json",
    "summary.json",
    "report.html",
    "report.html.tmp",
    "metrics.jsonl.tmp",
    "groups.jsonl.tmp",
    ".metrics.jsonl.tmp",
    "checkpoints/step-1",
    "checkpoints/step-2",
    "checkpoints/.step-1.tmp",
    "checkpoints/.step-2.old",
)


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGS`` to the end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=engine_env(),
        timeout=300,
    )


class Outside:
    """Files and a directory outside the run directory, each the target of planted links."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.dir = root / "dir"
        self.dir.mkdir()
        (self.dir / "keep.txt").write_bytes(b"inside a directory a link points to\n")
        self.count = 0

    def plant(self, link: Path, *, directory: bool = False) -> None:
        """Make ``link`` a symlink to a fresh outside file (or the outside directory)."""
        link.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            link.symlink_to(self.dir, target_is_directory=True)
            return
        self.count += 1
        target = self.root / f"target-{self.count}.txt"
        target.write_bytes(f"precious {self.count}\n".encode())
        link.symlink_to(target)

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in self.root.rglob("*")
                if p.is_file()}  # fmt: skip


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path / "outside")


def test_run_and_report_replace_planted_symlinks(tmp_path: Path, outside: Outside) -> None:
    """Symlinks at every whole-file name (and the old temporary names) are replaced by the
    run's and the report's own files; nothing outside changes."""
    out = tmp_path / "run"
    for name in REPLACED:
        outside.plant(out / name, directory=name.startswith("checkpoints/step-"))
    before = outside.snapshot()
    args = ["--steps", "2", "--out", str(out), "--export-groups", str(out / "groups.jsonl")]
    refused = engine("run", *args, *SMALL)  # links named like a run's files: a used directory
    assert refused.returncode == 2 and "holds another run" in refused.stderr, refused.stderr
    assert outside.snapshot() == before
    run = engine("run", *args, "--overwrite", *SMALL)  # the old "run" goes, links unlinked
    assert run.returncode == 0, run.stderr[-3000:]
    report = engine("report", str(out))
    assert report.returncode == 0, report.stderr[-3000:]
    assert outside.snapshot() == before
    for name in ("config.json", "summary.json", "report.html", "checkpoints/step-2"):
        assert not (out / name).is_symlink(), name
    assert (out / "checkpoints" / "step-2" / "meta.json").is_file()
    assert b"<html" in (out / "report.html").read_bytes()


@pytest.mark.parametrize("name", ["metrics.jsonl", "events.jsonl", "groups.jsonl", "checkpoints"])
def test_run_refuses_a_symlinked_log_or_checkpoint_dir(
    tmp_path: Path, outside: Outside, name: str
) -> None:
    """A symlink where an append-only log or the checkpoint directory goes stops the run with
    one 'error:' line naming it, exit 2; the target is untouched."""
    out = tmp_path / "run"
    outside.plant(out / name, directory=name == "checkpoints")
    before = outside.snapshot()
    run = engine("run", "--steps", "2", "--out", str(out),
                 "--export-groups", str(out / "groups.jsonl"), *SMALL)  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-3000:]
    assert lines[-1].startswith("error: ") and name in lines[-1] and "symlink" in lines[-1]
    assert "Traceback" not in run.stderr
    assert outside.snapshot() == before
    assert sorted(p.name for p in outside.dir.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in out.iterdir()) == [name]  # refused before writing anything


def test_report_out_symlink_is_replaced(tmp_path: Path, outside: Outside) -> None:
    """``report --out FILE`` where FILE (or FILE.tmp) is a planted symlink writes a new file."""
    out = tmp_path / "run"
    run = engine("run", "--steps", "1", "--out", str(out), *SMALL)
    assert run.returncode == 0, run.stderr[-3000:]
    page = tmp_path / "shared" / "page.html"
    outside.plant(page)
    outside.plant(page.with_name("page.html.tmp"))
    before = outside.snapshot()
    report = engine("report", str(out), "--out", str(page))
    assert report.returncode == 0, report.stderr[-3000:]
    assert outside.snapshot() == before and not page.is_symlink()
