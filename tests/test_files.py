"""engine.files: run-directory writes that never follow a planted symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import RunDirError
from engine.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    create_exclusive,
    ensure_dir,
    make_temp_dir,
    open_append,
    open_read,
    temp_name,
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the run directory that a planted symlink points to."""
    target = tmp_path / "outside.txt"
    target.write_bytes(b"precious\n")
    return target


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_atomic_write_replaces_a_planted_symlink(run_dir: Path, outside: Path) -> None:
    """A symlink at the final name is replaced by the new file; its target is untouched."""
    (run_dir / "summary.json").symlink_to(outside)
    atomic_write_bytes(run_dir / "summary.json", b"{}")
    assert not (run_dir / "summary.json").is_symlink()
    assert (run_dir / "summary.json").read_bytes() == b"{}"
    assert outside.read_bytes() == b"precious\n"


def test_atomic_write_ignores_planted_tmp_names(run_dir: Path, outside: Path) -> None:
    """The old fixed temporary names (NAME.tmp) planted as symlinks are never written."""
    for name in ("report.html.tmp", ".report.html.tmp", "metrics.jsonl.tmp"):
        (run_dir / name).symlink_to(outside)
    atomic_write_text(run_dir / "report.html", "<html></html>")
    atomic_write_bytes(run_dir / "metrics.jsonl", b"")
    assert outside.read_bytes() == b"precious\n"
    assert (run_dir / "report.html").read_text() == "<html></html>"
    leftovers = [p.name for p in run_dir.iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # the random temporary file was renamed away


def test_temp_names_are_random_and_hidden(run_dir: Path) -> None:
    """Temporary names cannot be guessed in advance: 64 random bits, a leading dot."""
    names = {temp_name(run_dir / "config.json").name for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith(".config.json.tmp-") and len(n) == len(".config.json.tmp-") + 16
               for n in names)  # fmt: skip


def test_atomic_write_onto_a_directory_is_refused(run_dir: Path) -> None:
    """A directory at the target name is one RunDirError, and nothing is left behind."""
    (run_dir / "report.html").mkdir()
    with pytest.raises(RunDirError, match="is a directory"):
        atomic_write_text(run_dir / "report.html", "x")
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html"]


def test_open_append_refuses_symlinks_and_special_files(run_dir: Path, outside: Path) -> None:
    """A symlink, a FIFO or a directory where a log goes is refused with a clear error."""
    (run_dir / "events.jsonl").symlink_to(outside)
    with pytest.raises(RunDirError, match="symlink"):
        open_append(run_dir / "events.jsonl")
    (run_dir / "dangling.jsonl").symlink_to(run_dir / "nowhere")
    with pytest.raises(RunDirError, match="symlink"):
        open_append(run_dir / "dangling.jsonl")
    assert not (run_dir / "nowhere").exists()
    os.mkfifo(run_dir / "metrics.jsonl")  # opening a FIFO must not block either
    with pytest.raises(RunDirError, match=r"not a regular file|cannot open"):
        open_append(run_dir / "metrics.jsonl")
    (run_dir / "d.jsonl").mkdir()
    with pytest.raises(RunDirError):
        open_append(run_dir / "d.jsonl")
    assert outside.read_bytes() == b"precious\n"


def test_open_append_appends_and_creates(run_dir: Path) -> None:
    """A missing log is created; an existing one is appended to."""
    with open_append(run_dir / "m.jsonl") as fh:
        fh.write(b"1\n")
    with open_append(run_dir / "m.jsonl", read=True) as fh:
        assert fh.read() == b"1\n"
        fh.seek(0)
        fh.write(b"2\n")  # O_APPEND: at the end, wherever the file position is
    assert (run_dir / "m.jsonl").read_bytes() == b"1\n2\n"


def test_open_read_refuses_a_symlink(run_dir: Path, outside: Path) -> None:
    """A run file read back (metrics.jsonl on resume) is never read through a symlink."""
    (run_dir / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(RunDirError, match="symlink"):
        open_read(run_dir / "metrics.jsonl")
    with pytest.raises(FileNotFoundError):
        open_read(run_dir / "absent.jsonl")


def test_temp_dir_and_exclusive_files(run_dir: Path, outside: Path) -> None:
    """A checkpoint's temporary directory is new and private to the writer; a file created in
    it exclusively fails where anything, a symlink included, is already there."""
    tmp = make_temp_dir(run_dir / "step-3")
    assert tmp.parent == run_dir and tmp.name.startswith(".step-3.tmp-") and tmp.is_dir()
    (tmp / "meta.json").symlink_to(outside)
    with pytest.raises(FileExistsError):
        create_exclusive(tmp / "meta.json")
    with create_exclusive(tmp / "arrays.npz") as fh:
        fh.write(b"x")
    assert outside.read_bytes() == b"precious\n"


def test_ensure_dir(run_dir: Path, tmp_path: Path) -> None:
    """A subdirectory the engine names must be a real directory; a user's --out may be a
    symlink to one, never a file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(RunDirError, match="symlink"):
        ensure_dir(run_dir / "checkpoints")
    assert ensure_dir(run_dir / "checkpoints", follow=True).is_dir()
    (run_dir / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        ensure_dir(run_dir / "file", follow=True)
    with pytest.raises(RunDirError):
        ensure_dir(run_dir / "file" / "below", follow=True)
    assert ensure_dir(run_dir / "a" / "b").is_dir()


def test_check_writable(run_dir: Path, outside: Path) -> None:
    """What a run will append to or fill is checked before it writes anything."""
    check_writable(run_dir / "absent.jsonl")
    (run_dir / "events.jsonl").symlink_to(outside)
    with pytest.raises(RunDirError, match="symlink"):
        check_writable(run_dir / "events.jsonl")
    (run_dir / "metrics.jsonl").mkdir()
    with pytest.raises(RunDirError, match="not a regular file"):
        check_writable(run_dir / "metrics.jsonl")
    check_writable(run_dir / "metrics.jsonl", directory=True)
    (run_dir / "checkpoints").write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        check_writable(run_dir / "checkpoints", directory=True)
