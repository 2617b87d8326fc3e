"""Configuration reference: every section, key, type, default and docstring, as Markdown.

The field docstrings are read from the source of :mod:`engine.config.sections`, so the
reference (``python -m engine run --print-config``, and the README's config reference through
``scripts/update_readme.py``) cannot disagree with the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import types
import typing
from collections.abc import Mapping
from typing import Literal, get_args, get_origin

from .sections import RunConfig

__all__ = ("config_reference", "field_docs", "type_name")


def type_name(tp: object) -> str:
    """How an annotation reads to a user: ``'grpo' | 'dapo'``, ``array of str``, ``table``."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"array of {type_name(get_args(tp)[0])}"
    if origin is Mapping:
        inner = get_args(tp)[1]
        if dataclasses.is_dataclass(inner):
            keys = ", ".join(f.name for f in dataclasses.fields(inner))
            return f"table of {{{keys}}} by name"
        return f"table of {type_name(inner)} by name"
    if tp is type(None):
        return "none"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def field_docs(cls: type) -> dict[str, str]:
    """The docstring of each field of a config dataclass, read from its source."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - source unavailable
        return {}
    tree = ast.parse(inspect.cleandoc(src))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_reference() -> str:
    """The config reference as Markdown: every section, key, type, default and docstring."""
    return "\n".join(_section(RunConfig, ""))


def _section(cls: type, prefix: str) -> list[str]:
    """The table of one section's own keys, followed by the sections nested in it."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    title = f"[{prefix}]" if prefix else "top level"
    lines = [
        f"### {title}\n\n{(cls.__doc__ or '').strip()}\n",
        "| key | type | default | meaning |\n|---|---|---|---|",
    ]
    nested: list[tuple[type, str]] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        table = _table_of(tp)
        if table is not None:
            nested.append((table, f.name))
            continue
        inner = _named_tables_of(tp)
        if inner is not None:  # a table of tables by name: its entries' keys get a section
            nested.append((inner, f'{prefix + "." if prefix else ""}{f.name}."<name>"'))
        doc = docs.get(f.name, "").replace("|", "\\|")  # a bare | would end the cell
        kind = type_name(tp).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {kind} | `{_default(f)!r}` | {doc} |")
    lines.append("")
    for table, name in nested:
        lines.extend(_section(table, f"{prefix}.{name}" if prefix else name))
    return lines


def _table_of(tp: object) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), or None for a plain value."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (types.UnionType, typing.Union):
        tables = [a for a in get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if len(tables) == 1:
            return tables[0]
    return None


def _named_tables_of(tp: object) -> type | None:
    """The dataclass of the values of a ``Mapping[str, X]`` field, or None."""
    if get_origin(tp) is Mapping:
        inner = get_args(tp)[1]
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            return inner
    return None


def _default(f: dataclasses.Field[object]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]
