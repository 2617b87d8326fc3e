"""The comparator: answer the same inputs with two models, score both, test the differences.

:meth:`ModelComparator.compare` takes four steps: generate k samples per input with each
model (the same seed for A and B), score every sample with every metric (and show each pair
to the pairwise judge), reduce to one value per input and metric, and run the paired
statistics of :mod:`.statistics` on them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np

from ...data.jsonl import parse_example
from ...errors import EngineError
from ...types import Example
from .generation import Generator, Model, as_generator, name_of
from .result import ComparisonResult
from .scoring import (
    PairwiseJudgeFn,
    ScoreFn,
    ScoreSource,
    as_score_fn,
    call_pairwise,
    default_quality,
    inline,
)
from .statistics import MetricComparison, compare_scores, finite_or_none
from .text_metrics import group_metrics, lexical_relevance

__all__ = ("BUILTIN_METRICS", "MetricSpec", "ModelComparator")

BUILTIN_METRICS: tuple[str, ...] = ("quality", "preference", "diversity", "relevance")
"""Metric names understood by :class:`ModelComparator` (custom callables come on top)."""

GROUP_METRICS: tuple[str, ...] = ("diversity", "distinct_1", "distinct_2")
"""The metrics of one input's k samples together, which ``diversity`` asks for."""

MetricSpec = str | Callable[[Example, str], object] | tuple[str, Callable[[Example, str], object]]
"""A built-in metric's name, a custom metric (named by ``__name__``), or a ``(name, fn)``."""

SIDES = ("a", "b")
_SHOWN_SAMPLES = 5

T = TypeVar("T")


def _as_example(item: Example | str | Mapping[str, object], i: int) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        return Example(id=f"input-{i}", text=item, inputs={"text": item})
    if isinstance(item, Mapping):
        return parse_example(item, path="<evaluation_data>", line=i + 1)
    raise TypeError(f"evaluation item {i} is a {type(item).__name__}, not an Example or str")


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over finite entries; NaN for rows with none. (n, k) -> (n,)."""
    ok = np.isfinite(x)
    cnt = ok.sum(axis=1)
    total = np.where(ok, x, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)


@dataclass(slots=True)
class _Run:
    """One :meth:`ModelComparator.compare` call in progress: its limiter and its tallies.

    Attributes:
        limiter: bounds the generation, score and judge calls in flight.
        seeds: (n,) the generation seed of each input, the same for A and B.
        sample_scores: per scored metric and side, (n, k) sample scores; NaN = failed.
        group_scores: per group metric and side, (n,) values of an input's samples.
        preference: (n, k) the judge's P(B better) per sample pair; NaN = failed.
        texts: per input, both models' samples; None when a generation failed.
        failures: failed generations, ``{"input", "model", "error"}``.
        score_failures: failed score calls per metric and side (``"pair"`` for the judge).
        score_errors: up to three distinct error messages per metric.
        done: inputs finished.
    """

    limiter: anyio.CapacityLimiter
    seeds: np.ndarray
    sample_scores: dict[str, dict[str, np.ndarray]]
    group_scores: dict[str, dict[str, np.ndarray]]
    preference: np.ndarray
    texts: list[dict[str, list[str]] | None]
    failures: list[dict[str, str]] = field(default_factory=list)
    score_failures: dict[str, dict[str, int]] = field(default_factory=dict)
    score_errors: dict[str, list[str]] = field(default_factory=dict)
    done: int = 0

    async def limited(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """``await fn(*args)`` once the limiter admits it."""
        async with self.limiter:
            return await fn(*args)

    def record_score_failure(self, name: str, who: str, exc: Exception) -> None:
        """Count a failed score call of metric ``name`` and keep a few distinct messages."""
        self.score_failures[name][who] += 1
        messages = self.score_errors.setdefault(name, [])
        message = f"{type(exc).__name__}: {exc}"
        if len(messages) < 3 and message not in messages:
            messages.append(message)


class ModelComparator:
    """A/B test of two models on the same inputs; see :mod:`engine.evaluation.compare`.

    Args:
        model_a: the baseline (a :class:`Generator`, an engine policy, or any object with an
            async ``generate(text)``).
        model_b: the candidate, likewise.
        evaluation_data: :class:`Example` objects (or strings, or dataset-line mappings).
        metrics: names among ``quality``, ``preference``, ``diversity``, ``relevance``, plus
            custom callables ``(example, text) -> float`` or ``(name, callable)`` pairs.
            ``preference`` is added when ``pairwise_judge`` is given.
        samples_per_input: k samples per input and model (diversity needs k >= 2).
        seed: seeds generation (input i gets the same seed for A and B), the judge's
            presentation order and the statistics.
        quality: reward function or judge ``(example, text) -> float``; default for tinylm
            checkpoints of one task: that task's reward.
        relevance_judge: ``(example, text) -> float``; default :func:`lexical_relevance`.
        pairwise_judge: ``(example, first, second) -> P(first better)``, e.g.
            :class:`PairwiseJudge`.
        concurrency: generation and scoring calls in flight at once.
        confidence: level of the bootstrap intervals.
        n_resamples: bootstrap and permutation resamples.
        on_progress: called with ``(inputs_done, inputs_total)`` (sync or async).

    Attributes:
        scorers: the per-sample score functions, by metric name.
        group_metrics: the metrics computed over an input's k samples together.
        order: every metric name, in table order.
    """

    def __init__(
        self,
        model_a: Model,
        model_b: Model,
        evaluation_data: Iterable[Example | str | Mapping[str, object]],
        metrics: Sequence[MetricSpec] = ("quality", "diversity", "relevance"),
        *,
        samples_per_input: int = 4,
        seed: int = 0,
        quality: ScoreSource | None = None,
        relevance_judge: ScoreSource | None = None,
        pairwise_judge: PairwiseJudgeFn | None = None,
        concurrency: int = 16,
        confidence: float = 0.95,
        n_resamples: int = 10_000,
        on_progress: Callable[[int, int], object] | None = None,
    ) -> None:
        self.model_a = as_generator(model_a)
        self.model_b = as_generator(model_b)
        self.examples = [_as_example(x, i) for i, x in enumerate(evaluation_data)]
        if not self.examples:
            raise ValueError("evaluation_data is empty")
        if samples_per_input < 1:
            raise ValueError(f"samples_per_input must be >= 1, got {samples_per_input}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.k = samples_per_input
        self.seed = seed
        self.concurrency = concurrency
        self.confidence = confidence
        self.n_resamples = n_resamples
        self.on_progress = on_progress
        self.pairwise_judge = pairwise_judge
        self.scorers: dict[str, ScoreFn] = {}
        self.group_metrics: list[str] = []
        self.order: list[str] = []
        names = list(metrics)
        if pairwise_judge is not None and "preference" not in names:
            names.insert(1 if "quality" in names else 0, "preference")
        for m in names:
            if isinstance(m, str):
                self._add_builtin(m, quality, relevance_judge)
            elif isinstance(m, tuple):
                name, fn = m
                self._add_custom(str(name), fn)
            elif callable(m):
                self._add_custom(getattr(m, "__name__", f"metric{len(self.order)}"), m)
            else:
                raise TypeError(f"not a metric: {m!r}")

    def _add_builtin(
        self, name: str, quality: ScoreSource | None, relevance_judge: ScoreSource | None
    ) -> None:
        if name == "quality":
            fn = as_score_fn(quality) if quality is not None else None
            fn = fn or default_quality(self.model_a, self.model_b)
            if fn is None:
                raise ValueError(
                    "metric 'quality' needs quality= (a reward function or judge); only "
                    "tinylm checkpoints of one task have a default"
                )
            self.scorers["quality"] = fn
            self.order.append("quality")
        elif name == "preference":
            if self.pairwise_judge is None:
                raise ValueError("metric 'preference' needs pairwise_judge=")
            self.order.append("preference")
        elif name == "diversity":
            if self.k < 2:
                raise ValueError("metric 'diversity' needs samples_per_input >= 2")
            self.group_metrics += GROUP_METRICS
            self.order += GROUP_METRICS
        elif name == "relevance":
            self.scorers["relevance"] = as_score_fn(
                relevance_judge if relevance_judge is not None else inline(lexical_relevance)
            )
            self.order.append("relevance")
        else:
            raise ValueError(
                f"unknown metric {name!r}; built-in: {', '.join(BUILTIN_METRICS)} "
                "(or pass a callable)"
            )

    def _add_custom(self, name: str, fn: Callable[[Example, str], object]) -> None:
        if name in self.order:
            raise ValueError(f"metric name {name!r} is used twice")
        self.scorers[name] = as_score_fn(fn)
        self.order.append(name)

    # ------------------------------------------------------------------ comparing

    async def compare(self) -> ComparisonResult:
        """Generate, score and test; see the module docstring. Never blocks the event loop."""
        t0 = anyio.current_time()
        run = self._start()
        async with anyio.create_task_group() as tg:
            for i in range(len(self.examples)):
                tg.start_soon(self._compare_input, run, i)
        values = self._per_input_values(run)
        metrics = await self._statistics(values)
        return self._result(run, values, metrics, anyio.current_time() - t0)

    def _start(self) -> _Run:
        """Empty tallies: every score NaN until it is measured."""
        n, k = len(self.examples), self.k
        score_failures = {name: dict.fromkeys(SIDES, 0) for name in self.scorers}
        score_failures["preference"] = {"pair": 0}
        return _Run(
            limiter=anyio.CapacityLimiter(self.concurrency),
            seeds=np.random.SeedSequence(self.seed).generate_state(n, dtype=np.uint32),
            sample_scores={
                name: {side: np.full((n, k), np.nan) for side in SIDES} for name in self.scorers
            },
            group_scores={
                name: {side: np.full(n, np.nan) for side in SIDES} for name in self.group_metrics
            },
            preference=np.full((n, k), np.nan),
            texts=[None] * n,
            score_failures=score_failures,
        )

    async def _compare_input(self, run: _Run, i: int) -> None:
        """Both models' samples of input ``i``, then every score of them; progress after."""
        texts: dict[str, list[str]] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._generate, run, "a", self.model_a, i, texts)
            tg.start_soon(self._generate, run, "b", self.model_b, i, texts)
        if len(texts) == 2:
            run.texts[i] = texts
            await self._score_input(run, i, texts)
        run.done += 1
        if self.on_progress is not None:
            res = self.on_progress(run.done, len(self.examples))
            if inspect.isawaitable(res):
                await res

    async def _generate(
        self, run: _Run, side: str, model: Generator, i: int, out: dict[str, list[str]]
    ) -> None:
        """``out[side]``: k samples of input ``i``; a failure is recorded instead."""
        example = self.examples[i]
        try:
            got = list(await run.limited(model.generate, example, self.k, int(run.seeds[i])))
            if len(got) != self.k or not all(isinstance(t, str) for t in got):
                raise EngineError(f"generate returned {len(got)} items, expected {self.k} texts")
            out[side] = got
        except Exception as exc:
            run.failures.append(
                {"input": example.id, "model": side, "error": f"{type(exc).__name__}: {exc}"}
            )

    async def _score_input(self, run: _Run, i: int, texts: dict[str, list[str]]) -> None:
        """Every metric of input ``i``'s samples: per sample, per pair, per group."""
        async with anyio.create_task_group() as tg:
            for name in self.scorers:
                for side in SIDES:
                    for j, text in enumerate(texts[side]):
                        tg.start_soon(self._score, run, name, side, i, j, text)
            if "preference" in self.order:
                for j in range(self.k):
                    tg.start_soon(self._judge, run, i, j, texts["a"][j], texts["b"][j])
        if self.group_metrics:  # O(k^2) pairs of texts: off the event loop
            for side in SIDES:
                got = await anyio.to_thread.run_sync(group_metrics, texts[side])
                for name, value in got.items():
                    run.group_scores[name][side][i] = value

    async def _score(self, run: _Run, name: str, side: str, i: int, j: int, text: str) -> None:
        """Sample ``j`` of input ``i`` under metric ``name``; a failure leaves it NaN."""
        try:
            score = await run.limited(self.scorers[name], self.examples[i], text)
        except Exception as exc:
            run.record_score_failure(name, side, exc)
            return
        run.sample_scores[name][side][i, j] = score

    async def _judge(self, run: _Run, i: int, j: int, text_a: str, text_b: str) -> None:
        """The pairwise judge on sample pair ``j`` of input ``i``, in a seeded random order."""
        assert self.pairwise_judge is not None
        b_first = bool(np.random.default_rng([self.seed, i, j]).integers(2))
        first, second = (text_b, text_a) if b_first else (text_a, text_b)
        try:
            p = await run.limited(
                call_pairwise, self.pairwise_judge, self.examples[i], first, second
            )
        except Exception as exc:
            run.record_score_failure("preference", "pair", exc)
            return
        run.preference[i, j] = p if b_first else 1.0 - p

    # ------------------------------------------------------------------ testing

    def _per_input_values(self, run: _Run) -> dict[str, dict[str, np.ndarray]]:
        """(n,) values per metric and side: the mean over valid samples (NaN when none)."""
        values: dict[str, dict[str, np.ndarray]] = {}
        for name in self.order:
            if name in self.scorers:
                values[name] = {s: _nanmean_rows(run.sample_scores[name][s]) for s in SIDES}
            elif name == "preference":
                pb = _nanmean_rows(run.preference)
                values[name] = {"a": 1.0 - pb, "b": pb}
            else:
                values[name] = run.group_scores[name]
        return values

    async def _statistics(
        self, values: dict[str, dict[str, np.ndarray]]
    ) -> dict[str, MetricComparison]:
        """The paired statistics of every metric, in worker threads, each with its own seed."""
        seeds = np.random.SeedSequence([self.seed, 1]).spawn(len(self.order))
        metrics = {}
        for name, seed in zip(self.order, seeds, strict=True):
            metrics[name] = await anyio.to_thread.run_sync(
                lambda name=name, seed=seed: compare_scores(
                    name,
                    values[name]["a"],
                    values[name]["b"],
                    confidence=self.confidence,
                    n_resamples=self.n_resamples,
                    seed=seed.generate_state(4),
                )
            )
        return metrics

    def _result(
        self,
        run: _Run,
        values: dict[str, dict[str, np.ndarray]],
        metrics: dict[str, MetricComparison],
        wall_time: float,
    ) -> ComparisonResult:
        run.failures.sort(key=lambda f: (f["input"], f["model"]))
        return ComparisonResult(
            model_a=name_of(self.model_a) or "A",
            model_b=name_of(self.model_b) or "B",
            metrics=metrics,
            n_inputs=len(self.examples),
            samples_per_input=self.k,
            seed=self.seed,
            confidence=self.confidence,
            n_resamples=self.n_resamples,
            failures=run.failures,
            score_failures={k: v for k, v in run.score_failures.items() if k in self.order},
            score_errors=run.score_errors,
            scores={
                name: {s: [finite_or_none(x) for x in v[s]] for s in SIDES}
                for name, v in values.items()
            },
            input_ids=[ex.id for ex in self.examples],
            samples=self._shown_samples(run),
            wall_time=wall_time,
        )

    def _shown_samples(self, run: _Run) -> list[dict[str, str]]:
        """The first few inputs both models answered, with each model's first sample."""
        return [
            {"id": ex.id, "input": ex.text, "a": texts["a"][0], "b": texts["b"][0]}
            for ex, texts in zip(self.examples, run.texts, strict=True)
            if texts is not None
        ][:_SHOWN_SAMPLES]
