"""``python -m engine run``: --resume DIR continues the run in DIR under DIR's config, and one
run owns a directory (a lock while it writes; no silent reuse), as real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.cli.main import main

from ..reliability.support import REPO, engine_env

SMALL = [
    "--set", "data.batch_size=2",
    "--set", "grpo.group_size=2",
    "--set", "data.num_examples=60",
    "--set", "trainer.eval_every=0",
    "--quiet",
]  # fmt: skip
COMPARED = ("reward", "policy_loss", "kl", "entropy", "lr")
ENV = {**engine_env(), "PYTHONPATH": str(REPO)}  # this checkout's engine from any cwd


def engine(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def metrics(out: Path) -> list[dict[str, object]]:
    """The whole lines of metrics.jsonl (a SIGKILL may have torn the last one)."""
    raw = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    return [orjson.loads(line) for line in raw if line.endswith(b"\n")]


def files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_resume_continues_the_run_in_its_directory(tmp_path: Path) -> None:
    """--resume A --steps 6 writes A, under A's config (seed, lr), and its steps equal an
    uninterrupted run's; nothing goes to the default runs/latest."""
    flags = ["--seed", "3", "--set", "optim.lr=0.05", *SMALL]
    assert engine("run", "--steps", "4", "--out", "a", *flags, cwd=tmp_path).returncode == 0
    assert engine("run", "--steps", "6", "--out", "b", *flags, cwd=tmp_path).returncode == 0
    other = tmp_path / "elsewhere"
    other.mkdir()
    resumed = engine("run", "--resume", str(tmp_path / "a"), "--steps", "6", cwd=other)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (other / "runs").exists() and not (tmp_path / "runs").exists()
    a, b = tmp_path / "a", tmp_path / "b"
    config = orjson.loads((a / "config.json").read_bytes())
    assert config["steps"] == 6 and config["seed"] == 3 and config["optim"]["lr"] == 0.05
    assert orjson.loads((a / "summary.json").read_bytes())["steps_done"] == 6
    ra, rb = metrics(a), metrics(b)
    assert [r["step"] for r in ra] == list(range(6))
    assert [{k: r[k] for k in COMPARED} for r in ra] == [{k: r[k] for k in COMPARED} for r in rb]


REFUSED = [
    (["--set", "optim.lr=0.5"], "optim.lr"),
    (["--seed", "9"], "seed"),
    (["--set", "grpo.group_size=4"], "grpo.group_size"),
    (["--set", "data.batch_size=3"], "data.batch_size"),
    (["--set", "grpo.beta=0.5", "--set", "tinylm.temperature=2.0"], "grpo.beta"),
    (["--set", "optim.schedule='cosine'"], "optim.schedule"),
    (["--out", "somewhere-else"], "another directory"),
    (["--overwrite"], "--overwrite"),
]
"""Flags a resume refuses, and what its error line names."""


def test_resume_refuses_what_changes_the_trajectory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each change beyond the resumable keys: one error line naming it, nothing written
    (through the CLI's main function, in this process)."""
    out = tmp_path / "a"
    assert engine("run", "--steps", "2", "--out", str(out), *SMALL, cwd=tmp_path).returncode == 0
    before = files(out)
    capsys.readouterr()
    for flags, named in REFUSED:
        flags = [str(tmp_path / f) if f == "somewhere-else" else f for f in flags]
        assert main(["run", "--resume", str(out), "--steps", "3", *flags]) == 2, flags
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
        assert files(out) == before and not (tmp_path / "somewhere-else").exists()


def test_resume_allows_more_steps_and_forced_changes(tmp_path: Path) -> None:
    """More steps, checkpoint cadence and limits may change; a decaying schedule's steps may
    not; --force-resume takes a change anyway and records it in config.json."""
    out = tmp_path / "a"
    assert engine("run", "--steps", "2", "--out", str(out), *SMALL, cwd=tmp_path).returncode == 0
    more = ["--set", "trainer.checkpoint_every=1", "--set", "limits.max_concurrency=3"]
    assert engine("run", "--resume", str(out), "--steps", "3", *more, cwd=tmp_path).returncode == 0
    forced = engine(
        "run", "--resume", str(out), "--steps", "4", "--set", "optim.lr=0.5", "--force-resume",
        cwd=tmp_path,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert orjson.loads((out / "config.json").read_bytes())["optim"]["lr"] == 0.5
    assert [r["step"] for r in metrics(out)] == [0, 1, 2, 3]
    before = files(out)
    fewer = engine("run", "--resume", str(out), "--steps", "2", cwd=tmp_path)
    assert "at step 4 already" in one_error(fewer) and files(out) == before
    cosine = tmp_path / "c"
    flags = ["--set", "optim.schedule='cosine'", *SMALL]
    assert engine("run", "--steps", "2", "--out", str(cosine), *flags, cwd=tmp_path).returncode == 0
    assert "steps" in one_error(
        engine("run", "--resume", str(cosine), "--steps", "3", cwd=tmp_path)
    )


def test_resume_from_an_older_checkpoint_leaves_no_later_one(tmp_path: Path) -> None:
    """Resuming from step-2 of a run that reached step-6 drops step-4 and step-6: they can
    never be what a later --resume picks."""
    out = tmp_path / "a"
    flags = ["--set", "trainer.checkpoint_every=2", *SMALL]
    assert engine("run", "--steps", "6", "--out", str(out), *flags, cwd=tmp_path).returncode == 0
    assert steps(out) == ["step-2", "step-4", "step-6"]
    proc = engine("run", "--resume", str(out / "checkpoints/step-2"), "--steps", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert steps(out) == ["step-2", "step-3"]
    assert [r["step"] for r in metrics(out)] == [0, 1, 2]


def test_a_directory_with_another_run_is_refused_and_overwrite_replaces_it(
    tmp_path: Path,
) -> None:
    """A second run on a used --out is one error line and changes nothing; --overwrite
    deletes the old run's files first, so none of its checkpoints or metrics survive."""
    out = tmp_path / "a"
    flags = ["--set", "trainer.checkpoint_every=2", *SMALL]
    assert engine("run", "--steps", "6", "--out", str(out), *flags, cwd=tmp_path).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = files(out)
    assert "holds another run" in one_error(engine("run", "--out", str(out), *flags, cwd=tmp_path))
    assert files(out) == before
    bad = ["--set", f"data.train='{tmp_path / 'absent.jsonl'}'"]
    assert "absent.jsonl" in one_error(engine("run", "--out", str(out), "--overwrite", *bad,
                                              *flags, cwd=tmp_path))  # fmt: skip
    assert files(out) == before  # bad input replaces nothing
    again = engine("run", "--steps", "2", "--out", str(out), "--overwrite", *flags, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert steps(out) == ["step-2"] and [r["step"] for r in metrics(out)] == [0, 1]
    assert (out / "notes.txt").read_text() == "mine" and not (out / "run.lock").exists()


def test_the_default_directory_is_replaced_by_the_next_run(tmp_path: Path) -> None:
    """runs/latest (no --out, no out in the config) holds the latest run: a second run there
    replaces the first with a note, so none of the first's checkpoints or metrics survive;
    the same directory named with --out is refused like any other."""
    flags = ["--set", "trainer.checkpoint_every=2", *SMALL]
    first = engine("run", "--steps", "4", *flags, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "replacing" not in first.stderr
    latest = tmp_path / "runs" / "latest"
    assert steps(latest) == ["step-2", "step-4"]
    second = engine("run", "--steps", "2", *flags, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "note: replacing the previous run in runs/latest" in second.stderr
    assert steps(latest) == ["step-2"] and [r["step"] for r in metrics(latest)] == [0, 1]
    named = engine("run", "--steps", "2", "--out", "runs/latest", *flags, cwd=tmp_path)
    assert "holds another run" in one_error(named)


def test_two_runs_on_one_out_and_a_stale_lock(tmp_path: Path) -> None:
    """While a run writes --out, a second exits 2 with one line naming the first's pid; once
    the first is SIGKILLed its lock is stale, and --resume takes it over."""
    out = tmp_path / "a"
    args = ["run", "--steps", "100000", "--out", str(out), *SMALL]
    first = subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--set", "trainer.checkpoint_every=1"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints").is_dir() or not any((out / "checkpoints").iterdir()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = engine(*args, cwd=tmp_path)
        assert f"in use by another run (pid {first.pid})" in one_error(second)
        resume = engine("run", "--resume", str(out), "--steps", "100000", cwd=tmp_path)
        assert f"pid {first.pid}" in one_error(resume)
        assert first.poll() is None  # the refused runs disturbed nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert (out / "run.lock").read_text().strip() == str(first.pid)  # left by the killed run
    done = len(metrics(out))
    resumed = engine("run", "--resume", str(out), "--steps", str(done + 2), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "run_dir.stale_lock" in resumed.stderr and str(first.pid) in resumed.stderr
    assert [r["step"] for r in metrics(out)] == list(range(done + 2))
    assert not (out / "run.lock").exists()


def test_a_resume_over_changed_data_is_refused_unless_forced(tmp_path: Path) -> None:
    """The checkpoint keeps the SHA-256 of the dataset file: resuming after the file changed
    (same path, new content) is one error naming it; --force-resume resumes anyway."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(orjson.dumps({"prompt": "abcde"[i % 5 :] + "xy"}).decode() + "\n"
                            for i in range(40)))  # fmt: skip
    out = tmp_path / "run"
    flags = ["--set", f"data.train='{data}'", "--set", "data.eval_fraction=0",
             "--set", "trainer.checkpoint_every=1", "--set", "trainer.max_failed_steps=0",
             "--set", "data.batch_size=2", "--set", "grpo.group_size=2", "--quiet"]  # fmt: skip
    first = engine("run", "--steps", "2", "--out", str(out), *flags, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    same = engine("run", "--resume", str(out), "--steps", "3", cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-2000:]  # unchanged data resumes
    with data.open("a") as f:
        f.write('{"prompt": "zz"}\n')
    before = files(out)
    refused = one_error(engine("run", "--resume", str(out), "--steps", "4", cwd=tmp_path))
    assert "data.train" in refused and str(data) in refused and "changed" in refused
    assert files(out) == before
    forced = engine("run", "--resume", str(out), "--steps", "4", "--force-resume", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert [r["step"] for r in metrics(out)] == [0, 1, 2, 3]
