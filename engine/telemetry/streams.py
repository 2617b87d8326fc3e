"""Standard streams that a reader closing its end does not break.

``python -m engine run ... 2>&1 | head -2`` closes the pipe after two lines. The next write
to stderr then fails with ``BrokenPipeError`` (EPIPE; Python ignores SIGPIPE), wherever it
happens: in the progress display, in a log record, in the final summary. That must end the
output to that stream, not the run. :func:`guard_standard_streams` (the command line wraps
every command in it) replaces ``sys.stdout`` and ``sys.stderr`` with :class:`GuardedStream`:
once a write or flush finds the reader gone, the stream is marked broken, its later writes are
dropped, and its file descriptor is pointed at ``/dev/null`` so that nothing else (the
interpreter's flush at exit, a C extension) trips over the closed pipe either. Other errors
are raised as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from typing import IO, Any, TextIO

__all__ = ("GuardedStream", "guard_standard_streams", "is_closed_reader")

_CLOSED_READER = frozenset({errno.EPIPE, errno.ECONNRESET})


def is_closed_reader(exc: BaseException) -> bool:
    """Whether ``exc`` says the reading end of the stream is gone (EPIPE, ECONNRESET)."""
    return isinstance(exc, OSError) and exc.errno in _CLOSED_READER


class _State:
    """Whether a stream found its reader gone; shared by the text stream and its buffer."""

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.broken = False

    def failed(self, exc: OSError) -> None:
        """Handle an error of a write or flush: a closed reader breaks the stream, others
        are raised."""
        if not is_closed_reader(exc):
            raise exc
        if self.broken:
            return
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)


class _GuardedBinary:
    """The ``.buffer`` of a :class:`GuardedStream` (structlog writes bytes there)."""

    def __init__(self, raw: IO[bytes], state: _State) -> None:
        self._raw = raw
        self._state = state

    def write(self, data: bytes) -> int:
        if not self._state.broken:
            try:
                return self._raw.write(data)
            except OSError as exc:
                self._state.failed(exc)
        return len(data)

    def flush(self) -> None:
        if not self._state.broken:
            try:
                self._raw.flush()
            except OSError as exc:
                self._state.failed(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class GuardedStream:
    """A text stream whose writes stop, silently, once its reader has gone.

    Attributes:
        broken: True once a write or flush met EPIPE or ECONNRESET; later writes are dropped.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._state = _State(stream)

    @property
    def broken(self) -> bool:
        return self._state.broken

    @property
    def wrapped(self) -> TextIO:
        """The stream this one guards."""
        return self._stream

    @property
    def buffer(self) -> _GuardedBinary:
        return _GuardedBinary(self._stream.buffer, self._state)

    def write(self, text: str) -> int:
        if not self._state.broken:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._state.failed(exc)
        return len(text)

    def writelines(self, lines: Iterator[str] | list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._state.broken:
            try:
                self._stream.flush()
            except OSError as exc:
                self._state.failed(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def guard_standard_streams() -> Iterator[None]:
    """Replace ``sys.stdout`` and ``sys.stderr`` by :class:`GuardedStream` for the block;
    restored afterwards (a stream found broken stays pointed at ``/dev/null``). A stream that
    is None (the process started with that descriptor closed) is guarded as ``/dev/null``."""
    saved = sys.stdout, sys.stderr
    with contextlib.ExitStack() as stack:
        guarded = [
            GuardedStream(s if s is not None else stack.enter_context(open(os.devnull, "w")))
            for s in saved
        ]
        sys.stdout, sys.stderr = guarded  # type: ignore[assignment]
        try:
            yield
        finally:
            for stream in guarded:  # what is still buffered, before restoring
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            sys.stdout, sys.stderr = saved
