"""The public API: every name in engine.__all__ resolves, and the list is sorted and unique."""

from __future__ import annotations

import engine


def test_all_names_resolve() -> None:
    """Every exported name can be imported from engine."""
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def test_all_is_a_sorted_unique_tuple() -> None:
    """__all__ is a tuple, sorted, without duplicates."""
    assert isinstance(engine.__all__, tuple)
    assert list(engine.__all__) == sorted(set(engine.__all__))


def test_unknown_name_is_attribute_error() -> None:
    """A name that is not exported raises AttributeError."""
    try:
        engine.NotAThing  # noqa: B018
    except AttributeError as exc:
        assert "NotAThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
