"""Inline SVG charts: axis ticks, tick labels and a chart's parts."""

from __future__ import annotations

import math

import pytest

from engine.evaluation.report import Series, line_chart, nice_ticks, tick_label


def test_nice_ticks_hand_cases() -> None:
    """Ticks are 1/2/2.5/5 x 10^k steps covering the range; degenerate ranges still get axes."""
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.13, 0.87) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 59, 6, integer=True) == [0, 10, 20, 30, 40, 50, 60]
    assert nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]  # never fractional steps
    assert nice_ticks(0.0, 0.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # 0 at the bottom
    assert nice_ticks(2.0, 2.0)[0] < 2.0 < nice_ticks(2.0, 2.0)[-1]
    assert nice_ticks(-0.02, 0.01) == pytest.approx([-0.02, -0.01, 0.0, 0.01])
    assert nice_ticks(math.nan, 1.0) == [0.0, 1.0]


def test_tick_labels() -> None:
    """Labels carry the decimals their step needs, with k/M for large values."""
    assert tick_label(0.2, 0.2) == "0.2"
    assert tick_label(0.25, 0.05) == "0.25"
    assert tick_label(1e-17, 0.1) == "0"
    assert tick_label(0.0004, 0.0002) == "0.0004"
    assert tick_label(2e-6, 1e-6) == "2e-06"
    assert tick_label(20_000, 10_000) == "20k"
    assert tick_label(1_500_000, 500_000) == "1.5M"
    assert tick_label(40, 10) == "40"


def test_line_chart_parts() -> None:
    """A chart has a title, a legend entry per series, ticks, a path per finite run, tooltips."""
    xs = list(range(10))
    ys = [float(x) for x in xs]
    ys[4] = math.nan
    svg = line_chart(
        "Loss & more",
        [
            Series("loss", xs, ys),
            Series("eval", [3, 7], [2.0, 6.0], kind="points"),
            Series(
                "band", xs, ys_low=[y - 1 for y in ys], ys_high=[y + 1 for y in ys], kind="band"
            ),
        ],
        y_label="value",
        chart_id="c1",
    )
    assert svg.startswith('<svg class="chart" id="c1"') and svg.endswith("</svg>")
    assert "Loss &amp; more" in svg  # escaped
    assert svg.count('class="series"') == 2  # the NaN at x=4 splits the line in two
    assert svg.count('class="band"') == 2
    assert svg.count('<circle class="marker"') == 2
    for label in ("loss", "eval", "band", "value", "step"):
        assert f">{label}</text>" in svg
    assert "<title>step 7\nloss: 7\neval: 6\nband: 6 to 8</title>" in svg  # hover column
