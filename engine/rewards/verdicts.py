"""Judge verdicts: the result type, the strict parsers of a judge's reply, and the JSON schemas
a judge asks for.

Verdicts are parsed strictly: the first JSON object of the reply; ``score`` must be a JSON
number (not a string, not NaN) and is clamped to [0, 1]; ``feedback``, when present, must be a
string. Anything else raises :class:`~engine.errors.OutputParseError` carrying the raw reply,
which makes the rollout a recorded failure (reward NaN, masked from the advantages), never a
silent 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from ..endpoints.signatures import find_json_object
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
        score: in [0, 1] (clamped).
        feedback: the judge's explanation ("" when it gave none).
        raw: the judge's whole reply (shared by a group's verdicts).
        cached: served from the cache or a shared in-flight call, not a new request.
    """

    score: float
    feedback: str
    raw: str
    cached: bool = False


def _score_value(value: Any, what: str, raw: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutputParseError(
            f"{what} must be a JSON number, got {type(value).__name__} {value!r}", raw=raw
        )
    try:
        x = float(value)
    except OverflowError:  # an integer too large for a float
        x = math.inf
    if not math.isfinite(x):
        raise OutputParseError(f"{what} must be finite, got {value!r}", raw=raw)
    return min(1.0, max(0.0, x))


def parse_verdict(text: str) -> tuple[float, str]:
    """``(score, feedback)`` from a reply holding ``{"score": <0..1>, "feedback": "..."}``.

    The first JSON object in the reply is the verdict; text around it is ignored. ``score``
    must be a number and is clamped to [0, 1]; ``feedback`` is optional but must be a string.

    Raises:
        OutputParseError: no JSON object, or the first one is not a valid verdict.
    """
    obj = find_json_object(text)
    if obj is None:
        raise OutputParseError("the judge's reply holds no JSON object", raw=text)
    if "score" not in obj:
        raise OutputParseError(f"the verdict has no 'score' (keys: {sorted(obj)})", raw=text)
    score = _score_value(obj["score"], "'score'", text)
    feedback = obj.get("feedback", "")
    if feedback is None:
        feedback = ""
    if not isinstance(feedback, str):
        raise OutputParseError("'feedback' must be a string", raw=text)
    return score, feedback


def parse_group_verdict(text: str, k: int) -> list[tuple[float, str]]:
    """``k`` ``(score, feedback)`` pairs from ``{"scores": [...], "feedback": [...]}``.

    ``scores`` must hold exactly ``k`` numbers (each clamped to [0, 1]); ``feedback`` is
    optional but, when present, exactly ``k`` strings. For ``k == 1`` the single form
    ``{"score": s, "feedback": "..."}`` is accepted too.

    Raises:
        OutputParseError: anything else; the whole group's verdict is invalid.
    """
    obj = find_json_object(text)
    if obj is None:
        raise OutputParseError("the judge's reply holds no JSON object", raw=text)
    if k == 1 and "scores" not in obj and "score" in obj:
        return [parse_verdict(text)]
    scores = obj.get("scores")
    if not isinstance(scores, list) or len(scores) != k:
        got = f"{len(scores)} entries" if isinstance(scores, list) else repr(scores)
        raise OutputParseError(f"'scores' must be a list of {k} numbers, got {got}", raw=text)
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
        raise OutputParseError(f"'feedback' must be a list of {k} strings", raw=text)
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
