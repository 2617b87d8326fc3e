"""The training plots of a run: which metrics each plot shows, and how they are drawn.

:func:`training_charts` draws every plot the run has data for and names the others. A plot
is described by a :class:`Plot` (title, caption, series, the metrics keys it needs); the
functions below build them from a :class:`~.run.RunData`, grouped by what they describe:
reward, the learner's step, requests, and the prompt policy's candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .charts import PALETTE, Series, finite, line_chart
from .run import RunData

__all__ = ("Chart", "Plot", "training_charts")


@dataclass(frozen=True, slots=True)
class Plot:
    """One plot of a run's metrics, before it is drawn.

    Attributes:
        title: the chart's title (and its id, and its name when absent).
        caption: what the plot shows, under it.
        series: what is drawn.
        keys: the metrics keys it shows; absent when the run has none of them (a plot with
            no keys is always absent).
        y_label: the y axis label.
        y_zero: include 0 in the y range.
        note: a short grey line in the plot area.
    """

    title: str
    caption: str
    series: Sequence[Series]
    keys: tuple[str, ...]
    y_label: str = ""
    y_zero: bool = False
    note: str = ""


@dataclass(slots=True)
class Chart:
    """A drawn plot: its title and caption, the keys it shows, and its SVG."""

    title: str
    caption: str
    keys: tuple[str, ...]
    svg: str


def training_charts(run: RunData, conv: Mapping[str, Any]) -> tuple[list[Chart], list[str]]:
    """The plots this run has data for, drawn, and the titles of those it has none for.

    ``conv`` is :func:`engine.telemetry.monitor.convergence` of the train reward; its fitted
    trend joins the reward plot.
    """
    charts: list[Chart] = []
    absent: list[str] = []
    for plot in _plots(run, conv):
        if any(run.has(k) for k in plot.keys):
            charts.append(_draw(plot))
        else:
            absent.append(plot.title)
    return charts, absent


def _draw(plot: Plot) -> Chart:
    cid = "chart-" + "".join(c if c.isalnum() else "-" for c in plot.title.lower()).strip("-")
    svg = line_chart(
        plot.title,
        plot.series,
        chart_id=cid,
        y_label=plot.y_label,
        y_zero=plot.y_zero,
        note=plot.note,
    )
    return Chart(plot.title, plot.caption, plot.keys, svg)


def _plots(run: RunData, conv: Mapping[str, Any]) -> list[Plot]:
    """Every plot of the report, in page order."""
    return [
        _reward_plot(run, conv),
        *_learner_plots(run),
        _tokens_plot(run),
        _cost_plot(run),
        _latency_plot(run),
        _errors_plot(run),
        *_prompt_plots(run),
    ]


def _line(
    run: RunData,
    key: str,
    label: str | None = None,
    color: int = 0,
    *,
    kind: Literal["line", "points"] = "line",
    dashed: bool = False,
) -> Series:
    """The metric ``key`` over steps."""
    color_hex = PALETTE[color % len(PALETTE)]
    return Series(label or key, run.column("step"), run.column(key), color_hex, kind, dashed=dashed)


def _reward_plot(run: RunData, conv: Mapping[str, Any]) -> Plot:
    """Mean reward, a +-std band, the eval reward, the fitted trend over the last steps."""
    steps = run.column("step")
    reward = run.column("reward")
    std = run.column("reward_std")
    series = [
        Series(
            "± reward_std",
            steps,
            ys_low=[r - s for r, s in zip(reward, std, strict=True)],
            ys_high=[r + s for r, s in zip(reward, std, strict=True)],
            color=PALETTE[0],
            kind="band",
        ),
        _line(run, "reward", "train reward (mean)", 0),
    ]
    if run.has("eval/reward"):
        series.append(_line(run, "eval/reward", "eval reward (greedy)", 1, kind="points"))
    if conv.get("slope") is not None and run.rows:
        fx = steps[int(conv["start"]) :]
        fy = [conv["intercept"] + conv["slope"] * i for i in range(len(fx))]
        series.append(
            Series(f"trend (last {len(fx)} steps)", fx, fy, "#1f2933", dashed=True, hover=False)
        )
    return Plot(
        "Reward",
        "Mean reward of each step's rollouts, shaded ± the mean within-group std (the spread "
        "GRPO's advantages come from); eval = greedy decoding on held-out prompts.",
        series,
        ("reward",),
        y_label="reward",
    )


def _learner_plots(run: RunData) -> list[Plot]:
    """What each optimizer step did: loss, KL, entropy, clipping, lr, gradients, signal."""
    return [
        Plot(
            "Policy loss",
            "The clipped surrogate (GRPO has no value function, so there is no value loss).",
            [_line(run, "policy_loss", "policy loss", 4)],
            ("policy_loss",),
        ),
        Plot(
            "KL to the reference policy",
            "Mean per-token k3 estimate of KL(policy || initial policy).",
            [_line(run, "kl", "kl (k3)", 3)],
            ("kl",),
            y_zero=True,
        ),
        Plot(
            "Entropy",
            "Mean per-token entropy of the policy's next-token distribution (nats).",
            [_line(run, "entropy", "entropy", 5)],
            ("entropy",),
            y_label="nats",
        ),
        Plot(
            "Clip ratio",
            "Share of tokens whose probability ratio hit the clip range (low: ratio < 1 - ε "
            "with A < 0; high: ratio > 1 + ε with A > 0).",
            [
                _line(run, "clip_ratio", "all", 0),
                _line(run, "clip_ratio/low", "low", 2, dashed=True),
                _line(run, "clip_ratio/high", "high", 3, dashed=True),
            ],
            ("clip_ratio",),
            y_zero=True,
        ),
        Plot(
            "Learning rate",
            "Learning rate of each step (warm-up and schedule).",
            [_line(run, "lr", "lr", 6)],
            ("lr",),
            y_zero=True,
        ),
        Plot(
            "Gradient norm",
            "Global gradient norm before clipping.",
            [_line(run, "grad_norm", "grad norm", 7)],
            ("grad_norm",),
            y_zero=True,
        ),
        Plot(
            "Groups without signal",
            "Share of groups whose rewards all tie: their advantages are 0, they teach nothing.",
            [_line(run, "frac_reward_zero_std", "zero-std groups", 9)],
            ("frac_reward_zero_std",),
            y_zero=True,
        ),
    ]


def _tokens_plot(run: RunData) -> Plot:
    return Plot(
        "Tokens per step",
        "Prompt and completion tokens of the step's requests (generation and judges).",
        [
            _line(run, "tokens/prompt", "prompt", 0),
            _line(run, "tokens/completion", "completion", 1),
        ],
        ("tokens/prompt", "tokens/completion"),
        y_zero=True,
        y_label="tokens",
    )


def _cost_plot(run: RunData) -> Plot:
    """USD spent per step and in total, with the budget when the run had one; absent when
    nothing was spent and there was no budget (the embedded LM, unpriced local models)."""
    keys = ("cost/step_usd", "cost/total_usd")
    budget = (run.summary or {}).get("budget_usd")
    spent = any(v > 0 for k in keys for v in run.column(k) if finite(v))
    series = [_line(run, "cost/step_usd", "per step", 0), _line(run, "cost/total_usd", "total", 1)]
    if finite(budget):
        steps = run.column("step")
        series.append(Series("budget", steps, [float(budget)] * len(steps), PALETTE[3],
                             dashed=True))  # fmt: skip
    return Plot(
        "Spend",
        "USD spent on requests (generation and judges): the step's requests, and the run's "
        "total so far (requests of batches generated ahead included); the dashed line is "
        "limits.max_cost_usd. Costs are the provider's usage.cost, else tokens at [prices].",
        series,
        keys if spent or finite(budget) else (),
        y_zero=True,
        y_label="USD",
    )


def _latency_plot(run: RunData) -> Plot:
    """Latency percentiles, in ms when every value is under a second, else in s."""
    keys = ("latency/p50", "latency/p95", "latency/p99")
    top = max((v for k in keys for v in run.column(k) if finite(v)), default=0.0)
    scale, unit = (1000.0, "ms") if top < 1.0 else (1.0, "s")
    steps = run.column("step")
    return Plot(
        "Request latency",
        "Percentiles of request latency within each step.",
        [
            Series(
                k.split("/")[1], steps, [v * scale for v in run.column(k)], PALETTE[i], fmt=".3g"
            )
            for i, k in enumerate(keys)
        ],
        keys,
        y_zero=True,
        y_label=unit,
    )


def _errors_plot(run: RunData) -> Plot:
    """Failed requests per error class; the total when no class was recorded."""
    title = "Errors by class"
    keys = run.keys_with_prefix("errors/")
    if keys:
        steps = run.column("step")
        return Plot(
            title,
            "Failed requests per step, by error class (telemetry's errors/<class> counts).",
            [  # a step without errors of a class has no key for it: 0, not missing
                Series(k.split("/", 1)[1], steps, run.column(k, 0.0), PALETTE[(i + 3) % 10])
                for i, k in enumerate(keys)
            ],
            tuple(keys),
            y_zero=True,
            y_label="requests",
        )
    if run.has("requests/errors"):
        return Plot(
            title,
            "Failed requests per step, by error class.",
            [_line(run, "requests/errors", "errors", 3)],
            ("requests/errors",),
            y_zero=True,
            note="no failed requests in this run",
            y_label="requests",
        )
    return Plot(title, "", (), ())


def _prompt_plots(run: RunData) -> list[Plot]:
    """The prompt policy's candidate probabilities and, when logged, its pool size."""
    plots = [_candidates_plot(run)]
    if run.has("prompt/candidates"):
        plots.append(
            Plot(
                "Candidate pool",
                "Live prompt candidates after each step (growth adds, pruning retires).",
                [_line(run, "prompt/candidates", "candidates", 4)],
                ("prompt/candidates",),
                y_zero=True,
            )
        )
    return plots


def _candidates_plot(run: RunData) -> Plot:
    """Each candidate's probability; the most probable one's when that is all there is."""
    keys = run.keys_with_prefix("candidate_prob/")
    if keys:
        return Plot(
            "Prompt candidates",
            "Probability of each prompt candidate under the prompt policy.",
            [_line(run, k, f"#{k.split('/', 1)[1]}", i) for i, k in enumerate(keys)],
            tuple(keys),
            y_zero=True,
            y_label="probability",
        )
    if run.has("prompt/best_prob"):
        return Plot(
            "Prompt candidates",
            "Probability of the most probable prompt candidate (prompt/best_prob); the run "
            "logged no per-candidate candidate_prob/<id> keys.",
            [_line(run, "prompt/best_prob", "best candidate", 0)],
            ("prompt/best_prob",),
            y_zero=True,
            y_label="probability",
        )
    return Plot("Prompt candidates (prompt policy only)", "", (), ())
