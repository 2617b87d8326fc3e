"""What a comparison returns: :class:`ComparisonResult`, its table and its JSON form."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .statistics import MetricComparison, finite_or_none

__all__ = ("ComparisonResult",)


def _fmt(x: float | None, spec: str = ".4f", signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return format(x, ("+" if signed else "") + spec)


def _table_row(m: MetricComparison, alpha: float) -> tuple[str, ...]:
    """One metric's cells: name, means, B - A, interval, p, win/tie/loss, improvement, n."""
    star = " *" if m.significant(alpha) else "  "
    p_value = "n/a"
    if math.isfinite(m.p_value):
        p_value = (_fmt(m.p_value, ".4f") if m.p_value >= 1e-4 else "<1e-4") + star
    win_tie_loss = f"{_fmt(m.win, '.0%')}/{_fmt(m.tie, '.0%')}/{_fmt(m.loss, '.0%')}"
    return (
        m.name,
        _fmt(m.mean_a),
        _fmt(m.mean_b),
        _fmt(m.diff, signed=True),
        f"[{_fmt(m.ci_low, signed=True)}, {_fmt(m.ci_high, signed=True)}]",
        p_value,
        win_tie_loss if m.n else "n/a",
        _fmt(m.improvement, "+.1%") if m.improvement is not None else "n/a",
        str(m.n) + (f" (-{m.dropped})" if m.dropped else ""),
    )


@dataclass(slots=True)
class ComparisonResult:
    """What :meth:`ModelComparator.compare` returns; ``print(result)`` shows a table."""

    model_a: str
    """Name of model A (the baseline)."""
    model_b: str
    """Name of model B (the candidate)."""
    metrics: dict[str, MetricComparison]
    """Per metric, in the order requested."""
    n_inputs: int
    """Evaluation inputs."""
    samples_per_input: int
    """k: samples per input and model."""
    seed: int
    """Seed of generation, judge order and statistics."""
    confidence: float = 0.95
    """Confidence level of the intervals."""
    n_resamples: int = 10_000
    """Bootstrap / permutation resamples."""
    failures: list[dict[str, str]] = field(default_factory=list)
    """Failed generations: ``{"input", "model", "error"}``; those inputs are dropped."""
    score_failures: dict[str, dict[str, int]] = field(default_factory=dict)
    """Failed score calls per metric and model (``{"quality": {"a": 1, "b": 0}}``;
    ``{"preference": {"pair": 2}}`` for judge calls on a pair)."""
    score_errors: dict[str, list[str]] = field(default_factory=dict)
    """Up to three distinct error messages per metric whose score calls failed."""
    scores: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    """Per-input scores per metric: ``{"quality": {"a": [...], "b": [...]}}``."""
    input_ids: list[str] = field(default_factory=list)
    """Example ids, aligned with ``scores``."""
    samples: list[dict[str, str]] = field(default_factory=list)
    """A few inputs with one sample of each model, for a person to read."""
    wall_time: float = 0.0
    """Seconds the comparison took."""

    @property
    def improvement(self) -> dict[str, float | None]:
        """Relative improvement ``(B - A) / |A|`` per metric (None when A's mean is 0)."""
        return {k: m.improvement for k, m in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (NaN becomes None)."""
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "n_inputs": self.n_inputs,
            "samples_per_input": self.samples_per_input,
            "seed": self.seed,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "wall_time": self.wall_time,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "improvement": {k: finite_or_none(v) for k, v in self.improvement.items()},
            "failures": self.failures,
            "score_failures": self.score_failures,
            "score_errors": self.score_errors,
            "input_ids": self.input_ids,
            "scores": self.scores,
            "samples": self.samples,
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as indented JSON bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparisonResult:
        """Read back :meth:`to_dict` output (e.g. ``comparison.json``)."""
        return cls(
            model_a=str(data.get("model_a", "A")),
            model_b=str(data.get("model_b", "B")),
            metrics={
                k: MetricComparison.from_dict(v) for k, v in dict(data.get("metrics", {})).items()
            },
            n_inputs=int(data.get("n_inputs", 0)),
            samples_per_input=int(data.get("samples_per_input", 1)),
            seed=int(data.get("seed", 0)),
            confidence=float(data.get("confidence", 0.95)),
            n_resamples=int(data.get("n_resamples", 10_000)),
            failures=list(data.get("failures", [])),
            score_failures=dict(data.get("score_failures", {})),
            score_errors=dict(data.get("score_errors", {})),
            scores=dict(data.get("scores", {})),
            input_ids=list(data.get("input_ids", [])),
            samples=list(data.get("samples", [])),
            wall_time=float(data.get("wall_time", 0.0)),
        )

    def table(self, alpha: float = 0.05) -> str:
        """The readable table ``str(result)`` returns."""
        pct = round(self.confidence * 100)
        head = (
            f"A/B comparison  A = {self.model_a}\n"
            f"                B = {self.model_b}\n"
            f"{self.n_inputs} inputs x {self.samples_per_input} samples per model, seed "
            f"{self.seed}; B - A paired per input, {pct}% bootstrap CI, permutation p-value\n"
        )
        cols = ("metric", "A", "B", "B - A", f"{pct}% CI", "p", "win/tie/loss", "improv.", "n")
        rows = [_table_row(m, alpha) for m in self.metrics.values()]
        widths = [
            max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
        ]

        def line(cells: Sequence[str]) -> str:  # first column left-aligned, numbers right
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        lines = [head, line(cols), "  ".join("-" * w for w in widths)]
        lines += [line(r) for r in rows]
        lines.append("; ".join(self._footnotes(alpha)))
        return "\n".join(lines)

    def _footnotes(self, alpha: float) -> list[str]:
        foot = [f"* p < {alpha}"]
        if self.failures:
            foot.append(f"{len(self.failures)} failed generations (inputs dropped)")
        failed_scores = sum(v for per in self.score_failures.values() for v in per.values())
        if failed_scores:
            foot.append(f"{failed_scores} failed score calls (samples dropped)")
        return foot

    def __str__(self) -> str:
        return self.table()
