"""engine.telemetry.records: serialization, and a crash tearing at most the last line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.telemetry.records import JsonlWriter, dumps, read_records


def test_dumps_handles_numpy_nan_paths_and_errors() -> None:
    """numpy values serialize; NaN and inf become null; paths and exceptions become strings."""
    out = dumps({"a": np.float32(0.5), "b": float("nan"), "c": Path("x/y"), "d": ValueError("e")})
    assert out == b'{"a":0.5,"b":null,"c":"x/y","d":"ValueError: e"}'
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"x": object()})


def test_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    """A last line without its newline (a crash mid-write) is not read."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3')
    assert list(read_records(path)) == [{"a": 1}, {"a": 2}]


def test_writer_cuts_a_torn_tail_before_appending(tmp_path: Path) -> None:
    """Appending to a file a crash left torn first drops the fragment, so no line is joined."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2')
    writer = JsonlWriter(path)
    writer.write({"a": 3})
    writer.close()
    assert list(read_records(path)) == [{"a": 1}, {"a": 3}]
    writer.write({"a": 4})  # after close: dropped
    assert list(read_records(path)) == [{"a": 1}, {"a": 3}]


def test_writer_without_path_writes_nothing(tmp_path: Path) -> None:
    """A writer with no path is disabled; one with a path creates the file only when written."""
    assert not JsonlWriter(None).enabled
    path = tmp_path / "sub" / "r.jsonl"
    writer = JsonlWriter(path)
    assert writer.enabled and not path.exists()
    writer.write({"a": 1})
    assert path.read_bytes() == b'{"a":1}\n'
    writer.close()
