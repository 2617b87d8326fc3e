"""Telemetry: JSON lines records, the serializer, the crash-safe writer and the reader.

Every line is written whole with one ``write`` call on a file opened in append mode, so a
crash never leaves a torn line except possibly the very last one, which :func:`read_records`
skips and a writer appending to the file (a resumed run) cuts off first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import RunDirError
from ..files import open_append, open_read

__all__ = ("JsonlWriter", "dumps", "read_json_object", "read_records")

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: object) -> bytes:
    """orjson with numpy support; NaN becomes null, paths and exceptions become strings."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def _default(obj: object) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in a file of a run directory (``config.json``, ``summary.json``), or
    None when there is no such file.

    Raises:
        RunDirError: a symlink or special file there, not valid JSON (a truncated write, a
            garbage edit), or a JSON value other than an object; the message names the file.
    """
    try:
        with open_read(path) as fh:  # never through a symlink (engine.files)
            data = orjson.loads(fh.read())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise RunDirError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_records(path: str | Path, *, int_keys: Collection[str] = ()) -> Iterator[dict[str, Any]]:
    """The records of a JSON lines file written here, in order; a torn final line is skipped.

    The file is outside input when read back (a run directory another process or person may
    have edited), so every line is checked: it must be a JSON object, and each key of
    ``int_keys`` it holds must be an integer.

    Raises:
        RunDirError: a symlink or special file there, or a line that is not such an object
            (the message names the file and the line).
    """
    with open_read(path) as fh:  # never through a symlink (engine.files)
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return  # torn last line from a crash: ignore it
            if raw.strip():
                yield _record(raw, path, lineno, int_keys)


def _record(raw: bytes, path: str | Path, lineno: int, int_keys: Collection[str]) -> dict[str, Any]:
    """One checked line of :func:`read_records`."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RunDirError(f"{path}:{lineno}: invalid JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise RunDirError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    for key in int_keys:
        value = rec.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RunDirError(f"{path}:{lineno}: {key!r} is not an integer: {value!r}")
    return rec


class JsonlWriter:
    """Append-only JSON lines file; each record is one write of one whole line.

    The file is opened at the first write, so a run that fails early leaves no empty files;
    ``path=None`` writes nothing.

    Attributes:
        path: the file, or None for a writer that discards everything.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fh: IO[bytes] | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether writes reach a file: it has a path and is not closed."""
        return self.path is not None and not self._closed

    def write_bytes(self, data: bytes) -> None:
        """Append ``data`` (whole lines, newline-terminated) in one write."""
        if not self.enabled:
            return
        if self._fh is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open_append(self.path, read=True)  # never through a symlink (engine.files)
            _cut_torn_tail(fh)  # appending after a crash: no line may join a fragment
            self._fh = fh
        self._fh.write(data)

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record as one line."""
        self.write_bytes(dumps(record) + b"\n")

    def fsync(self) -> None:
        """Force what was written to disk."""
        if self._fh is not None:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _cut_torn_tail(fh: IO[bytes]) -> None:
    """Truncate the file open in ``fh`` after its last newline: drop a torn last line a crash
    left behind (the file is opened for appending, so later writes still go to the end)."""
    end = fh.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        fh.seek(start)
        chunk = fh.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            if start + i + 1 < end:
                fh.truncate(start + i + 1)
            return
        pos = start
    if end:
        fh.truncate(0)
