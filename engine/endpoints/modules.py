"""Endpoint stage: generation modules: a prompt template and a signature over one client.

A :class:`PredictModule` renders a prompt from a :class:`~engine.endpoints.signatures.Signature`'s
inputs, calls the endpoint through a :class:`~engine.endpoints.client.Client`, and parses each
completion into the output fields::

    base = PredictModule(
        "TextGenerator",
        {"input": {"text": "string"}, "output": {"generated": "string", "quality": "number"}},
        lambda inputs: f"Generate high-quality text based on: {inputs['text']}",
        client=client,
    )
    predictions = await base.predict({"text": "Explain quantum computing"}, n=4)
    good = [p.outputs["generated"] for p in predictions if p.ok]

In chat mode the request can also carry a ``json_schema`` ``response_format`` built from the
signature (:attr:`PredictModule.json_mode`; on by default for hosted providers, off for
``local`` ones, and turned off for the rest of the module's life if the endpoint rejects it).

A completion that does not parse is **not** an exception: its :class:`Prediction` has
``ok=False``, the ``error`` and the ``raw`` text, and it is counted in
:meth:`PredictModule.statistics`. When such a prediction is scored,
:class:`~engine.rewards.rewarder.Rewarder` gives it ``RewardConfig.format_failure_reward``.
Endpoint errors (after the client's retries) do raise: they are
:class:`~engine.errors.EndpointError` and counted as ``endpoint_errors``.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from ..errors import EndpointError, OutputParseError, RequestRejected
from ..types import Example
from .client import Client
from .parsing import Completion
from .payload import Prompt
from .signatures import Signature, json_response_format

__all__ = ("ModuleStatistics", "PredictModule", "Prediction", "Template")

LATENCY_WINDOW = 4096
"""Latencies kept per module for its percentiles."""


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
class ModuleStatistics:
    """A frozen snapshot of one module's counters (see :meth:`PredictModule.statistics`).

    Attributes:
        name: the module's name.
        calls: ``predict`` calls started.
        predictions: predictions returned.
        ok: predictions that parsed and validated.
        format_failures: predictions that did not (``ok=False``).
        endpoint_errors: ``predict`` calls that raised an endpoint error.
        prompt_tokens, completion_tokens: usage summed over successful calls.
        latency_mean, latency_p50, latency_p95: seconds per successful call (percentiles over
            the last :data:`LATENCY_WINDOW` calls).
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
    """A prompt template plus a signature over one endpoint client.

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
        print(module.statistics())

    Args:
        name: the module's name (statistics, the JSON schema's name).
        signature: a :class:`Signature` or its shorthand dict (:meth:`Signature.from_spec`).
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
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

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
        """Parse one completion into a :class:`Prediction` (counted in the statistics)."""
        self._predictions += 1
        try:
            outputs = self.signature.parse(text)
        except OutputParseError as exc:
            self._format_failures += 1
            return Prediction(MappingProxyType({}), False, text, str(exc), **meta)
        self._ok += 1
        return Prediction(MappingProxyType(outputs), True, text, None, **meta)

    async def _complete(self, prompt: Prompt, n: int, kwargs: dict[str, Any]) -> Completion:
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

    def statistics(self) -> ModuleStatistics:
        """A frozen snapshot of this module's counters, latency and token usage."""
        lat = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
        p50, p95 = (float(x) for x in np.percentile(lat, [50, 95])) if lat.size else (0.0, 0.0)
        return ModuleStatistics(
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
