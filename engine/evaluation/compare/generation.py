"""Models as generators: the :class:`Generator` protocol the comparator samples, and adapters.

A model is anything with ``async generate(example, n, seed) -> list[str]``. Adapters make
one of an engine policy and a snapshot (:class:`PolicyGenerator`), of any object with an
async ``generate(text)`` such as :class:`engine.training.finetune.FineTunedModel`
(:class:`TextModelGenerator`), and of a fixed prompt on an endpoint
(:class:`EndpointGenerator`); :func:`as_generator` picks the fitting one.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import numpy as np

from ...config.sections import RunConfig
from ...endpoints.client import Client
from ...errors import EngineError
from ...policies.base import PolicySnapshot
from ...types import Example, Sample

__all__ = (
    "Closeable",
    "Configured",
    "EndpointGenerator",
    "Generator",
    "Model",
    "Named",
    "PolicyGenerator",
    "Prompt",
    "SamplingPolicy",
    "TextModel",
    "TextModelGenerator",
    "as_generator",
    "name_of",
    "run_config_of",
)

Prompt = str | Sequence[Mapping[str, str]]
"""What is sent to an endpoint: a completions prompt or chat messages."""


@runtime_checkable
class Generator(Protocol):
    """What :class:`~engine.evaluation.compare.ModelComparator` needs of a model.

    ``generate`` returns ``n`` completions of ``example``, deterministic in ``seed`` where the
    model allows; it raises when generation fails (the comparator records the failure).
    Optional: a ``name`` (:class:`Named`, shown in results) and ``async aclose()``
    (:class:`Closeable`, releases clients).
    """

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` completions of ``example`` sampled with ``seed``."""
        ...


@runtime_checkable
class Named(Protocol):
    """A model with a name to show in results."""

    name: str


@runtime_checkable
class Closeable(Protocol):
    """A model holding something to release (a client): ``await model.aclose()``."""

    async def aclose(self) -> None:
        """Release what the model holds."""
        ...


@runtime_checkable
class Configured(Protocol):
    """A model built from a run config (it gives default inputs and metrics)."""

    run_config: RunConfig | None


@runtime_checkable
class SamplingPolicy(Protocol):
    """The part of :class:`engine.policies.base.Policy` that sampling uses.

    ``parameters`` is not called here; it tells a policy apart from a Generator that happens
    to hold a ``snapshot`` (such as :class:`PolicyGenerator`).
    """

    def parameters(self) -> Mapping[str, np.ndarray]:
        """The live trainable arrays."""
        ...

    def snapshot(self, version: int) -> PolicySnapshot:
        """A frozen copy of the current parameters."""
        ...

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """``n`` samples of ``example`` from ``snapshot``; failed ones carry ``error``."""
        ...


class TextModel(Protocol):
    """Any object with an async ``generate(text, ...)`` answering one text per call.

    The answer is a string, has a ``text`` attribute, or is a mapping with a ``generated``,
    ``text`` or ``output`` string.
    """

    def generate(self, text: str, /, **kwargs: Any) -> Awaitable[object]:
        """One answer to ``text``."""
        ...


Model = Generator | SamplingPolicy | TextModel
"""What the comparator accepts as a model; :func:`as_generator` makes a Generator of it."""


def name_of(model: object) -> str | None:
    """The model's ``name`` when it has one."""
    return model.name if isinstance(model, Named) else None


def run_config_of(model: object) -> RunConfig | None:
    """The run config a model was built from, when known."""
    return model.run_config if isinstance(model, Configured) else None


class PolicyGenerator:
    """An engine policy and one of its snapshots, as a Generator.

    Samples with ``np.random.default_rng(seed)``; a sample that carries ``error`` makes the
    call raise :class:`EngineError`.

    Args:
        policy: the policy (a :class:`~engine.policies.tinylm.TinyLM`, a prompt policy ...).
        snapshot: the parameters to sample from; default the policy's current ones.
        name: shown in results; default the policy's name.
        greedy: argmax decoding (all n samples then coincide).
        run_config: the run's config when known (gives default data and quality).
        on_close: awaited once by :meth:`aclose`; releases what the policy uses (the prompt
            policy's client).
    """

    def __init__(
        self,
        policy: SamplingPolicy,
        snapshot: PolicySnapshot | None = None,
        *,
        name: str | None = None,
        greedy: bool = False,
        run_config: RunConfig | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy
        self.snapshot = snapshot if snapshot is not None else policy.snapshot(0)
        self.name = name or name_of(policy) or "policy"
        self.greedy = greedy
        self.run_config = run_config
        self._on_close = on_close

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` samples of the policy at ``snapshot``."""
        samples = await self.policy.generate(
            self.snapshot, example, n, np.random.default_rng(seed), greedy=self.greedy
        )
        errors = [s.error for s in samples if s.error]
        if errors:
            raise EngineError(f"{self.name}: generation failed: {errors[0]}")
        return [s.text for s in samples]

    async def aclose(self) -> None:
        """Run ``on_close`` once, if given."""
        close, self._on_close = self._on_close, None
        if close is not None:
            await close()


def _accepts(fn: Callable[..., object], name: str) -> bool:
    """Whether ``fn`` takes a parameter ``name`` (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@runtime_checkable
class _Texted(Protocol):
    """An answer object carrying its text (a ``Completion``, a ``Prediction`` ...)."""

    text: object


def _as_text(value: object) -> str:
    """The text of a model's answer: a string, ``.text``, or a ``generated``/``text`` field."""
    if isinstance(value, str):
        return value
    if isinstance(value, _Texted) and isinstance(value.text, str):
        return value.text
    if isinstance(value, Mapping):
        for key in ("generated", "text", "output"):
            if isinstance(value.get(key), str):
                return value[key]
    raise TypeError(f"cannot read a text from a {type(value).__name__} answer")


class TextModelGenerator:
    """A :class:`TextModel` (e.g. ``FineTunedModel``) as a Generator.

    The n samples are n concurrent calls. Keyword arguments are passed only when the method
    accepts them: ``sample`` (``True``, so the n samples can differ; override with
    ``sample=False`` for greedy) and ``seed`` (``seed + i`` for sample i).
    """

    def __init__(self, model: TextModel, *, name: str | None = None, sample: bool = True) -> None:
        self.model = model
        self.name = name or name_of(model) or type(model).__name__
        self.sample = sample
        self._kw_sample = _accepts(model.generate, "sample")
        self._kw_seed = _accepts(model.generate, "seed")

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` concurrent ``model.generate(example.text)`` calls."""
        out = [""] * n

        async def one(i: int) -> None:
            kw: dict[str, bool | int] = {}
            if self._kw_sample:
                kw["sample"] = self.sample
            if self._kw_seed:
                kw["seed"] = seed + i
            out[i] = _as_text(await self.model.generate(example.text, **kw))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return out

    async def aclose(self) -> None:
        """Close the wrapped model when it is :class:`Closeable`."""
        if isinstance(self.model, Closeable):
            await self.model.aclose()


class EndpointGenerator:
    """A fixed prompt on an OpenAI-compatible endpoint, as a Generator.

    The prompt is ``render(example)`` when given (``endpoint_generator`` passes the prompt
    policy's rendering of its base prompt), else ``instruction + "\\n\\n" + example.text``
    (just the text without an instruction); ``n`` samples come from one
    :meth:`engine.endpoints.client.Client.complete` call with ``seed`` (the client fans out
    when the server ignores ``n``).

    Args:
        client: the endpoint's client; closed by :meth:`aclose` when ``owns_client``.
        instruction: the fixed instruction, or "".
        name: shown in results.
        run_config: the config it came from, when known.
        owns_client: whether :meth:`aclose` closes ``client``.
        render: a custom rendering of an example (chat messages or a completions prompt).
    """

    def __init__(
        self,
        client: Client,
        instruction: str = "",
        *,
        name: str = "endpoint",
        run_config: RunConfig | None = None,
        owns_client: bool = True,
        render: Callable[[Example], Prompt] | None = None,
    ) -> None:
        self.client = client
        self.instruction = instruction
        self.name = name
        self.run_config = run_config
        self.owns_client = owns_client
        self._render = render

    def render(self, example: Example) -> Prompt:
        """The prompt (a string, or chat messages) sent for ``example``."""
        if self._render is not None:
            return self._render(example)
        return f"{self.instruction}\n\n{example.text}" if self.instruction else example.text

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` completions of the rendered prompt."""
        completion = await self.client.complete(
            self.render(example), n=n, seed=seed, group_id=f"compare:{example.id}"
        )
        return [c.text for c in completion.choices]

    async def aclose(self) -> None:
        """Close the client if this generator owns it."""
        if self.owns_client:
            await self.client.aclose()


def as_generator(model: Model, *, name: str | None = None) -> Generator:
    """A Generator for ``model``: itself when it already is one, else the fitting adapter.

    An engine policy (it has ``parameters`` and ``snapshot``) becomes a
    :class:`PolicyGenerator` of its current parameters; an object whose ``generate`` lacks
    ``n`` and ``seed`` parameters becomes a :class:`TextModelGenerator`.
    """
    generate = getattr(model, "generate", None)
    if generate is None:
        raise TypeError(f"{type(model).__name__} has no generate method: not a model")
    if isinstance(model, SamplingPolicy):
        return PolicyGenerator(model, name=name)
    if _accepts(generate, "n") and _accepts(generate, "seed"):
        if name is not None and name_of(model) is None:
            model.name = name
        return model
    return TextModelGenerator(model, name=name)
