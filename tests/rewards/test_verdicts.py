"""Strict parsing of judge replies into verdicts."""

from __future__ import annotations

import math

import pytest

from engine.errors import OutputParseError
from engine.rewards.verdicts import parse_group_verdict, parse_verdict


def test_parse_verdict_valid_and_clamped() -> None:
    """A verdict's score is read as a number and clamped to [0, 1]."""
    assert parse_verdict('{"score": 0.25, "feedback": "meh"}') == (0.25, "meh")
    assert parse_verdict('Here: {"score": 1.7, "feedback": "x"} done') == (1.0, "x")
    assert parse_verdict('{"score": -3}') == (0.0, "")
    assert parse_verdict('```json\n{"score": 1, "feedback": null}\n```') == (1.0, "")


@pytest.mark.parametrize(
    "reply",
    [
        "no json here",
        '{"score": "0.8", "feedback": "a string score"}',
        '{"score": true}',
        '{"feedback": "no score"}',
        '{"score": 0.5, "feedback": 3}',
        '{"score": NaN}',
        '{"score": [0.5]}',
        '{"verdict": "first object wins"} {"score": 0.9}',
    ],
)
def test_parse_verdict_strict(reply: str) -> None:
    """Anything but a first JSON object with a numeric score is a parse error keeping the raw."""
    with pytest.raises(OutputParseError) as info:
        parse_verdict(reply)
    assert info.value.raw == reply


def test_parse_group_verdict_counts() -> None:
    """A group verdict needs exactly k scores, and k feedback strings when feedback is given."""
    assert parse_group_verdict('{"scores": [0.1, 2], "feedback": ["a", "b"]}', 2) == [
        (0.1, "a"),
        (1.0, "b"),
    ]
    assert parse_group_verdict('{"scores": [0.5, 0.5]}', 2) == [(0.5, ""), (0.5, "")]
    assert parse_group_verdict('{"score": 0.4, "feedback": "one"}', 1) == [(0.4, "one")]
    for bad in (
        '{"scores": [0.1]}',
        '{"scores": [0.1, 0.2, 0.3]}',
        '{"scores": [0.1, "x"]}',
        '{"scores": [0.1, 0.2], "feedback": ["only one"]}',
        '{"score": 0.4}',
    ):
        with pytest.raises(OutputParseError):
            parse_group_verdict(bad, 2)


def test_nan_is_not_a_score() -> None:
    """A verdict score can never be NaN (JSON has no NaN; the parser rejects the constant)."""
    with pytest.raises(OutputParseError):
        parse_verdict('{"score": Infinity}')
    assert not math.isnan(parse_verdict('{"score": 1e308}')[0])
