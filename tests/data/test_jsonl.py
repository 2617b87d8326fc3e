"""engine.data.jsonl: both line formats, and errors that name the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data import jsonl
from engine.data.jsonl import parse_example, read_jsonl
from engine.errors import DataError


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_training_example_format(tmp_path: Path) -> None:
    """Training-example lines load with input, target and quality."""
    p = write(
        tmp_path,
        [
            '{"input": {"text": "Explain quantum computing"}, '
            '"output": {"generated": "Quantum computing uses...", "quality": 0.95}}',
            '{"input": {"text": "No output here", "topic": "x"}}',
        ],
    )
    a, b = list(read_jsonl(p))
    assert a.text == "Explain quantum computing"
    assert a.target == "Quantum computing uses..."
    assert a.quality == 0.95
    assert a.id == f"{p}:1"
    assert b.target is None and b.inputs["topic"] == "x"


def test_plain_prompt_format(tmp_path: Path) -> None:
    """Plain prompt lines load; answer becomes the target; blank lines are skipped."""
    p = write(tmp_path, ['{"prompt": "2+2=", "answer": 4, "id": "q1"}', "", '{"prompt": "hi"}'])
    a, b = list(read_jsonl(p))
    assert (a.id, a.text, a.target) == ("q1", "2+2=", "4")
    assert b.text == "hi" and b.id == f"{p}:3"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"input": "text"}', "'input' must be an object"),
        ('{"input": {"text": 3}}', "'input.text' must be a string"),
        ('{"input": {"text": "a"}, "output": {"quality": "high"}}', "'output.quality'"),
        ('{"prompt": null}', "'prompt' must be a string"),
        ('{"question": "a"}', 'expected an "input"'),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    """A malformed line raises DataError naming the file and its 1-based line number."""
    p = write(tmp_path, ['{"prompt": "fine"}', line])
    with pytest.raises(DataError) as info:
        list(read_jsonl(p))
    assert f"{p}:2" in str(info.value)
    assert fragment in str(info.value)
    assert info.value.line == 2


def test_missing_file() -> None:
    """A missing dataset file is a DataError naming it."""
    with pytest.raises(DataError, match=r"missing\.jsonl"):
        list(read_jsonl("missing.jsonl"))


def test_parse_example_keeps_extra_fields() -> None:
    """An explicit id wins; extra keys go to meta; target may come from target or completion."""
    ex = parse_example({"prompt": "p", "completion": 7, "id": 3, "tag": "t"}, path="f", line=9)
    assert (ex.id, ex.target, dict(ex.meta)) == ("3", "7", {"completion": 7, "tag": "t"})
    ex = parse_example({"input": {"text": "t", "lang": "en"}, "source": "web"})
    assert ex.id == "<data>:0" and ex.inputs == {"text": "t", "lang": "en"}
    assert dict(ex.meta) == {"source": "web"}
    with pytest.raises(DataError, match="'id' must be"):
        parse_example({"prompt": "p", "id": True})


def test_a_line_without_end_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than MAX_LINE_BYTES (a file with no newline: /dev/zero, a binary) is a
    DataError naming the line, read in bounded pieces rather than whole."""
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 64)
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n' + b"\x00" * 1000)
    got = []
    with pytest.raises(DataError, match=r"long.jsonl:2: line longer than 64 bytes"):
        for ex in jsonl.read_jsonl(path):
            got.append(ex.text)
    assert got == ["ok"]
