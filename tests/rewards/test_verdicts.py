"""Strict parsing of judge replies into verdicts."""

from __future__ import annotations

import json
import random

import pytest

from engine.errors import OutputParseError
from engine.rewards.verdicts import parse_group_verdict, parse_verdict


def test_parse_verdict_valid() -> None:
    """A verdict's score is read as a number in [0, 1]; text around the one object is ignored."""
    assert parse_verdict('{"score": 0.25, "feedback": "meh"}') == (0.25, "meh")
    assert parse_verdict('Here: {"score": 1, "feedback": "x"} done') == (1.0, "x")
    assert parse_verdict('{"score": 0}') == (0.0, "")
    assert parse_verdict('```json\n{"score": 1, "feedback": null}\n```') == (1.0, "")
    assert parse_verdict('{"score": 0.5, "feedback": "a \\"q\\": b {x}"}') == (0.5, 'a "q": b {x}')
    assert parse_verdict('{"score": 0.5, "feedback": "half"} and then it rambles {') == (
        0.5,
        "half",
    )


CRAFTED = [
    # not a verdict at all
    "no json here",
    '{"score": "0.8", "feedback": "a string score"}',
    '{"score": true}',
    '{"feedback": "no score"}',
    '{"score": 0.5, "feedback": 3}',
    '{"score": NaN}',
    '{"score": Infinity}',
    '{"score": [0.5]}',
    '{"score": {"value": 1}}',
    # keys written with JSON escapes are not the key
    '{"sc\\u006fre": 1}',
    '{"\\u0073core": 1.0, "feedback": "ok"}',
    '{"score": 0.1, "f\\u0065edback": "ok"}',
    '{"sc\\u006Fre": 1, "score": 0}',
    '{"score\\u0000": 1}',
    # duplicate keys, at any position
    '{"score": 0, "score": 1}',
    '{"score": 1, "feedback": "a", "feedback": "b"}',
    '{"score": 0.2, "feedback": "x", "score": 1.0}',
    # unknown keys, near misses of the known ones
    '{"score": 1, "extra": 2}',
    '{"Score": 1}',
    '{" score": 1}',
    '{"score ": 1}',
    '{"scores": [1]}',
    '{"score": 1, "reasoning": "because"}',
    # out of range: never clamped into a reward
    '{"score": 7, "feedback": "out of 10?"}',
    '{"score": -1}',
    '{"score": 1.0000001}',
    '{"score": -0.0001}',
    '{"score": 1e308}',
    '{"score": 1' + "0" * 400 + "}",
    # more than one object, or one that does not start at the first brace
    '{"score": 0.2} {"score": 1}',
    '{"verdict": "first object wins"} {"score": 0.9}',
    '{"score": 0.2}\n\nActually: {"score": 1.0, "feedback": "better"}',
    'I give {score} this: {"score": 1}',
    '{"score": 1, "feedback": "x"',
]


@pytest.mark.parametrize("reply", CRAFTED)
def test_parse_verdict_rejects_every_crafted_verdict(reply: str) -> None:
    """Anything but one plain verdict object is a parse error keeping the raw reply."""
    with pytest.raises(OutputParseError) as info:
        parse_verdict(reply)
    assert info.value.raw == reply


@pytest.mark.parametrize("seed", range(5))
def test_escaped_and_duplicated_keys_are_rejected_in_any_spelling(seed: int) -> None:
    """Random JSON-escape spellings of a verdict's keys, and random duplicate keys, never parse."""
    rng = random.Random(seed)
    for _ in range(50):
        key = rng.choice(["score", "feedback"])
        spelled = "".join(
            f"\\u{ord(c):04{rng.choice('xX')}}" if rng.random() < 0.4 else c for c in key
        )
        if "\\" not in spelled:
            spelled = f"\\u{ord(key[0]):04x}{key[1:]}"
        value = "1.0" if key == "score" else '"fine"'
        other = '"feedback": "ok"' if key == "score" else '"score": 1.0'
        with pytest.raises(OutputParseError, match="JSON escapes"):
            parse_verdict(f'{{"{spelled}": {value}, {other}}}')
        assert json.loads(f'{{"{spelled}": {value}}}') == {key: json.loads(value)}  # valid JSON
        dup = f'{{"score": {rng.random():.2f}, "feedback": "a", "{key}": {value}}}'
        with pytest.raises(OutputParseError, match="repeats the key"):
            parse_verdict(dup)


def test_parse_group_verdict_counts() -> None:
    """A group verdict needs exactly k scores in range, and k feedback strings when given."""
    assert parse_group_verdict('{"scores": [0.1, 1], "feedback": ["a", "b"]}', 2) == [
        (0.1, "a"),
        (1.0, "b"),
    ]
    assert parse_group_verdict('{"scores": [0.5, 0.5]}', 2) == [(0.5, ""), (0.5, "")]
    assert parse_group_verdict('{"score": 0.4, "feedback": "one"}', 1) == [(0.4, "one")]
    for bad in (
        '{"scores": [0.1]}',
        '{"scores": [0.1, 0.2, 0.3]}',
        '{"scores": [0.1, "x"]}',
        '{"scores": [0.1, 2]}',
        '{"scores": [0.1, 0.2], "feedback": ["only one"]}',
        '{"score": 0.4}',
        '{"scores": [0.1, 0.2], "scores": [1, 1]}',
        '{"sc\\u006fres": [1, 1]}',
        '{"scores": [0.1, 0.2], "score": 1}',
        '{"scores": [0.1, 0.2]} {"scores": [1, 1]}',
    ):
        with pytest.raises(OutputParseError):
            parse_group_verdict(bad, 2)
    with pytest.raises(OutputParseError):
        parse_group_verdict('{"score": 0.4, "extra": 1}', 1)
