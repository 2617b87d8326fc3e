"""engine.config.reference: every field documented, every section in the reference."""

from __future__ import annotations

import dataclasses
import typing

from engine.config.reference import config_reference, field_docs, type_name
from engine.config.sections import EndpointConfig, GRPOConfig, RunConfig


def sections(cls: type) -> list[type]:
    """``cls`` and every config dataclass reachable from its fields (``X | None`` included)."""
    found = [cls]
    for tp in typing.get_type_hints(cls).values():
        for arg in (tp, *typing.get_args(tp)):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) and arg not in found:
                found.extend(s for s in sections(arg) if s not in found)
    return found


def test_every_field_documented() -> None:
    """Every field of every config section carries a docstring."""
    classes = sections(RunConfig)
    assert len(classes) == 19  # RunConfig, its seventeen section dataclasses and ModelPrice
    for cls in classes:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_reference_lists_every_section() -> None:
    """The reference has a table per section, the optional judge endpoint included."""
    ref = config_reference()
    for section in ("[grpo]", "[optim]", "[endpoint]", "[limits]", "[judge]", "[rollout]"):
        assert f"### {section}" in ref
    assert ref.startswith("### top level")


def test_reference_rows_show_type_default_and_doc() -> None:
    """A row names the key, its type as a user writes it, its default and its docstring."""
    ref = config_reference()
    doc = field_docs(GRPOConfig)["loss_type"]
    assert f"| `loss_type` | 'grpo' \\| 'dapo' \\| 'dr_grpo' | `'grpo'` | {doc} |" in ref
    assert "| `stop` | array of str | `()` |" in ref
    assert ref.count(f"| `model` | str | `''` | {field_docs(EndpointConfig)['model']} |") == 2


def test_type_names() -> None:
    """Annotations read as TOML words: arrays, tables, optional values."""
    hints = typing.get_type_hints(RunConfig)
    assert type_name(hints["judge"]) == "table | none"
    assert type_name(typing.get_type_hints(GRPOConfig)["epsilon_high"]) == "float | none"
