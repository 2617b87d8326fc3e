"""Signatures: building them from shorthand, parsing and validating completions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.endpoints.signatures import Field, Signature, find_json_object
from engine.errors import OutputParseError

SPEC = {"input": {"text": "string"}, "output": {"generated": "string", "quality": "number"}}


# ----------------------------------------------------------------------------- signatures


def test_signature_from_shorthand_and_fields() -> None:
    """The shorthand and explicit Fields build the same signature."""
    a = Signature.from_spec(SPEC)
    b = Signature(inputs={"text": Field(str)}, outputs={"generated": str, "quality": "number"})
    assert a == b
    assert a.outputs["quality"].type is float and a.inputs["text"].type is str
    assert a.single_text_output is None
    assert Signature(outputs={"answer": "string"}).single_text_output == "answer"
    schema = a.json_schema()
    assert schema["required"] == ["generated", "quality"]
    assert schema["properties"]["quality"]["type"] == "number"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"input": {}, "output": {}}, ValueError),
        ({"input": {"text": "strng"}, "output": {"a": "string"}}, ValueError),
        ({"output": {"not valid": "string"}}, ValueError),
        ({"outputs": {"a": {"type": "number", "minimum": 1, "maximum": 0}}}, ValueError),
        ({"output": {"a": {"type": "string", "minimum": 0}}}, TypeError),
        ({"output": {"a": "string"}, "extra": {}}, ValueError),
    ],
)
def test_signature_rejects_bad_specs(spec: dict[str, Any], error: type[Exception]) -> None:
    """Unknown types, empty outputs, bad names and bad ranges are rejected at construction."""
    with pytest.raises(error):
        Signature.from_spec(spec)


# ----------------------------------------------------------------------------- parsing

SIG = Signature(
    inputs={"text": Field(str, "the text")},
    outputs={
        "generated": Field(str, "the generated text"),
        "quality": Field(float, "self-assessed quality", minimum=0, maximum=1),
    },
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"generated": "Qubits.", "quality": 0.9}', {"generated": "Qubits.", "quality": 0.9}),
        (
            'Sure! ```json\n{"generated": "Qubits.", "quality": "0.75"}\n``` hope it helps',
            {"generated": "Qubits.", "quality": 0.75},
        ),
        (
            '{"note": 1} then {"Generated": "x", "Quality": 1}',
            {"generated": "x", "quality": 1.0},
        ),
        (
            "Generated: Qubits hold\nsuperpositions.\n**Quality**: 80%",
            {"generated": "Qubits hold\nsuperpositions.", "quality": 0.8},
        ),
        ("- generated = hi\n- quality = 4/5", {"generated": "hi", "quality": 0.8}),
    ],
)
def test_parse_tolerant(text: str, expected: dict[str, Any]) -> None:
    """JSON anywhere in the text, or field lines, parse into the typed fields."""
    assert SIG.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("just some prose", "no output fields"),
        ('{"generated": "x"}', "missing output field"),
        ('{"generated": "x", "quality": "high"}', "expected a number"),
        ('{"generated": "x", "quality": 1.5}', "above the maximum"),
        ('{"generated": ["x"], "quality": 0.5}', "expected a string"),
        ('{"generated": "x", "quality": NaN}', "no output fields"),
    ],
)
def test_parse_failures_keep_raw(text: str, match: str) -> None:
    """Unparseable or invalid output raises OutputParseError saying why, with the raw text."""
    with pytest.raises(OutputParseError, match=match) as info:
        SIG.parse(text)
    assert info.value.raw == text


def test_parse_single_text_output_and_types() -> None:
    """A single string output takes the whole text; ints and bools validate strictly."""
    assert Signature(outputs={"answer": str}).parse("  The answer is 42.\n") == {
        "answer": "The answer is 42."
    }
    sig = Signature(outputs={"n": int, "ok": bool})
    assert sig.parse('{"n": 3.0, "ok": "yes"}') == {"n": 3, "ok": True}
    assert sig.parse("n: 7\nok: false") == {"n": 7, "ok": False}
    with pytest.raises(OutputParseError, match="integer"):
        sig.parse('{"n": 3.5, "ok": true}')
    with pytest.raises(OutputParseError, match="true or false"):
        sig.parse('{"n": 3, "ok": "maybe"}')


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.floats(min_value=0, max_value=1))
def test_parse_roundtrips_json(generated: str, quality: float) -> None:
    """Any valid output written as JSON (with a preamble) parses back exactly."""
    text = "Output: " + orjson.dumps({"generated": generated, "quality": quality}).decode()
    assert SIG.parse(text) == {"generated": generated, "quality": quality}


def test_find_json_object_skips_non_json_braces() -> None:
    """Braces that do not start JSON are skipped; NaN is not JSON."""
    assert find_json_object('f(x) = {x | x > 0} and {"a": 1}') == {"a": 1}
    assert find_json_object('{"a": NaN}') is None
    assert find_json_object("no braces") is None
