"""Data stage: JSONL datasets, streamed one example per line.

Two line formats are accepted, one JSON object per line:

- a training example: ``{"input": {"text": "..."}, "output": {"generated": "...",
  "quality": 0.9}}`` (``output`` optional; extra input fields are kept in ``Example.inputs``);
- a plain prompt: ``{"prompt": "...", "answer": "..."}`` (any other keys go to ``Example.meta``;
  ``answer``, ``target`` or ``completion`` become ``Example.target``).

Blank lines are skipped; a line may be at most :data:`MAX_LINE_BYTES` long. A malformed line
raises :class:`~engine.errors.DataError` naming the
file and the 1-based line number. Files are streamed, never loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import orjson

from ..errors import DataError
from ..types import Example

__all__ = ("MAX_LINE_BYTES", "parse_example", "read_jsonl")

MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest line a dataset may have: a longer one (a file with no newline, such as
``/dev/zero`` or a binary) is a DataError, not a read without end."""

_TARGET_KEYS = ("answer", "target", "completion")
"""Keys of a plain-prompt line that give the reference answer, the first present wins."""


def read_jsonl(path: str | Path) -> Iterator[Example]:
    """Stream examples from a JSONL file; DataError names the file and line on bad input."""
    where = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(f"cannot open dataset: {exc.strerror}", path=where) from None
    with fh:
        lineno = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:  # /dev/zero, a binary file: no newline in sight
                raise DataError(f"line longer than {MAX_LINE_BYTES} bytes", path=where, line=lineno)
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc}", path=where, line=lineno) from None
            yield parse_example(obj, path=where, line=lineno)


def parse_example(obj: object, *, path: str = "<data>", line: int = 0) -> Example:
    """Turn one decoded JSON line into an :class:`Example`; raise DataError when malformed.

    The id is the line's ``id`` field, or ``PATH:LINE`` when it has none.
    """
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    ex_id = f"{path}:{line}"
    if "id" in obj:
        if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
            raise DataError("'id' must be a string or an integer", path=path, line=line)
        ex_id = str(obj["id"])
    if "input" in obj:
        return _training_example(obj, ex_id, path, line)
    if "prompt" in obj:
        return _plain_prompt(obj, ex_id, path, line)
    raise DataError(
        'expected an "input": {"text": ...} object or a "prompt" string', path=path, line=line
    )


def _training_example(obj: dict[str, object], ex_id: str, path: str, line: int) -> Example:
    """``{"input": {"text": ...}, "output": {"generated": ..., "quality": ...}}``."""
    inp = obj["input"]
    if not isinstance(inp, dict):
        raise DataError(
            f"'input' must be an object like {{\"text\": ...}}, got {type(inp).__name__}",
            path=path,
            line=line,
        )
    text = inp.get("text")
    if not isinstance(text, str):
        raise DataError("'input.text' must be a string", path=path, line=line)
    target = None
    quality = None
    out = obj.get("output")
    if out is not None:
        if not isinstance(out, dict):
            raise DataError(
                f"'output' must be an object, got {type(out).__name__}", path=path, line=line
            )
        target = out.get("generated")
        if target is not None and not isinstance(target, str):
            raise DataError("'output.generated' must be a string", path=path, line=line)
        q = out.get("quality")
        if q is not None:
            if isinstance(q, bool) or not isinstance(q, int | float) or not _finite(q):
                raise DataError("'output.quality' must be a finite number", path=path, line=line)
            quality = float(q)
    meta = {k: v for k, v in obj.items() if k not in ("input", "output", "id")}
    return Example(ex_id, text, dict(inp), target, quality, meta)


def _plain_prompt(obj: dict[str, object], ex_id: str, path: str, line: int) -> Example:
    """``{"prompt": ..., "answer": ...}``; the answer may be a number."""
    text = obj["prompt"]
    if not isinstance(text, str):
        raise DataError("'prompt' must be a string", path=path, line=line)
    target = None
    for key in _TARGET_KEYS:
        if key in obj:
            val = obj[key]
            if isinstance(val, bool) or not isinstance(val, str | int | float):
                raise DataError(f"'{key}' must be a string or a number", path=path, line=line)
            target = str(val)
            break
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "id")}
    return Example(ex_id, text, {"text": text}, target, None, meta)


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False
