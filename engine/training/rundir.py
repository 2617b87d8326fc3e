"""One owner per run directory: an exclusive lock while a run writes it, and no silent reuse.

::

    with claim_run_dir("runs/a", resume=False, overwrite=False) as claim:
        ...  # the run writes runs/a; runs/a/run.lock holds this process's pid

While a run writes ``OUT``, it holds ``OUT/run.lock`` under ``fcntl.flock(LOCK_EX)`` with its
pid written in it. A second run on ``OUT`` is refused at once, naming that pid. The kernel
drops the lock of a process that dies, however it dies, so a lock file left by a killed run
is stale: the next run takes it over (and logs the pid it found). The holder removes the file
when it is done; a run that finds the file it locked unlinked or replaced by then locks the new
one, so two runs can never both hold it.

A directory that holds another run (:data:`RUN_MARKERS`) is refused unless the run resumes it
or ``overwrite`` is given; then :meth:`RunDirClaim.replace_old_run` deletes the old run's files
(:data:`RUN_OUTPUTS`) once the new run's input has been checked (the trainer calls it just
before it writes), so none of the old metrics or higher-numbered checkpoints survives into the
new run, and bad input leaves the old run as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..telemetry.logs import get_logger

__all__ = ("LOCK_NAME", "RUN_MARKERS", "RUN_OUTPUTS", "RunDirClaim", "claim_run_dir")

_log = get_logger("engine.training.rundir")

LOCK_NAME = "run.lock"
"""The lock file in a run directory."""

RUN_MARKERS = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")
"""Files whose presence means a directory holds a run."""

RUN_OUTPUTS = (*RUN_MARKERS, "events.jsonl", "report.html", "comparison.json")
"""What ``overwrite`` deletes: the files a run (and ``report``, ``compare --out``) writes
there. Anything else in the directory is left alone (served adapters too: each run names
its own)."""


class RunDirClaim:
    """The lock on one run directory, held until :meth:`release` (or the ``with`` block ends).

    Attributes:
        out: the run directory.
        stale_pid: the pid a stale lock file named when it was taken over, else None.
    """

    def __init__(self, out: Path, fd: int, created: list[Path], stale_pid: int | None) -> None:
        self.out = out
        self.stale_pid = stale_pid
        self.replaces: tuple[str, ...] = ()  # the old run's files that overwrite will delete
        self._fd: int | None = fd  # the locked lock file; None once released
        self._created = created  # directories made for the claim, deepest first

    @property
    def held(self) -> bool:
        """Whether the lock is still held."""
        return self._fd is not None

    def replace_old_run(self) -> None:
        """Delete the files of the run this one overwrites (none unless ``overwrite`` found
        one); call it when the new run's input has been checked, before it writes."""
        if self.replaces and self.held:
            _clear(self.out)
            self.replaces = ()

    def release(self) -> None:
        """Remove the lock file and drop the lock; remove the directories the claim made if
        nothing was written into them. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        path = self.out / LOCK_NAME
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)  # still ours: unlinked while locked, so no one can lock it now
        os.close(fd)
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: the run wrote there

    def __enter__(self) -> RunDirClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunDirClaim:
    """Lock the run directory ``out`` (created if missing) for this process (blocking I/O,
    brief: the lock is never waited for).

    Args:
        out: the run directory.
        resume: the run continues the one in ``out``, so its files are expected there.
        overwrite: the run replaces the one in ``out``: :meth:`RunDirClaim.replace_old_run`
            deletes its files.

    Raises:
        ConfigError: ``out`` is not a directory; another live run holds it (naming its pid);
            it holds another run and neither ``resume`` nor ``overwrite`` is given.
    """
    directory = Path(out)
    created = _make_dirs(directory)
    try:
        fd, stale = _lock(directory)
    except BaseException:
        _remove_empty(created)
        raise
    claim = RunDirClaim(directory, fd, created, stale)
    try:
        if stale is not None:
            _log.warning("run_dir.stale_lock", path=str(directory), pid=stale,
                         running=_alive(stale))  # fmt: skip
        found = [name for name in RUN_MARKERS if (directory / name).exists()]
        shown = [f"{n}/" if (directory / n).is_dir() else n for n in found]
        if found and not resume:
            if not overwrite:
                listed = ", ".join(shown)
                raise ConfigError(
                    f"{directory} holds another run ({listed}): pass --resume {directory} "
                    "to continue it, --overwrite to replace it, or another --out"
                )
            claim.replaces = tuple(found)
    except BaseException:
        claim.release()
        raise
    return claim


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; those created, deepest first."""
    missing = []
    probe = directory
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{directory}: not a directory", key="out") from None
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot create it: {exc.strerror}", key="out") from None
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory", key="out")
    return missing


def _remove_empty(created: list[Path]) -> None:
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            break


def _lock(directory: Path) -> tuple[int, int | None]:
    """Open and lock ``directory/run.lock``, write our pid; ``(fd, pid of a stale lock)``."""
    path = directory / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # a failed run that made the directory has just removed it
            directory.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as exc:
            raise ConfigError(f"{path}: cannot open the lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f"pid {pid}" if pid is not None else "a process that has not written its pid"
            raise ConfigError(
                f"{directory} is in use by another run ({holder}); wait for it to end, or "
                "choose another --out"
            ) from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed it after we opened it: lock the new one
            os.close(fd)
            continue
        previous = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd, previous if previous != os.getpid() else None


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).strip()
    return int(raw) if raw.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear(directory: Path) -> None:
    """Delete the files of the run in ``directory`` (:data:`RUN_OUTPUTS`)."""
    for name in RUN_OUTPUTS:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
