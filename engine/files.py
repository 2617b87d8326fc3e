"""Files of a run directory, written so that a symlink planted there is never followed.

A run directory may be shared (a team's ``runs/``, a mounted volume), so anyone who can write
into it could plant ``OUT/summary.json -> ~/.bashrc`` or ``OUT/report.html.tmp -> /etc/x``; a
plain ``open(path, "w")`` would then overwrite the target. Every writer of the engine goes
through this module instead:

- :func:`atomic_write_bytes` / :func:`atomic_write_text`: the data goes to a temporary file
  in the same directory, created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) under a
  random name nobody can plant in advance, fsynced, then renamed over the final name with
  ``os.replace``. A rename replaces a symlink at the final name; it never writes through it.
- :func:`open_append`: the JSON lines logs (``metrics.jsonl``, ``events.jsonl``, the group
  export) are opened with ``O_APPEND | O_CREAT | O_NOFOLLOW``; a symlink, a FIFO, a device
  or a directory at that name is refused with a :class:`~engine.errors.RunDirError`.
- :func:`open_read`: the same refusals for a file of the run read back (a resumed run's
  ``metrics.jsonl``), so a planted symlink cannot feed an outside file into the run.
- :func:`make_temp_dir` and :func:`create_exclusive`: a directory created exclusively under
  a random name beside its target (a checkpoint being written) and the files inside it, for
  writers that fill a directory and rename it into place.
- :func:`ensure_dir`: a subdirectory of a run directory (``checkpoints/``) that must be a
  real directory, not a symlink to somewhere else.

The names of the temporary files start with ``.`` and hold ``.tmp-``, so a crash leaves only
hidden ``.NAME.tmp-XXXXXXXX`` files, never a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import RunDirError

__all__ = (
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "create_exclusive",
    "ensure_dir",
    "fsync_dir",
    "make_temp_dir",
    "open_append",
    "open_read",
    "temp_name",
)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def temp_name(path: Path) -> Path:
    """A fresh random sibling name of ``path``: ``.NAME.tmp-<16 hex digits>``."""
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")


def fsync_dir(path: Path) -> None:
    """Force a directory's entries (a rename into it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a new temporary file and a rename.

    The parent directory must exist. A symlink at ``path`` is replaced by the file, never
    followed; whatever it pointed to is left untouched.

    Raises:
        RunDirError: ``path`` names a directory.
        OSError: the write itself failed (disk full, no permission); no file is left behind.
    """
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        raise RunDirError(f"{target}: is a directory, not a file")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    while True:
        tmp = temp_name(target)
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open(path, "w")
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        break
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def open_append(path: str | Path, *, read: bool = False) -> BinaryIO:
    """Open ``path`` for appending (created if missing), unbuffered, never through a symlink.

    ``read=True`` opens it for reading too (a writer that first cuts a torn last line).

    Raises:
        RunDirError: ``path`` is a symlink or not a regular file (a FIFO, a device, a
            directory), or it cannot be opened.
    """
    p = Path(path)
    access = os.O_RDWR if read else os.O_WRONLY
    # O_NONBLOCK: opening a FIFO with no reader fails (ENXIO) instead of blocking forever;
    # it changes nothing for a regular file and is cleared below.
    flags = access | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
    try:
        fd = os.open(p, flags, 0o666)
    except OSError as exc:
        if os.path.islink(p):
            raise RunDirError(f"{p}: is a symlink; refusing to write through it") from None
        raise RunDirError(f"{p}: cannot open for writing: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise RunDirError(f"{p}: not a regular file; refusing to write to it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+b" if read else "ab", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def open_read(path: str | Path) -> BinaryIO:
    """Open the regular file ``path`` for reading, never through a symlink.

    Raises:
        FileNotFoundError: nothing at ``path``.
        RunDirError: ``path`` is a symlink, not a regular file, or unreadable.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if os.path.islink(p):
            raise RunDirError(f"{p}: is a symlink; refusing to read through it") from None
        raise RunDirError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunDirError(f"{p}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def make_temp_dir(target: str | Path) -> Path:
    """A new empty directory beside ``target`` under a random hidden name
    (``.NAME.tmp-XXXXXXXX``), to fill and then rename to ``target``. ``mkdir`` is exclusive: it
    fails on anything already there, a symlink included, and never follows one."""
    t = Path(target)
    while True:
        tmp = temp_name(t)
        try:
            tmp.mkdir()
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        return tmp


def create_exclusive(path: str | Path) -> BinaryIO:
    """A new file at ``path``, created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``): it
    fails when anything is already there, a symlink included. For a file inside a directory
    from :func:`make_temp_dir`."""
    fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)
    return os.fdopen(fd, "wb")


def check_writable(path: str | Path, *, directory: bool = False) -> None:
    """Refuse, before a run writes anything, what :func:`open_append` (or, with ``directory``,
    :func:`ensure_dir`) would refuse later: a symlink at ``path``, or something there that is
    not a regular file (not a directory). Nothing there is fine.

    Raises:
        RunDirError: naming ``path``.
    """
    p = Path(path)
    if p.is_symlink():
        raise RunDirError(f"{p}: is a symlink; refusing to write through it")
    if p.exists() and not (p.is_dir() if directory else p.is_file()):
        kind = "a directory" if directory else "a regular file"
        raise RunDirError(f"{p}: exists and is not {kind}")


def ensure_dir(path: str | Path, *, follow: bool = False) -> Path:
    """Create the directory ``path`` if missing (parents too) and check that it is one.

    ``follow=False`` (a subdirectory the engine names, such as ``checkpoints/``) also refuses
    a symlink there, so nothing written below it lands outside the run directory;
    ``follow=True`` (a directory the user named, such as ``--out``) accepts one.

    Raises:
        RunDirError: a file (or, unless ``follow``, a symlink) is there, or it cannot be made.
    """
    p = Path(path)
    if not follow and p.is_symlink():
        raise RunDirError(f"{p}: is a symlink; refusing to write through it")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling symlink: named below
    except OSError as exc:
        raise RunDirError(f"{p}: cannot create directory: {exc.strerror}") from None
    if not follow and p.is_symlink():
        raise RunDirError(f"{p}: is a symlink; refusing to write through it")
    if not p.is_dir():
        raise RunDirError(f"{p}: exists and is not a directory")
    return p
