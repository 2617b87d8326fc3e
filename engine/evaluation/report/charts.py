"""Inline SVG line charts: "nice" axis ticks, legends, lines, point series, bands, tooltips.

:func:`line_chart` draws a list of :class:`Series` into one self-contained ``<svg>`` element
(no script, no external style beyond the page's class names). Hovering a step shows every
plotted value at that step: transparent full-height columns carry SVG ``<title>`` tooltips.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = (
    "PALETTE",
    "Series",
    "esc",
    "finite",
    "format_value",
    "line_chart",
    "nice_ticks",
    "tick_label",
)

PALETTE = (
    "#3b6fb6",  # blue
    "#e8833a",  # orange
    "#3f9e5a",  # green
    "#d1495b",  # red
    "#7a5cb5",  # purple
    "#2a9d9f",  # teal
    "#b08a2e",  # ochre
    "#8c6d5c",  # brown
    "#d36bb0",  # pink
    "#6c7a89",  # slate
)
"""Series colours, in the order charts use them."""

# Layout of one chart, in viewBox units: its size, the margins around the plot area (left
# for the y ticks, top for the title and legend), the height of one legend row and the
# estimated width of one legend character at 11px.
_W, _H = 560, 300
_ML, _MR, _MT, _MB = 62, 18, 58, 44
_LEGEND_ROW = 15
_CHAR_W = 6.2
_MAX_HOVER = 240
"""At most this many hover columns per chart (steps are thinned evenly beyond it)."""

Point = tuple[float, float]


@dataclass(slots=True)
class Series:
    """One thing drawn in a :func:`line_chart`.

    ``kind`` is ``line`` (NaN values break it), ``points`` (markers, joined by a dashed
    line), or ``band`` (filled between ``ys_low`` and ``ys_high``).

    Attributes:
        label: the legend entry and tooltip name.
        xs: x values (steps).
        ys: y values, aligned with ``xs`` (``line`` and ``points``).
        color: stroke or fill colour.
        kind: how it is drawn.
        ys_low: lower edge of a band, aligned with ``xs``.
        ys_high: upper edge of a band, aligned with ``xs``.
        dashed: draw a line dashed.
        fmt: format spec of its values in tooltips.
        hover: whether its values show in the per-step hover tooltip.
    """

    label: str
    xs: Sequence[float]
    ys: Sequence[float] = ()
    color: str = PALETTE[0]
    kind: Literal["line", "points", "band"] = "line"
    ys_low: Sequence[float] = ()
    ys_high: Sequence[float] = ()
    dashed: bool = False
    fmt: str = ".4g"
    hover: bool = True


# ============================================================================ values and axes


def finite(v: object) -> bool:
    """Whether ``v`` is a finite int or float (a bool is not)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def esc(text: object) -> str:
    """``text`` escaped for HTML and SVG text and attributes."""
    return html.escape(str(text), quote=True)


def format_value(v: object, fmt: str = ".4g") -> str:
    """``v`` formatted with ``fmt``; ``n/a`` when it is not a finite number."""
    if not finite(v):
        return "n/a"
    return format(v, fmt)


def nice_ticks(lo: float, hi: float, target: int = 5, *, integer: bool = False) -> list[float]:
    """'Nice' tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (finite(lo) and finite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        if lo == 0:
            hi = 1.0  # all zero (error counts, clip ratio): show 0 at the bottom
        else:
            pad = abs(lo) * 0.1
            lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, target)
    mag = 10.0 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if raw <= m * mag * (1 + 1e-9))
    if integer:
        step = max(1.0, round(step))
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    count = round((last - first) / step)
    return [first + i * step for i in range(count + 1)]


def _decimals(step: float) -> int:
    for d in range(0, 10):
        if abs(round(step * 10**d) - step * 10**d) < 1e-6:
            return d
    return 10


def tick_label(v: float, step: float) -> str:
    """A tick's text, with as many decimals as the tick step needs."""
    if abs(v) < step * 1e-6:
        return "0"
    if abs(v) >= 10_000:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.{_decimals(step / div)}f}{suffix}"
    d = _decimals(step)
    if d > 4:
        return f"{v:.2g}"
    return f"{v:.{d}f}"


@dataclass(frozen=True, slots=True)
class _Frame:
    """A chart's plot area: its ticks, its place in the viewBox, and the data-to-SVG maps.

    Attributes:
        x_ticks: x tick values; the first and last are the ends of the x axis.
        y_ticks: y tick values; the first and last are the ends of the y axis.
        top: y of the plot area's top edge (below the title and legend).
        width: plot area width.
        height: plot area height.
    """

    x_ticks: list[float]
    y_ticks: list[float]
    top: int
    width: int
    height: int

    @classmethod
    def fit(cls, series: Sequence[Series], *, y_zero: bool, legend_rows: int) -> _Frame:
        """The frame whose ticks cover every finite value (and 0 with ``y_zero``)."""
        xs = [float(x) for s in series for x in s.xs if finite(x)]
        ys = [
            float(y)
            for s in series
            for seq in (s.ys, s.ys_low, s.ys_high)
            for y in seq
            if finite(y)
        ]
        if y_zero:
            ys.append(0.0)
        top = _MT + _LEGEND_ROW * (legend_rows - 1)  # the top margin grows with the legend
        return cls(
            x_ticks=nice_ticks(min(xs, default=0.0), max(xs, default=1.0), 6, integer=True),
            y_ticks=nice_ticks(min(ys, default=0.0), max(ys, default=1.0), 5),
            top=top,
            width=_W - _ML - _MR,
            height=_H - top - _MB,
        )

    @property
    def bottom(self) -> int:
        """y of the plot area's bottom edge (the x axis)."""
        return self.top + self.height

    def sx(self, x: float) -> float:
        """The SVG x of data x."""
        x0, x1 = self.x_ticks[0], self.x_ticks[-1]
        return _ML + (x - x0) / (x1 - x0) * self.width

    def sy(self, y: float) -> float:
        """The SVG y of data y."""
        y0, y1 = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.height - (y - y0) / (y1 - y0) * self.height

    def xy(self, point: Point) -> str:
        """``"x,y"`` of a data point in SVG coordinates, as paths list them."""
        return f"{self.sx(point[0]):.1f},{self.sy(point[1]):.1f}"


# ============================================================================ the chart


_DRAW_ORDER = {"band": 0, "line": 1, "points": 2}
"""Bands are drawn first, then lines, then points, so markers stay on top."""


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "step",
    y_label: str = "",
    y_zero: bool = False,
    note: str = "",
    chart_id: str = "",
) -> str:
    """An inline SVG line chart (title, legend, ticks, axis labels, hover tooltips).

    Args:
        title: drawn at the top.
        series: lines, point series and bands; each gets a legend entry.
        x_label, y_label: axis labels.
        y_zero: include 0 in the y range (rates, counts).
        note: a short grey line under the plot area's top-left (e.g. "no errors").
        chart_id: ``id`` of the ``<svg>`` element.
    """
    legend, legend_rows = _legend(series)
    frame = _Frame.fit(series, y_zero=y_zero, legend_rows=legend_rows)
    out = [
        f'<svg class="chart" id="{esc(chart_id)}" viewBox="0 0 {_W} {_H}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}">',
        f'<text class="title" x="{_ML - 50}" y="20">{esc(title)}</text>',
        legend,
        _axes(frame, x_label, y_label),
    ]
    if note:
        out.append(f'<text class="note" x="{_ML + 8}" y="{frame.top + 14}">{esc(note)}</text>')
    for s in sorted(series, key=lambda s: _DRAW_ORDER.get(s.kind, 1)):
        out.append(_draw(s, frame))
    out.append(_hover_columns(series, frame))
    out.append("</svg>")
    return "".join(out)


def _legend(series: Sequence[Series]) -> tuple[str, int]:
    """Legend entries under the title, wrapped into rows; returns the SVG and the row count."""
    left = _ML - 50
    lx, row = left, 0
    parts: list[str] = []
    for s in series:
        width = 21 + _CHAR_W * len(s.label) + 14
        if lx > left and lx + width > _W - _MR:
            lx, row = left, row + 1
        cy = 35.5 + row * _LEGEND_ROW
        parts.append(
            f'<g class="legend">{_swatch(s, lx, cy)}'
            f'<text x="{lx + 21}" y="{cy + 4}">{esc(s.label)}</text></g>'
        )
        lx += width
    return "".join(parts), row + 1


def _swatch(s: Series, lx: float, cy: float) -> str:
    """The legend's sample of a series: a filled box, a marker or a line."""
    if s.kind == "band":
        return (
            f'<rect x="{lx}" y="{cy - 4.5}" width="16" height="9" fill="{s.color}" '
            'fill-opacity="0.22"/>'
        )
    if s.kind == "points":
        return f'<circle cx="{lx + 8}" cy="{cy}" r="3.5" fill="{s.color}"/>'
    dash = ' stroke-dasharray="4 3"' if s.dashed else ""
    return (
        f'<line x1="{lx}" y1="{cy}" x2="{lx + 16}" y2="{cy}" stroke="{s.color}" '
        f'stroke-width="2.2"{dash}/>'
    )


def _axes(frame: _Frame, x_label: str, y_label: str) -> str:
    """Grid lines, ticks and their labels, the axis lines and the axis labels."""
    out = ['<g class="axis">']
    step_y = frame.y_ticks[1] - frame.y_ticks[0] if len(frame.y_ticks) > 1 else 1.0
    for t in frame.y_ticks:
        y = frame.sy(t)
        out.append(
            f'<line class="grid" x1="{_ML}" y1="{y:.1f}" x2="{_ML + frame.width}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_ML - 7}" y="{y + 3.5:.1f}" text-anchor="end">'
            f"{esc(tick_label(t, step_y))}</text>"
        )
    step_x = frame.x_ticks[1] - frame.x_ticks[0] if len(frame.x_ticks) > 1 else 1.0
    bottom = frame.bottom
    for t in frame.x_ticks:
        x = frame.sx(t)
        out.append(
            f'<line class="tickmark" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}"/>'
            f'<text class="tick" x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">'
            f"{esc(tick_label(t, step_x))}</text>"
        )
    out.append(
        f'<line class="frame" x1="{_ML}" y1="{bottom}" x2="{_ML + frame.width}" y2="{bottom}"/>'
        f'<line class="frame" x1="{_ML}" y1="{frame.top}" x2="{_ML}" y2="{bottom}"/>'
        f'<text class="label" x="{_ML + frame.width / 2}" y="{_H - 6}" text-anchor="middle">'
        f"{esc(x_label)}</text>"
    )
    if y_label:
        cy = frame.top + frame.height / 2
        out.append(
            f'<text class="label" x="13" y="{cy}" text-anchor="middle" '
            f'transform="rotate(-90 13 {cy})">{esc(y_label)}</text>'
        )
    out.append("</g>")
    return "".join(out)


def _draw(s: Series, frame: _Frame) -> str:
    """One series' shapes."""
    if s.kind == "band":
        return _draw_band(s, frame)
    if s.kind == "points":
        return _draw_points(s, frame)
    return _draw_line(s, frame)


def _draw_band(s: Series, frame: _Frame) -> str:
    """A filled area per run of finite edges: along the top, back along the bottom."""
    out = []
    for seg_hi, seg_lo in _band_segments(s):
        pts = [frame.xy(p) for p in seg_hi] + [frame.xy(p) for p in reversed(seg_lo)]
        out.append(
            f'<path class="band" d="M{" L".join(pts)} Z" fill="{s.color}">'
            f"<title>{esc(s.label)}</title></path>"
        )
    return "".join(out)


def _draw_points(s: Series, frame: _Frame) -> str:
    """A marker per finite point (with its value as tooltip), joined by a dashed line."""
    flat = [p for seg in _segments(s.xs, s.ys) for p in seg]
    out = []
    if len(flat) > 1:
        out.append(
            f'<path class="series dashed" d="M{" L".join(frame.xy(p) for p in flat)}" '
            f'stroke="{s.color}"><title>{esc(s.label)}</title></path>'
        )
    for x, y in flat:
        out.append(
            f'<circle class="marker" cx="{frame.sx(x):.1f}" cy="{frame.sy(y):.1f}" r="3.6" '
            f'fill="{s.color}"><title>{esc(s.label)} at step {x:g}: '
            f"{format_value(y, s.fmt)}</title></circle>"
        )
    return "".join(out)


def _draw_line(s: Series, frame: _Frame) -> str:
    """A path per run of finite points; a lone point is a small dot."""
    cls = "series dashed" if s.dashed else "series"
    out = []
    for seg in _segments(s.xs, s.ys):
        if len(seg) == 1:
            x, y = seg[0]
            out.append(
                f'<circle cx="{frame.sx(x):.1f}" cy="{frame.sy(y):.1f}" r="2.5" fill="{s.color}"/>'
            )
            continue
        out.append(
            f'<path class="{cls}" d="M{" L".join(frame.xy(p) for p in seg)}" '
            f'stroke="{s.color}"><title>{esc(s.label)}</title></path>'
        )
    return "".join(out)


def _segments(xs: Sequence[float], ys: Sequence[float]) -> list[list[Point]]:
    """Runs of consecutive finite points."""
    segs: list[list[Point]] = []
    cur: list[Point] = []
    for x, y in zip(xs, ys, strict=False):
        if finite(x) and finite(y):
            cur.append((float(x), float(y)))
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return segs


def _band_segments(s: Series) -> list[tuple[list[Point], list[Point]]]:
    """Runs of consecutive steps where both band edges are finite: (top, bottom) points."""
    segs = []
    hi_pts: list[Point] = []
    lo_pts: list[Point] = []
    for x, lo, hi in zip(s.xs, s.ys_low, s.ys_high, strict=False):
        if finite(x) and finite(lo) and finite(hi):
            hi_pts.append((float(x), float(hi)))
            lo_pts.append((float(x), float(lo)))
        elif hi_pts:
            segs.append((hi_pts, lo_pts))
            hi_pts, lo_pts = [], []
    if hi_pts:
        segs.append((hi_pts, lo_pts))
    return segs


def _hover_values(series: Sequence[Series]) -> dict[float, list[str]]:
    """Per step, the ``label: value`` line of every hoverable series with a value there."""
    values: dict[float, list[str]] = {}
    for s in series:
        if not s.hover:
            continue
        if s.kind == "band":
            for x, lo, hi in zip(s.xs, s.ys_low, s.ys_high, strict=False):
                if finite(x) and finite(lo) and finite(hi):
                    values.setdefault(float(x), []).append(
                        f"{s.label}: {format_value(lo, s.fmt)} to {format_value(hi, s.fmt)}"
                    )
            continue
        for x, y in zip(s.xs, s.ys, strict=False):
            if finite(x) and finite(y):
                values.setdefault(float(x), []).append(f"{s.label}: {format_value(y, s.fmt)}")
    return values


def _hover_columns(series: Sequence[Series], frame: _Frame) -> str:
    """Transparent full-height columns, one per step, whose tooltip lists every value there."""
    values = _hover_values(series)
    xs = sorted(values)
    if not xs:
        return ""
    stride = max(1, math.ceil(len(xs) / _MAX_HOVER))
    shown = xs[::stride]
    sx = frame.sx
    parts = ['<g class="hover">']
    for i, x in enumerate(shown):
        left = (sx(shown[i - 1]) + sx(x)) / 2 if i > 0 else sx(x) - 4
        right = (sx(x) + sx(shown[i + 1])) / 2 if i + 1 < len(shown) else sx(x) + 4
        tip = "\n".join([f"step {x:g}", *values[x]])
        parts.append(
            f'<rect x="{left:.1f}" y="{frame.top}" width="{max(1.0, right - left):.1f}" '
            f'height="{frame.height}"><title>{esc(tip)}</title></rect>'
        )
    parts.append("</g>")
    return "".join(parts)
