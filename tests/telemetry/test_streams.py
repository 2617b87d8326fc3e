"""engine.telemetry.streams: a reader closing the pipe ends the output, not the writer."""

from __future__ import annotations

import errno
import io
import os
import sys

import pytest

from engine.telemetry.streams import GuardedStream, guard_standard_streams, is_closed_reader


def test_a_closed_reader_breaks_the_stream_quietly() -> None:
    """After the reader goes, writes and flushes (text and bytes) are dropped without an
    error, and the descriptor points at /dev/null (the interpreter's flush at exit is safe)."""
    r, w = os.pipe()
    raw = os.fdopen(w, "w", buffering=1)
    stream = GuardedStream(raw)
    try:
        stream.write("first line\n")
        stream.flush()
        assert os.read(r, 100) == b"first line\n"
        os.close(r)
        stream.write("nobody reads this\n")  # EPIPE (Python ignores SIGPIPE)
        stream.flush()
        assert stream.broken
        assert stream.write("more\n") == 5
        stream.buffer.write(b"bytes too\n")
        stream.buffer.flush()
        assert os.path.samestat(os.fstat(raw.fileno()), os.stat(os.devnull))
        raw.write("straight to the file object\n")
        raw.flush()  # no BrokenPipeError any more
    finally:
        raw.close()


def test_other_errors_are_raised() -> None:
    """Only a gone reader is swallowed: a closed file or a full disk still raise."""
    stream = GuardedStream(io.TextIOWrapper(io.BytesIO()))
    stream.wrapped.close()
    with pytest.raises(ValueError):
        stream.write("x")
    assert not stream.broken
    assert is_closed_reader(BrokenPipeError(errno.EPIPE, "pipe"))
    assert not is_closed_reader(OSError(errno.ENOSPC, "full"))


def test_guard_standard_streams_restores_them() -> None:
    saved = sys.stdout, sys.stderr
    with guard_standard_streams():
        assert isinstance(sys.stdout, GuardedStream) and isinstance(sys.stderr, GuardedStream)
        assert sys.stderr.wrapped is saved[1]
        print("through the guard", file=sys.stderr)
    assert (sys.stdout, sys.stderr) == saved
