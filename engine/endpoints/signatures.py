"""Endpoint stage: typed signatures, and parsing a completion into their output fields.

A :class:`Signature` names a module's typed input and output fields (:class:`Field`).
Parsing, in order (:meth:`Signature.parse`):

1. a JSON object anywhere in the text (the first one that names an output field), e.g. inside
   a code fence or after a preamble;
2. ``field: value`` lines (``Quality: 0.8``), a string field running on until the next field;
3. a signature with a single string output field takes the whole text.

Values are then validated against the field types (``"0.8"`` is accepted for a number,
``"80%"`` and ``"4/5"`` too; a float where an integer is wanted must be whole) and ranges.
:func:`json_response_format` builds the ``json_schema`` response format a chat request can
carry from a signature's :meth:`~Signature.json_schema`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import OutputParseError

__all__ = ("Field", "FieldType", "Signature", "find_json_object", "json_response_format")

FieldType = type[str] | type[float] | type[int] | type[bool]

_SHORTHAND: dict[str, FieldType] = {
    "string": str,
    "str": str,
    "text": str,
    "number": float,
    "float": float,
    "integer": int,
    "int": int,
    "boolean": bool,
    "bool": bool,
}
_SCHEMA_TYPE: dict[type, str] = {str: "string", float: "number", int: "integer", bool: "boolean"}
_TYPE_WORD: dict[type, str] = {str: "string", float: "number", int: "integer", bool: "true/false"}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:(%)|/\s*({_NUMBER}))?\s*[.,;]?\s*$")
_INT_RE = re.compile(r"^\s*([-+]?\d+)\s*[.,;]?\s*$")
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})
# "  - **Quality**: 0.8" / "quality = 0.8" / '"generated": "text",'
_LINE_RE = re.compile(
    r'^\s*(?:[-*#>]+\s*)?\**\s*"?([A-Za-z_][\w \-]{0,40}?)"?\s*\**\s*[:=]\s*(.*)$'
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""A JSON decoder that refuses NaN and Infinity, which are not JSON."""


# ----------------------------------------------------------------------------- fields


@dataclass(frozen=True, slots=True)
class Field:
    """One typed field of a :class:`Signature`.

    Example::

        Field(float, "how good the text is", minimum=0.0, maximum=1.0)

    Attributes:
        type: ``str``, ``float``, ``int`` or ``bool``.
        description: what the field means; shown to the model in the format instructions and
            in the JSON schema.
        minimum, maximum: inclusive bounds for numbers; a value outside is a validation
            failure.
    """

    type: FieldType
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.type not in _SCHEMA_TYPE:
            raise TypeError(f"field type must be str, float, int or bool, got {self.type!r}")
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            float,
            int,
        ):
            raise TypeError("minimum and maximum apply to number and integer fields only")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} > maximum {self.maximum}")

    @classmethod
    def coerce(cls, spec: Field | type | str | Mapping[str, Any]) -> Field:
        """A Field from a Field, a type, a shorthand (``"string"``, ``"number"``...), or a dict
        ``{"type": "number", "description": ..., "minimum": 0, "maximum": 1}``."""
        if isinstance(spec, Field):
            return spec
        if isinstance(spec, type):
            return cls(spec)  # type: ignore[arg-type]
        if isinstance(spec, str):
            return cls(_shorthand(spec))
        if isinstance(spec, Mapping):
            known = {"type", "description", "minimum", "maximum"}
            extra = set(spec) - known
            if extra:
                raise ValueError(f"unknown field keys {sorted(extra)}; known: {sorted(known)}")
            tp = spec.get("type", "string")
            return cls(
                tp if isinstance(tp, type) else _shorthand(str(tp)),  # type: ignore[arg-type]
                str(spec.get("description", "")),
                spec.get("minimum"),
                spec.get("maximum"),
            )
        raise TypeError(f"not a field spec: {spec!r}")

    def describe(self) -> str:
        """``number from 0 to 1``-style words for the format instructions."""
        word = _TYPE_WORD[self.type]
        if self.minimum is not None and self.maximum is not None:
            return f"{word} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{word} >= {self.minimum:g}"
        if self.maximum is not None:
            return f"{word} <= {self.maximum:g}"
        return word

    def validate(self, name: str, value: Any) -> Any:
        """The value converted to this field's type; raises ``ValueError`` saying why not."""
        tp = self.type
        if tp is str:
            if isinstance(value, str):
                return value
            if isinstance(value, bool | int | float):
                return json.dumps(value)
            raise ValueError(f"field {name!r}: expected a string, got {type(value).__name__}")
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower().rstrip(".") in _TRUE | _FALSE:
                return value.strip().lower().rstrip(".") in _TRUE
            raise ValueError(f"field {name!r}: expected true or false, got {value!r}")
        number = _to_number(value)
        if number is None:
            raise ValueError(f"field {name!r}: expected a {_TYPE_WORD[tp]}, got {value!r}")
        if tp is int:
            if not float(number).is_integer():
                raise ValueError(f"field {name!r}: expected an integer, got {value!r}")
            number = int(number)
        else:
            number = float(number)
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"field {name!r}: {number:g} is below the minimum {self.minimum:g}")
        if self.maximum is not None and number > self.maximum:
            raise ValueError(f"field {name!r}: {number:g} is above the maximum {self.maximum:g}")
        return number


def _shorthand(word: str) -> FieldType:
    tp = _SHORTHAND.get(word.strip().lower())
    if tp is None:
        raise ValueError(f"unknown field type {word!r}; use one of {sorted(_SHORTHAND)}")
    return tp


def _to_number(value: Any) -> float | int | None:
    """A finite number from a JSON number or a string like ``0.8``, ``80%``, ``4/5``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    m = _INT_RE.match(value)
    if m:
        return int(m.group(1))
    m = _NUMBER_RE.match(value)
    if not m:
        return None
    x = float(m.group(1))
    if m.group(2):
        x /= 100.0
    elif m.group(3):
        den = float(m.group(3))
        if den == 0:
            return None
        x /= den
    return x if math.isfinite(x) else None


def _norm_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


# ----------------------------------------------------------------------------- signature


def _fields(spec: Mapping[str, Any], what: str) -> Mapping[str, Field]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"{what} must be a mapping of field name to field spec")
    out: dict[str, Field] = {}
    for name, f in spec.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{what} field name {name!r} must be an identifier")
        out[name] = Field.coerce(f)
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True, init=False)
class Signature:
    """Typed input and output fields of a module.

    Example::

        sig = Signature(
            inputs={"text": Field(str, "the text")},
            outputs={"generated": Field(str, "the generated text"),
                     "quality": Field(float, "self-assessed quality", minimum=0, maximum=1)},
        )
        # the shorthand: {input: {text: 'string'}, output: {generated: 'string', ...}}
        sig = Signature.from_spec({"input": {"text": "string"},
                                   "output": {"generated": "string", "quality": "number"}})
        sig.parse('{"generated": "Qubits...", "quality": 0.9}')
        # {'generated': 'Qubits...', 'quality': 0.9}

    Field specs may be :class:`Field` objects, types, shorthand words or dicts
    (see :meth:`Field.coerce`). At least one output field is required.
    """

    inputs: Mapping[str, Field]
    """Input fields, by name (read-only)."""
    outputs: Mapping[str, Field]
    """Output fields, by name (read-only)."""

    def __init__(
        self,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "inputs", _fields(inputs or {}, "input"))
        object.__setattr__(self, "outputs", _fields(outputs or {}, "output"))
        if not self.outputs:
            raise ValueError("a signature needs at least one output field")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Signature:
        """From the shorthand ``{"input": {...}, "output": {...}}`` (``inputs`` and
        ``outputs`` are accepted too)."""
        unknown = set(spec) - {"input", "output", "inputs", "outputs"}
        if unknown:
            raise ValueError(f"unknown signature keys {sorted(unknown)}; use input and output")
        return cls(spec.get("input", spec.get("inputs")), spec.get("output", spec.get("outputs")))

    @classmethod
    def coerce(cls, spec: Signature | Mapping[str, Any]) -> Signature:
        """A Signature, or one built by :meth:`from_spec`."""
        return spec if isinstance(spec, Signature) else cls.from_spec(spec)

    @property
    def single_text_output(self) -> str | None:
        """The name of the only output field when it is a string, else None."""
        if len(self.outputs) == 1:
            (name, f), *_ = self.outputs.items()
            if f.type is str:
                return name
        return None

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the outputs (every field required, no others); ranges go into the
        descriptions, since strict structured-output modes reject ``minimum``/``maximum``."""
        props: dict[str, Any] = {}
        for name, f in self.outputs.items():
            desc = f.description
            if f.minimum is not None or f.maximum is not None:
                desc = f"{desc} ({f.describe()})".strip()
            props[name] = {"type": _SCHEMA_TYPE[f.type], "description": desc}
        return {
            "type": "object",
            "properties": props,
            "required": list(self.outputs),
            "additionalProperties": False,
        }

    def format_instructions(self) -> str:
        """What the model is told about the output format (empty for a single text field)."""
        if self.single_text_output is not None:
            return ""
        lines = ["Respond with only a JSON object with these fields:"]
        for name, f in self.outputs.items():
            desc = f": {f.description}" if f.description else ""
            lines.append(f'- "{name}" ({f.describe()}){desc}')
        return "\n".join(lines)

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs as a dict; raises ``ValueError`` naming any missing input field."""
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise ValueError(
                f"missing input field(s) {missing}; the signature wants {list(self.inputs)}"
            )
        return dict(inputs)

    def parse(self, text: str) -> dict[str, Any]:
        """Parse and validate ``text`` into the output fields (see the module docstring).

        Raises:
            OutputParseError: no field could be found, one is missing, or one is invalid;
                ``raw`` holds the text.
        """
        names = {_norm_name(k): k for k in self.outputs}
        found: dict[str, Any] | None = None
        obj = find_json_object(text, want=set(names))
        if obj is not None:
            found = {names[_norm_name(k)]: v for k, v in obj.items() if _norm_name(k) in names}
        if not found:
            found = _field_lines(text, names, self.outputs)
        single = self.single_text_output
        if not found and single is not None:
            stripped = text.strip()
            if stripped:
                found = {single: stripped}
        if not found:
            raise OutputParseError(
                f"no output fields found (wanted {', '.join(self.outputs)})", raw=text
            )
        missing = [k for k in self.outputs if k not in found]
        if missing:
            raise OutputParseError(f"missing output field(s): {', '.join(missing)}", raw=text)
        out: dict[str, Any] = {}
        for name, f in self.outputs.items():
            try:
                out[name] = f.validate(name, found[name])
            except ValueError as exc:
                raise OutputParseError(str(exc), raw=text) from None
        return out


def find_json_object(text: str, *, want: set[str] | None = None) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (skipping anything that does not decode).

    With ``want`` (normalized names: lower case, ``_`` for spaces), the first object having at
    least one of those keys is preferred; the first object of all is returned when none has.
    NaN and Infinity are not accepted as JSON.
    """
    first: dict[str, Any] | None = None
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict):
            if want is None or want & {_norm_name(str(k)) for k in obj}:
                return obj
            if first is None:
                first = obj
            pos = text.find("{", end)
        else:  # pragma: no cover - raw_decode at "{" yields a dict or fails
            pos = text.find("{", pos + 1)
    return first


def _field_lines(
    text: str, names: Mapping[str, str], outputs: Mapping[str, Field]
) -> dict[str, Any]:
    """``field: value`` lines; a string field continues over lines until the next field."""
    found: dict[str, Any] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        key = names.get(_norm_name(m.group(1))) if m else None
        if m and key is not None and key not in found:
            current = key
            found[key] = _unquote(m.group(2))
        elif current is not None and outputs[current].type is str:
            found[current] = f"{found[current]}\n{line}".rstrip() if found[current] else line
        else:
            current = None
    return {k: v.strip() if isinstance(v, str) else v for k, v in found.items()}


def _unquote(value: str) -> str:
    v = value.strip().rstrip(",").strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
    return v.strip("*").strip()


def json_response_format(name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``response_format`` asking for JSON matching ``schema`` (strict mode)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output"
    return {
        "type": "json_schema",
        "json_schema": {"name": safe, "strict": True, "schema": dict(schema)},
    }
