"""Candidate growth: parsing the reflection answer."""

from __future__ import annotations

from engine.policies.prompt import parse_instruction


def test_parse_instruction() -> None:
    """Reflection answers: between tags, or the whole text; empty answers are rejected."""
    assert parse_instruction("Sure! <instruction>Be brief.</instruction>") == "Be brief."
    assert parse_instruction(' "Answer in one word."</instruction> junk') == "Answer in one word."
    assert parse_instruction("<instruction>  </instruction>") is None
