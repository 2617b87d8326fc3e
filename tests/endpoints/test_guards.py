"""The bounds on untrusted server data: JSON depth, usage figures, the key in an answer."""

from __future__ import annotations

import orjson
import pytest

from engine.endpoints.guards import (
    MAX_JSON_DEPTH,
    estimated_usage,
    read_usage,
    scrub_tokens,
    too_deep,
    usage_bound,
)
from engine.endpoints.redaction import Redactor
from engine.types import Usage

KEY = "sk-guard-0123456789abcdef"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [1, 6, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_depth_within_the_limit_passes(depth: int) -> None:
    """Nesting up to the limit is accepted, objects and arrays mixed."""
    doc: object = 1
    for i in range(depth):
        doc = [doc, "x"] if i % 2 else {"k": doc, "s": "y"}
    assert not too_deep(orjson.dumps(doc))
    assert not too_deep(nested(depth))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 200, 1000])
def test_depth_past_the_limit_is_refused(depth: int) -> None:
    assert too_deep(nested(depth))
    assert too_deep(b'{"choices": [], "deep": ' + nested(depth) + b"}")


def test_brackets_inside_strings_do_not_count() -> None:
    """Brackets in strings, escaped quotes and backslashes do not fool the scan."""
    tricky = ["[" * 500, '\\"' + "{" * 300, "\\", '"]]]]', "}" * 100]
    assert not too_deep(orjson.dumps({"a": tricky, "b": [[["x"]]]}), 8)
    assert too_deep(orjson.dumps({"a": tricky, "b": [[[["x"]]]]}), 4)
    assert not too_deep(orjson.dumps({"a": tricky, "b": [[[["x"]]]]}), 5)


def test_a_typical_response_is_not_scanned_deeply() -> None:
    """Many brackets but shallow: a response with logprobs passes."""
    entry = {"token": "a]", "logprob": -0.1, "top_logprobs": [{"token": "[", "logprob": -1}] * 5}
    doc = {"choices": [{"logprobs": {"content": [entry] * 200}} for _ in range(8)]}
    assert not too_deep(orjson.dumps(doc))


@pytest.mark.parametrize(
    ("usage", "anomaly"),
    [
        (None, "missing"),
        ([1, 2], "missing"),
        ({}, "missing"),
        ({"prompt_tokens": None, "completion_tokens": 3}, "missing"),
        ({"prompt_tokens": "12", "completion_tokens": 3}, "malformed"),
        ({"prompt_tokens": True, "completion_tokens": 3}, "malformed"),
        ({"prompt_tokens": 12.5, "completion_tokens": 3}, "malformed"),
        ({"prompt_tokens": {"n": 1}, "completion_tokens": 3}, "malformed"),
        ({"prompt_tokens": -5, "completion_tokens": 3}, "negative"),
        ({"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": 7}, "malformed"),
        ({"prompt_tokens": 5, "completion_tokens": 3,
          "completion_tokens_details": {"reasoning_tokens": -1}}, "negative"),
    ],
)  # fmt: skip
def test_unsound_usage_is_an_anomaly(usage: object, anomaly: str) -> None:
    assert read_usage(usage) == (Usage(), anomaly)


def test_sound_usage_is_read() -> None:
    """Integers (an integral float too), optional details and cost."""
    u = {"prompt_tokens": 12, "completion_tokens": 30.0, "cost": 0.002,
         "prompt_tokens_details": {"cached_tokens": 4},
         "completion_tokens_details": {"reasoning_tokens": None}}  # fmt: skip
    assert read_usage(u) == (Usage(12, 30, 4, 0, 0.002), None)


@pytest.mark.parametrize("cost", [-1.0, "1", 1e300, float("nan"), True])
def test_an_unsound_cost_is_dropped_and_the_counts_still_stand(cost: object) -> None:
    """A cost is not a token count: an invalid or unbelievable one is None (the request is
    then priced by its tokens), and the sound counts are kept."""
    u = {"prompt_tokens": 5, "completion_tokens": 3, "cost": cost}
    assert read_usage(u) == (Usage(5, 3), None)


def test_the_estimate_never_exceeds_the_reservation() -> None:
    """An estimate replacing untrusted usage stays within the request's reservation."""
    assert estimated_usage(10, ["abcd" * 3], 100) == Usage(10, 4)
    assert estimated_usage(10, ["x" * 10_000], 100) == Usage(10, 90)
    assert usage_bound(100) >= 1000


def test_key_in_tokens_is_scrubbed_keeping_alignment() -> None:
    """The key spread over several tokens is removed token by token; the count stays."""
    redact = Redactor(KEY)
    tokens = ["Sure", ": ", KEY[:4], KEY[4:10], KEY[10:] + " ok", "."]
    out = scrub_tokens(tokens, redact)
    assert out is not None and len(out) == len(tokens)
    assert "".join(out) == "Sure: [REDACTED] ok."
    assert scrub_tokens(["no", " key"], redact) is None
    twice = scrub_tokens([KEY, " and ", KEY], redact)
    assert twice == ["[REDACTED]", " and ", "[REDACTED]"]
