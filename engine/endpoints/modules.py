"""Stage: generation modules. Typed signatures, prompt templates, output parsing and validation.

A :class:`Signature` names a module's typed input and output fields; a :class:`PredictModule`
renders a prompt from the inputs, calls the endpoint through a :class:`~engine.endpoints.client.Client`,
and parses each completion into the output fields. This is the spec's ``PredictModule``::

    // TypeScript (the spec)
    const baseModule = new PredictModule<TextInput, TextOutput>({
      name: 'TextGenerator',
      signature: { input: { text: 'string' }, output: { generated: 'string', quality: 'number' } },
      promptTemplate: input => `Generate high-quality text based on: ${input.text}`
    });

    # Python (this module)
    base = PredictModule(
        "TextGenerator",
        {"input": {"text": "string"}, "output": {"generated": "string", "quality": "number"}},
        lambda inputs: f"Generate high-quality text based on: {inputs['text']}",
        client=client,
    )
    predictions = await base.predict({"text": "Explain quantum computing"}, n=4)
    good = [p.outputs["generated"] for p in predictions if p.ok]

Parsing, in order (:meth:`Signature.parse`):

1. a JSON object anywhere in the text (the first one that names an output field), e.g. inside
   a code fence or after a preamble;
2. ``field: value`` lines (``Quality: 0.8``), a string field running on until the next field;
3. a signature with a single string output field takes the whole text.

Values are then validated against the field types (``"0.8"`` is accepted for a number,
``"80%"`` and ``"4/5"`` too; a float where an integer is wanted must be whole) and ranges.
In chat mode the request can also carry a ``json_schema`` ``response_format`` built from the
signature (:attr:`PredictModule.json_mode`; on by default for hosted providers, off for
``local`` ones, and turned off for the rest of the module's life if the endpoint rejects it).

A completion that does not parse is **not** an exception: its :class:`Prediction` has
``ok=False``, the ``error`` and the ``raw`` text, and it is counted in :meth:`PredictModule.stats`.
When such a prediction is scored, :class:`~engine.rewards.rewarder.Rewarder` gives it
``RewardConfig.format_failure_reward``. Endpoint errors (after the client's retries) do raise:
they are :class:`~engine.errors.EndpointError` and counted as ``endpoint_errors``.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import EndpointError, OutputParseError, RequestRejected
from ..types import Example

if TYPE_CHECKING:
    from .client import Client, Completion

__all__ = (
    "Field",
    "ModuleStats",
    "PredictModule",
    "Prediction",
    "Signature",
    "find_json_object",
    "json_response_format",
)

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
_LATENCY_WINDOW = 4096  # latencies kept per module for percentiles


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # NaN/Infinity are not JSON


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
        # the spec's shorthand: {input: {text: 'string'}, output: {generated: 'string', ...}}
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
        """From the spec's shorthand ``{"input": {...}, "output": {...}}`` (``inputs`` and
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


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True, slots=True)
class Prediction:
    """One parsed completion of a :class:`PredictModule`.

    Attributes:
        outputs: the validated output fields (empty when ``ok`` is False).
        ok: whether the text parsed and validated.
        raw: the completion text as the model wrote it.
        error: why it did not parse, or None.
        index: choice index within the call, 0..n-1.
        finish_reason: as the server said (``stop``, ``length``...).
        latency: seconds the call took (shared by the call's n predictions).
        logprobs: per-token log-probabilities, when asked and returned.
        token_ids: completion token ids, when the server returns them.
    """

    outputs: Mapping[str, Any]
    ok: bool
    raw: str
    error: str | None = None
    index: int = 0
    finish_reason: str | None = None
    latency: float = 0.0
    logprobs: list[float] | None = None
    token_ids: list[int] | None = None

    def __getitem__(self, name: str) -> Any:
        return self.outputs[name]

    def get(self, name: str, default: Any = None) -> Any:
        """An output field, or ``default``."""
        return self.outputs.get(name, default)

    @property
    def text(self) -> str:
        """The raw completion text (what reward functions and judges grade)."""
        return self.raw


@dataclass(frozen=True, slots=True)
class ModuleStats:
    """A snapshot of one module's counters (see :meth:`PredictModule.stats`).

    Attributes:
        name: the module's name.
        calls: ``predict`` calls started.
        predictions: predictions returned.
        ok: predictions that parsed and validated.
        format_failures: predictions that did not (``ok=False``).
        endpoint_errors: ``predict`` calls that raised an endpoint error.
        prompt_tokens, completion_tokens: usage summed over successful calls.
        latency_mean, latency_p50, latency_p95: seconds per successful call (percentiles over
            the last 4096 calls).
        json_mode: whether requests currently carry a ``json_schema`` response format.
    """

    name: str
    calls: int
    predictions: int
    ok: int
    format_failures: int
    endpoint_errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_mean: float
    latency_p50: float
    latency_p95: float
    json_mode: bool

    @property
    def format_failure_rate(self) -> float:
        """format_failures / predictions (0 when there are none)."""
        return self.format_failures / self.predictions if self.predictions else 0.0

    @property
    def error_rate(self) -> float:
        """endpoint_errors / calls (0 when there are none)."""
        return self.endpoint_errors / self.calls if self.calls else 0.0


Template = Callable[[Mapping[str, Any]], str] | str


class PredictModule:
    """A prompt template plus a signature over one endpoint client: the spec's PredictModule.

    Example::

        module = PredictModule(
            "TextGenerator",
            Signature(inputs={"text": Field(str, "the text")},
                      outputs={"generated": Field(str, "the generated text"),
                               "quality": Field(float, "self-assessed quality", minimum=0,
                                                maximum=1)}),
            "Generate high-quality text based on: {text}",
            client=client,
        )
        [p] = await module.predict({"text": "Explain quantum computing"})
        if p.ok:
            print(p["generated"], p["quality"])
        else:
            print("unparseable:", p.error, p.raw)
        print(module.stats())

    Args:
        name: the module's name (stats, the JSON schema's name).
        signature: a :class:`Signature` or the spec's shorthand dict.
        prompt_template: ``(inputs) -> str``, or a ``str.format`` template whose placeholders
            are input fields (write literal braces as ``{{`` and ``}}``).
        client: the endpoint client every call goes through.
        mode: ``chat`` (the prompt is one user message, after ``system`` if given) or
            ``completions`` (the prompt string as is; right for base models).
        system: an optional system message (chat mode only).
        json_mode: send a ``json_schema`` response format built from the signature. None
            means: on in chat mode for hosted providers, off for ``local`` providers and in
            completions mode. Never sent for a single text output field.
        format_instructions: append the signature's format instructions to the prompt.
        **defaults: default generation arguments for :meth:`predict` (``max_tokens``,
            ``temperature``, ``stop``...), overridden per call.

    Raises:
        ValueError: a format template names a field that is not an input.
    """

    def __init__(
        self,
        name: str,
        signature: Signature | Mapping[str, Any],
        prompt_template: Template,
        *,
        client: Client,
        mode: Literal["chat", "completions"] = "chat",
        system: str | None = None,
        json_mode: bool | None = None,
        format_instructions: bool = True,
        **defaults: Any,
    ) -> None:
        if mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {mode!r}")
        self.name = name
        self.signature = Signature.coerce(signature)
        self.template = prompt_template
        self.client = client
        self.mode = mode
        self.system = system
        self.format_instructions = format_instructions
        self.defaults = dict(defaults)
        if isinstance(prompt_template, str):
            _check_format_template(prompt_template, self.signature)
        elif not callable(prompt_template):
            raise TypeError("prompt_template must be a callable or a format string")
        if json_mode is None:
            json_mode = mode == "chat" and client.endpoint.provider != "local"
        self.json_mode = (
            bool(json_mode) and mode == "chat" and self.signature.single_text_output is None
        )
        self._response_format = json_response_format(name, self.signature.json_schema())
        self._calls = 0
        self._predictions = 0
        self._ok = 0
        self._format_failures = 0
        self._endpoint_errors = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._latency_sum = 0.0
        self._latency_n = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)

    def __repr__(self) -> str:
        return f"PredictModule({self.name!r}, mode={self.mode!r}, json_mode={self.json_mode})"

    def render(self, inputs: Mapping[str, Any] | Example) -> str:
        """The prompt for ``inputs`` (template plus format instructions)."""
        values = self._inputs(inputs)
        if isinstance(self.template, str):
            prompt = self.template.format_map(values)
        else:
            prompt = self.template(values)
            if not isinstance(prompt, str):
                raise TypeError(f"prompt_template returned {type(prompt).__name__}, not str")
        extra = self.signature.format_instructions() if self.format_instructions else ""
        return f"{prompt.rstrip()}\n\n{extra}" if extra else prompt

    def messages(self, prompt: str) -> str | list[dict[str, str]]:
        """What the client is sent for a rendered prompt in this module's mode."""
        if self.mode == "completions":
            return prompt
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": prompt})
        return msgs

    async def predict(
        self, inputs: Mapping[str, Any] | Example, n: int = 1, **gen_kwargs: Any
    ) -> list[Prediction]:
        """Render, call the endpoint for ``n`` completions, parse and validate each one.

        Args:
            inputs: the input fields (an :class:`~engine.types.Example` gives its ``inputs``,
                or ``{"text": example.text}``).
            n: completions wanted.
            **gen_kwargs: passed to :meth:`Client.complete` over the module's defaults
                (``max_tokens``, ``temperature``, ``seed``, ``stop``, ``group_id``,
                ``sample_index``, ``policy_version``, ``kind``...).

        Returns:
            ``n`` predictions; parse failures are predictions with ``ok=False``.

        Raises:
            EndpointError: the request failed after the client's retries.
            ValueError: an input field is missing.
        """
        prompt = self.messages(self.render(inputs))
        kwargs = {**self.defaults, **gen_kwargs}
        self._calls += 1
        try:
            completion = await self._complete(prompt, n, kwargs)
        except EndpointError:
            self._endpoint_errors += 1
            raise
        self._prompt_tokens += completion.usage.prompt_tokens
        self._completion_tokens += completion.usage.completion_tokens
        self._latency_sum += completion.latency
        self._latency_n += 1
        self._latencies.append(completion.latency)
        out = [self.parse(c.text, index=c.index, finish_reason=c.finish_reason,
                          latency=completion.latency, logprobs=c.logprobs, token_ids=c.token_ids)
               for c in completion.choices]  # fmt: skip
        return out

    def parse(self, text: str, **meta: Any) -> Prediction:
        """Parse one completion into a :class:`Prediction` (counted in the stats)."""
        self._predictions += 1
        try:
            outputs = self.signature.parse(text)
        except OutputParseError as exc:
            self._format_failures += 1
            return Prediction(MappingProxyType({}), False, text, str(exc), **meta)
        self._ok += 1
        return Prediction(MappingProxyType(outputs), True, text, None, **meta)

    async def _complete(self, prompt: Any, n: int, kwargs: dict[str, Any]) -> Completion:
        use_json = self.json_mode and "response_format" not in kwargs
        if use_json:
            kwargs = {**kwargs, "response_format": self._response_format}
        try:
            return await self.client.complete(prompt, n=n, mode=self.mode, **kwargs)
        except RequestRejected as exc:
            if not use_json or exc.status not in (400, 404, 422):
                raise
        # The endpoint rejected the json_schema response format (some OpenRouter routes do):
        # stop asking for it and parse tolerantly from now on.
        self.json_mode = False
        del kwargs["response_format"]
        return await self.client.complete(prompt, n=n, mode=self.mode, **kwargs)

    def _inputs(self, inputs: Mapping[str, Any] | Example) -> dict[str, Any]:
        if isinstance(inputs, Example):
            values = dict(inputs.inputs) if inputs.inputs else {"text": inputs.text}
        else:
            values = dict(inputs)
        return self.signature.check_inputs(values)

    def stats(self) -> ModuleStats:
        """A frozen snapshot of this module's counters, latency and token usage."""
        lat = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
        p50, p95 = (float(x) for x in np.percentile(lat, [50, 95])) if lat.size else (0.0, 0.0)
        return ModuleStats(
            name=self.name,
            calls=self._calls,
            predictions=self._predictions,
            ok=self._ok,
            format_failures=self._format_failures,
            endpoint_errors=self._endpoint_errors,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            latency_mean=self._latency_sum / self._latency_n if self._latency_n else 0.0,
            latency_p50=p50,
            latency_p95=p95,
            json_mode=self.json_mode,
        )


def _check_format_template(template: str, signature: Signature) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad prompt template: {exc}") from None
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        base = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if not base:
            raise ValueError("prompt template placeholders must be named ({text}, not {})")
        if base not in signature.inputs:
            raise ValueError(
                f"prompt template uses {{{base}}}, which is not an input field "
                f"(inputs: {', '.join(signature.inputs) or 'none'})"
            )
