"""Judge verdicts: the result type, the strict parsers of a judge's reply, and the JSON schemas
a judge asks for.

Verdicts are parsed strictly. The reply must hold exactly one verdict object, starting at its
first ``{`` (text around it, such as a code fence, is ignored; a second JSON object, or the
start of one, anywhere after it is not); the object has only the known keys
(``score``/``scores`` and ``feedback``), each written plainly (a key spelled with JSON
escapes, ``{"sc\\u006fre": 1}``, is not that key) and at most once; every score is a JSON
number in [0, 1] (not a string, a boolean, NaN or out of range: a judge that answers 7 did
not follow the format); ``feedback``, when present, is a string. Anything else raises
:class:`~engine.errors.OutputParseError` carrying the raw reply, which makes the rollout a
recorded failure (reward NaN, masked from the advantages), never a reward and never a
silent 0.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from ..errors import OutputParseError

__all__ = (
    "VERDICT_SCHEMA",
    "Verdict",
    "group_verdict_schema",
    "parse_group_verdict",
    "parse_verdict",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judge's grade of one completion.

    Attributes:
        score: in [0, 1].
        feedback: the judge's explanation ("" when it gave none).
        raw: the judge's whole reply (shared by a group's verdicts).
        cached: served from the cache or a shared in-flight call, not a new request.
    """

    score: float
    feedback: str
    raw: str
    cached: bool = False


class _DuplicateKey(ValueError):
    """An object in the reply repeats a key."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)
"""Refuses NaN, Infinity and duplicate keys."""
_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_COLON_RE: Final = re.compile(r"[ \t\n\r]*:")
_OBJECT_START_RE: Final = re.compile(r'\{[ \t\n\r]*["}]')
_ONE_KEYS: Final = frozenset({"score", "feedback"})
_GROUP_KEYS: Final = frozenset({"scores", "feedback"})


def _fail(message: str, raw: str) -> OutputParseError:
    return OutputParseError(message, raw=raw)


def _verdict_object(text: str) -> dict[str, Any]:
    """The one JSON object of a reply, checked for plain, unique keys (module docstring)."""
    start = text.find("{")
    if start == -1:
        raise _fail("the judge's reply holds no JSON object", text)
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except _DuplicateKey as exc:
        raise _fail(f"the verdict repeats the key {exc.args[0]!r}", text) from None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise _fail(
            "the judge's reply does not open a JSON object at its first '{'", text
        ) from None
    body = text[start:end]
    for m in _STRING_RE.finditer(body):
        if "\\" in m.group() and _COLON_RE.match(body, m.end()):
            raise _fail(f"the verdict writes a key with JSON escapes: {m.group()[:40]}", text)
    if _holds_object(text, end):
        raise _fail("the judge's reply holds more than one JSON object", text)
    return obj


def _holds_object(text: str, pos: int) -> bool:
    """Whether anything from ``pos`` on starts a JSON object (``{`` then a key or ``}``).

    A start is enough: a complete second object would be ambiguous, a truncated one is not
    a verdict either, and one linear scan keeps a long reply cheap (decoding at every ``{``
    would be quadratic on nested braces).
    """
    return _OBJECT_START_RE.search(text, pos) is not None


def _known_keys(obj: dict[str, Any], known: frozenset[str], text: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise _fail(f"the verdict has unknown keys {unknown} (allowed: {sorted(known)})", text)


def _score_value(value: Any, what: str, raw: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{what} must be a JSON number, got {type(value).__name__} {value!r}", raw)
    try:
        x = float(value)
    except OverflowError:  # an integer too large for a float
        x = math.inf
    if not 0.0 <= x <= 1.0:  # NaN fails too
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise _fail(f"{what} must be a number from 0 to 1, got {shown}", raw)
    return x


def _one(obj: dict[str, Any], text: str) -> tuple[float, str]:
    _known_keys(obj, _ONE_KEYS, text)
    if "score" not in obj:
        raise _fail(f"the verdict has no 'score' (keys: {sorted(obj)})", text)
    score = _score_value(obj["score"], "'score'", text)
    feedback = obj.get("feedback", "")
    if feedback is None:
        feedback = ""
    if not isinstance(feedback, str):
        raise _fail("'feedback' must be a string", text)
    return score, feedback


def parse_verdict(text: str) -> tuple[float, str]:
    """``(score, feedback)`` from a reply holding ``{"score": <0..1>, "feedback": "..."}``.

    The reply's one JSON object (from its first ``{``) is the verdict; text around it is
    ignored. ``score`` must be a number in [0, 1]; ``feedback`` is optional but must be a
    string; no other key, no key twice, no key written with JSON escapes.

    Raises:
        OutputParseError: anything else (see the module docstring).
    """
    return _one(_verdict_object(text), text)


def parse_group_verdict(text: str, k: int) -> list[tuple[float, str]]:
    """``k`` ``(score, feedback)`` pairs from ``{"scores": [...], "feedback": [...]}``.

    ``scores`` must hold exactly ``k`` numbers, each in [0, 1]; ``feedback`` is optional but,
    when present, exactly ``k`` strings; no other key. For ``k == 1`` the single form
    ``{"score": s, "feedback": "..."}`` is accepted too. The reply is read as by
    :func:`parse_verdict`.

    Raises:
        OutputParseError: anything else; the whole group's verdict is invalid.
    """
    obj = _verdict_object(text)
    if k == 1 and "scores" not in obj and "score" in obj:
        return [_one(obj, text)]
    _known_keys(obj, _GROUP_KEYS, text)
    scores = obj.get("scores")
    if not isinstance(scores, list) or len(scores) != k:
        got = f"{len(scores)} entries" if isinstance(scores, list) else repr(scores)[:40]
        raise _fail(f"'scores' must be a list of {k} numbers, got {got}", text)
    values = [_score_value(s, f"scores[{i}]", text) for i, s in enumerate(scores)]
    feedback = obj.get("feedback")
    if feedback is None:
        notes = [""] * k
    elif (
        isinstance(feedback, list)
        and len(feedback) == k
        and all(isinstance(f, str) for f in feedback)
    ):
        notes = list(feedback)
    else:
        raise _fail(f"'feedback' must be a list of {k} strings", text)
    return list(zip(values, notes, strict=True))


VERDICT_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "description": "grade from 0 (worst) to 1 (best)"},
        "feedback": {"type": "string", "description": "one or two sentences"},
    },
    "required": ["score", "feedback"],
    "additionalProperties": False,
}
"""The JSON schema of one verdict (sent as a ``json_schema`` response format)."""


def group_verdict_schema(k: int) -> dict[str, Any]:
    """The JSON schema of a group verdict on ``k`` candidates."""
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "number"},
                "description": f"{k} grades from 0 to 1, in the order the candidates appear",
            },
            "feedback": {
                "type": "array",
                "items": {"type": "string"},
                "description": f"{k} short explanations, same order",
            },
        },
        "required": ["scores", "feedback"],
        "additionalProperties": False,
    }
