"""Reporting stage: one self-contained HTML page about a run directory.

``python -m engine report RUN_DIR [--out FILE]`` reads ``metrics.jsonl``, ``summary.json``,
``config.json`` and, when present, ``comparison.json`` (from ``python -m engine compare
--out RUN_DIR``), and writes ``RUN_DIR/report.html``: the run's summary, a convergence verdict
(:func:`engine.telemetry.monitor.convergence`), plots over steps and the A/B table.

The page needs nothing but a browser: no network, no script, no library. Plots are inline SVG
drawn here (axes with "nice" ticks, titles, legends), styled by a small inline stylesheet;
hovering a step shows every plotted value at that step (SVG ``<title>`` tooltips). Plots whose
metrics a run did not record are listed as absent instead of drawn empty.

Example::

    path = write_report("runs/latest")          # runs/latest/report.html
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import DataError
from ..telemetry.events import read_jsonl
from ..telemetry.monitor import convergence, describe

__all__ = (
    "RunData",
    "Series",
    "add_report_parser",
    "line_chart",
    "load_run",
    "nice_ticks",
    "render_report",
    "report_command",
    "tick_label",
    "write_report",
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
_W, _H = 560, 300  # SVG viewBox of one chart
_ML, _MR, _MT, _MB = 62, 18, 58, 44  # margins: left (y ticks), right, top (title+legend), bottom
_MAX_HOVER = 240  # at most this many hover columns per chart
_LEGEND_ROW = 15  # height of one legend row
_CHAR_W = 6.2  # estimated width of one legend character at 11px


@dataclass(slots=True)
class Series:
    """One thing drawn in a :func:`line_chart`.

    ``kind`` is ``line`` (NaN values break it), ``points`` (markers, optionally joined by a
    dashed line), or ``band`` (filled between ``ys_low`` and ``ys_high``).
    """

    label: str
    xs: Sequence[float]
    ys: Sequence[float] = ()
    color: str = PALETTE[0]
    kind: str = "line"
    ys_low: Sequence[float] = ()
    ys_high: Sequence[float] = ()
    dashed: bool = False
    fmt: str = ".4g"
    hover: bool = True
    """Whether the value shows in the per-step hover tooltip."""
    extra: dict[str, Any] = field(default_factory=dict)


# ============================================================================ axes


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def nice_ticks(lo: float, hi: float, target: int = 5, *, integer: bool = False) -> list[float]:
    """Reporting: 'nice' tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (_finite(lo) and _finite(hi)):
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
    """Reporting: a tick's text, with as many decimals as the tick step needs."""
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


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt_value(v: Any, fmt: str = ".4g") -> str:
    if not _finite(v):
        return "n/a"
    return format(v, fmt)


def _segments(xs: Sequence[float], ys: Sequence[float]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive finite points."""
    segs: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = []
    for x, y in zip(xs, ys, strict=False):
        if _finite(x) and _finite(y):
            cur.append((float(x), float(y)))
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return segs


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
    """Reporting: an inline SVG line chart (title, legend, ticks, axis labels, hover tooltips).

    Args:
        title: drawn at the top.
        series: lines, point series and bands; each gets a legend entry.
        x_label, y_label: axis labels.
        y_zero: include 0 in the y range (rates, counts).
        note: a short grey line under the plot area's top-left (e.g. "no errors").
        chart_id: ``id`` of the ``<svg>`` element.
    """
    xs_all = [float(x) for s in series for x in s.xs if _finite(x)]
    ys_all = [
        float(y) for s in series for seq in (s.ys, s.ys_low, s.ys_high) for y in seq if _finite(y)
    ]
    if y_zero:
        ys_all.append(0.0)
    x_ticks = nice_ticks(min(xs_all, default=0.0), max(xs_all, default=1.0), 6, integer=True)
    y_ticks = nice_ticks(min(ys_all, default=0.0), max(ys_all, default=1.0), 5)
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]
    legend, rows = _legend(series)
    mt = _MT + _LEGEND_ROW * (rows - 1)  # top margin grows with the legend
    pw, ph = _W - _ML - _MR, _H - mt - _MB  # plot area

    def sx(x: float) -> float:
        return _ML + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + ph - (y - y0) / (y1 - y0) * ph

    out: list[str] = [
        f'<svg class="chart" id="{_esc(chart_id)}" viewBox="0 0 {_W} {_H}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_esc(title)}">',
        f'<text class="title" x="{_ML - 50}" y="20">{_esc(title)}</text>',
    ]
    out.append(legend)
    # grid and y ticks
    out.append('<g class="axis">')
    step_y = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line class="grid" x1="{_ML}" y1="{y:.1f}" x2="{_ML + pw}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{_ML - 7}" y="{y + 3.5:.1f}" text-anchor="end">'
            f"{_esc(tick_label(t, step_y))}</text>"
        )
    step_x = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for t in x_ticks:
        x = sx(t)
        out.append(
            f'<line class="tickmark" x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 5}"/>'
        )
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{mt + ph + 18}" text-anchor="middle">'
            f"{_esc(tick_label(t, step_x))}</text>"
        )
    out.append(
        f'<line class="frame" x1="{_ML}" y1="{mt + ph}" x2="{_ML + pw}" y2="{mt + ph}"/>'
        f'<line class="frame" x1="{_ML}" y1="{mt}" x2="{_ML}" y2="{mt + ph}"/>'
    )
    out.append(
        f'<text class="label" x="{_ML + pw / 2}" y="{_H - 6}" text-anchor="middle">'
        f"{_esc(x_label)}</text>"
    )
    if y_label:
        cy = mt + ph / 2
        out.append(
            f'<text class="label" x="13" y="{cy}" text-anchor="middle" '
            f'transform="rotate(-90 13 {cy})">{_esc(y_label)}</text>'
        )
    out.append("</g>")
    if note:
        out.append(f'<text class="note" x="{_ML + 8}" y="{mt + 14}">{_esc(note)}</text>')
    # data: bands first, then lines, then points
    order = {"band": 0, "line": 1, "points": 2}
    for s in sorted(series, key=lambda s: order.get(s.kind, 1)):
        if s.kind == "band":
            for seg_hi, seg_lo in _band_segments(s):
                pts = [f"{sx(x):.1f},{sy(y):.1f}" for x, y in seg_hi]
                pts += [f"{sx(x):.1f},{sy(y):.1f}" for x, y in reversed(seg_lo)]
                out.append(
                    f'<path class="band" d="M{" L".join(pts)} Z" fill="{s.color}">'
                    f"<title>{_esc(s.label)}</title></path>"
                )
        elif s.kind == "points":
            segs = _segments(s.xs, s.ys)
            flat = [p for seg in segs for p in seg]
            if len(flat) > 1:
                d = " L".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in flat)
                out.append(
                    f'<path class="series dashed" d="M{d}" stroke="{s.color}">'
                    f"<title>{_esc(s.label)}</title></path>"
                )
            for x, y in flat:
                out.append(
                    f'<circle class="marker" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.6" '
                    f'fill="{s.color}"><title>{_esc(s.label)} at step {x:g}: '
                    f"{_fmt_value(y, s.fmt)}</title></circle>"
                )
        else:
            cls = "series dashed" if s.dashed else "series"
            for seg in _segments(s.xs, s.ys):
                if len(seg) == 1:
                    x, y = seg[0]
                    out.append(
                        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{s.color}"/>'
                    )
                    continue
                d = " L".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in seg)
                out.append(
                    f'<path class="{cls}" d="M{d}" stroke="{s.color}">'
                    f"<title>{_esc(s.label)}</title></path>"
                )
    out.append(_hover_columns(series, sx, mt, ph))
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
        if s.kind == "band":
            swatch = (
                f'<rect x="{lx}" y="{cy - 4.5}" width="16" height="9" fill="{s.color}" '
                'fill-opacity="0.22"/>'
            )
        elif s.kind == "points":
            swatch = f'<circle cx="{lx + 8}" cy="{cy}" r="3.5" fill="{s.color}"/>'
        else:
            dash = ' stroke-dasharray="4 3"' if s.dashed else ""
            swatch = (
                f'<line x1="{lx}" y1="{cy}" x2="{lx + 16}" y2="{cy}" stroke="{s.color}" '
                f'stroke-width="2.2"{dash}/>'
            )
        parts.append(
            f'<g class="legend">{swatch}<text x="{lx + 21}" y="{cy + 4}">{_esc(s.label)}</text></g>'
        )
        lx += width
    return "".join(parts), row + 1


def _band_segments(
    s: Series,
) -> list[tuple[list[tuple[float, float]], list[tuple[float, float]]]]:
    segs = []
    hi_pts: list[tuple[float, float]] = []
    lo_pts: list[tuple[float, float]] = []
    for x, lo, hi in zip(s.xs, s.ys_low, s.ys_high, strict=False):
        if _finite(x) and _finite(lo) and _finite(hi):
            hi_pts.append((float(x), float(hi)))
            lo_pts.append((float(x), float(lo)))
        elif hi_pts:
            segs.append((hi_pts, lo_pts))
            hi_pts, lo_pts = [], []
    if hi_pts:
        segs.append((hi_pts, lo_pts))
    return segs


def _hover_columns(series: Sequence[Series], sx: Any, top: float, height: float) -> str:
    """Transparent full-height columns, one per step, whose tooltip lists every value there."""
    values: dict[float, list[str]] = {}
    for s in series:
        if not s.hover:
            continue
        if s.kind == "band":
            for x, lo, hi in zip(s.xs, s.ys_low, s.ys_high, strict=False):
                if _finite(x) and _finite(lo) and _finite(hi):
                    values.setdefault(float(x), []).append(
                        f"{s.label}: {_fmt_value(lo, s.fmt)} to {_fmt_value(hi, s.fmt)}"
                    )
            continue
        for x, y in zip(s.xs, s.ys, strict=False):
            if _finite(x) and _finite(y):
                values.setdefault(float(x), []).append(f"{s.label}: {_fmt_value(y, s.fmt)}")
    xs = sorted(values)
    if not xs:
        return ""
    stride = max(1, math.ceil(len(xs) / _MAX_HOVER))
    shown = xs[::stride]
    parts = ['<g class="hover">']
    for i, x in enumerate(shown):
        left = (sx(shown[i - 1]) + sx(x)) / 2 if i > 0 else sx(x) - 4
        right = (sx(x) + sx(shown[i + 1])) / 2 if i + 1 < len(shown) else sx(x) + 4
        tip = "\n".join([f"step {x:g}", *values[x]])
        parts.append(
            f'<rect x="{left:.1f}" y="{top}" width="{max(1.0, right - left):.1f}" '
            f'height="{height}"><title>{_esc(tip)}</title></rect>'
        )
    parts.append("</g>")
    return "".join(parts)


# ============================================================================ run data


def _load_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc}", path=str(path)) from None


@dataclass(slots=True)
class RunData:
    """What a report shows, read from a run directory."""

    run_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    config: dict[str, Any] | None
    comparison: dict[str, Any] | None

    def column(self, key: str, missing: float = math.nan) -> list[float]:
        """Values of ``key`` per metrics row; ``missing`` where absent, NaN where null."""
        return [
            float(r[key]) if _finite(r.get(key)) else (missing if key not in r else math.nan)
            for r in self.rows
        ]

    def has(self, key: str) -> bool:
        """Whether any row has a finite value for ``key``."""
        return any(_finite(r.get(key)) for r in self.rows)

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` in any row, in a natural order (numeric suffixes)."""
        found = {k for r in self.rows for k in r if k.startswith(prefix)}

        def key(k: str) -> tuple[int, Any]:
            rest = k[len(prefix) :]
            return (0, int(rest)) if rest.isdigit() else (1, rest)

        return sorted(found, key=key)


def load_run(run_dir: str | Path) -> RunData:
    """Reporting: read a run directory (blocking file I/O).

    Raises:
        DataError: the directory has neither ``metrics.jsonl`` nor ``summary.json``, or a
            file is not valid JSON.
    """
    d = Path(run_dir)
    mpath = d / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if mpath.is_file():
        try:
            rows = list(read_jsonl(mpath))
        except orjson.JSONDecodeError as exc:
            raise DataError(f"invalid JSON line: {exc}", path=str(mpath)) from None
    summary = _load_json(d / "summary.json")
    if not rows and summary is None:
        raise DataError("not a run directory: no metrics.jsonl or summary.json", path=str(d))
    rows.sort(key=lambda r: r.get("step", 0))
    return RunData(
        run_dir=d,
        rows=rows,
        summary=summary,
        config=_load_json(d / "config.json"),
        comparison=_load_json(d / "comparison.json"),
    )


# ============================================================================ page


_CSS = """
:root{--ink:#1f2933;--muted:#66788a;--line:#e3e8ee;--bg:#f5f7fa;--card:#fff;--good:#2f8f4e;
--bad:#c0392b}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:28px 24px 48px}
header h1{font-size:22px;margin:0 0 4px}
header p{margin:0;color:var(--muted)}
h2{font-size:17px;margin:30px 0 12px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.card .s{color:var(--muted);font-size:12px;margin-top:2px}
.verdict{background:var(--card);border:1px solid var(--line);border-left:5px solid var(--muted);
border-radius:10px;padding:12px 16px;margin-top:12px}
.verdict.improving{border-left-color:var(--good)}.verdict.declining{border-left-color:var(--bad)}
.verdict.plateaued{border-left-color:#d4a017}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:8px 8px 4px}
figcaption{color:var(--muted);font-size:12px;padding:0 8px 6px}
svg.chart{width:100%;height:auto;display:block}
svg .title{font-size:14px;font-weight:600;fill:var(--ink)}
svg .legend text{font-size:11px;fill:#3e4c59}
svg .tick{font-size:10.5px;fill:var(--muted);font-variant-numeric:tabular-nums}
svg .label{font-size:11px;fill:var(--muted)}
svg .note{font-size:11px;fill:var(--muted);font-style:italic}
svg .grid{stroke:var(--line);stroke-width:1}
svg .frame,svg .tickmark{stroke:#9aa5b1;stroke-width:1}
svg .series{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round}
svg .series.dashed{stroke-dasharray:5 4;stroke-width:1.6}
svg .band{fill-opacity:.18;stroke:none}
svg .marker{stroke:#fff;stroke-width:1.2}
svg .hover rect{fill:#1f2933;fill-opacity:0}
svg .hover rect:hover{fill-opacity:.07}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);
border-radius:10px;overflow:hidden;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#eef2f6;font-weight:600;font-size:12px;color:#3e4c59}
td:first-child,th:first-child{text-align:left}
tr.sig-up td.diff{color:var(--good);font-weight:600}
tr.sig-down td.diff{color:var(--bad);font-weight:600}
.kv td{text-align:left;white-space:normal}.kv td:first-child{color:var(--muted);width:32%}
.absent{color:var(--muted);font-size:13px;margin-top:10px}
details{margin-top:14px}summary{cursor:pointer;color:#3e4c59}
pre{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;
overflow:auto;font-size:12px}
.samples td{text-align:left;white-space:normal;font-family:ui-monospace,monospace;font-size:12px}
"""


def _num(v: Any, fmt: str = ".4g") -> str:
    return _fmt_value(v, fmt) if _finite(v) else ("n/a" if v is None else _esc(v))


def _card(key: str, value: str, sub: str = "") -> str:
    s = f'<div class="s">{sub}</div>' if sub else ""
    return f'<div class="card"><div class="k">{key}</div><div class="v">{value}</div>{s}</div>'


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from _flatten(v, key)
        else:
            yield key, v


def _summary_section(run: RunData, conv: dict[str, Any]) -> str:
    s = run.summary or {}
    steps = s.get("steps_done", len(run.rows))
    wall = s.get("wall_time")
    cards = [
        _card("steps", _esc(steps), _esc(f"stop: {s.get('stop_reason', 'n/a')}")),
        _card(
            "train reward",
            f"{_num(s.get('reward_first'), '.3f')} &rarr; {_num(s.get('reward_last'), '.3f')}",
            "first 3 steps &rarr; last 3 steps",
        ),
        _card(
            "eval reward",
            f"{_num(s.get('eval_before'), '.3f')} &rarr; {_num(s.get('eval_after'), '.3f')}",
            f"greedy, held-out; best {_num(s.get('best_eval'), '.3f')}",
        ),
        _card(
            "wall time",
            f"{_num(wall, '.1f')} s" if _finite(wall) else "n/a",
            _esc(f"{s.get('requests', 'n/a')} requests"),
        ),
        _card("policy", _esc(s.get("policy", "n/a")), _esc(f"{len(run.rows)} metric rows")),
    ]
    trend = conv.get("trend", "insufficient data")
    explain = {
        "improving": "the reward is still rising: more steps are likely to help.",
        "declining": "the reward is falling over the last steps: check the learning rate and KL.",
        "plateaued": "no trend, and any change is small next to the reward level.",
        "unclear": "no significant trend, but too noisy to call it a plateau.",
    }.get(trend, "too few steps to fit a trend.")
    verdict = (
        f'<div class="verdict {_esc(trend.split()[0])}"><b>Convergence:</b> '
        f"{_esc(describe(conv))} &mdash; {_esc(explain)}"
        f'<div class="s" style="color:var(--muted);font-size:12px">Least-squares slope of the '
        f"train reward over the last {_esc(conv.get('window'))} steps with a t-distribution "
        "interval (engine.telemetry.monitor.convergence), computed from metrics.jsonl.</div></div>"
    )
    rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_num(v) if _finite(v) else _esc(v)}</td></tr>"
        for k, v in _flatten(s)
    )
    table = (
        f'<details><summary>summary.json</summary><table class="kv">{rows}</table></details>'
        if s
        else '<p class="absent">No summary.json (the run did not finish).</p>'
    )
    return f'<h2>Summary</h2><div class="cards">{"".join(cards)}</div>{verdict}{table}'


@dataclass(slots=True)
class _Chart:
    title: str
    caption: str
    keys: tuple[str, ...]
    svg: str


def _charts(run: RunData, conv: dict[str, Any]) -> tuple[list[_Chart], list[str]]:
    """The plots this run has data for, and the names of those it has none for."""
    steps = run.column("step")
    charts: list[_Chart] = []
    absent: list[str] = []

    def add(
        title: str,
        caption: str,
        series: list[Series],
        keys: tuple[str, ...],
        **kw: Any,
    ) -> None:
        if not any(run.has(k) for k in keys):
            absent.append(title)
            return
        cid = "chart-" + "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
        charts.append(_Chart(title, caption, keys, line_chart(title, series, chart_id=cid, **kw)))

    def line(key: str, label: str | None = None, color: int = 0, **kw: Any) -> Series:
        return Series(label or key, steps, run.column(key), PALETTE[color % len(PALETTE)], **kw)

    # reward: mean, +-std band, eval reward, fitted trend over the convergence window
    reward = run.column("reward")
    std = run.column("reward_std")
    rs = [
        Series(
            "± reward_std",
            steps,
            ys_low=[r - s for r, s in zip(reward, std, strict=True)],
            ys_high=[r + s for r, s in zip(reward, std, strict=True)],
            color=PALETTE[0],
            kind="band",
        ),
        line("reward", "train reward (mean)", 0),
    ]
    if run.has("eval/reward"):
        rs.append(line("eval/reward", "eval reward (greedy)", 1, kind="points"))
    if conv.get("slope") is not None and run.rows:
        start = int(conv["start"])
        fx = steps[start:]
        fy = [conv["intercept"] + conv["slope"] * i for i in range(len(fx))]
        rs.append(
            Series(f"trend (last {len(fx)} steps)", fx, fy, "#1f2933", dashed=True, hover=False)
        )
    add(
        "Reward",
        "Mean reward of each step's rollouts, shaded ± the mean within-group std (the spread "
        "GRPO's advantages come from); eval = greedy decoding on held-out prompts.",
        rs,
        ("reward",),
        y_label="reward",
    )
    add(
        "Policy loss",
        "The clipped surrogate (GRPO has no value function, so there is no value loss).",
        [line("policy_loss", "policy loss", 4)],
        ("policy_loss",),
    )
    add(
        "KL to the reference policy",
        "Mean per-token k3 estimate of KL(policy || initial policy).",
        [line("kl", "kl (k3)", 3)],
        ("kl",),
        y_zero=True,
    )
    add(
        "Entropy",
        "Mean per-token entropy of the policy's next-token distribution (nats).",
        [line("entropy", "entropy", 5)],
        ("entropy",),
        y_label="nats",
    )
    add(
        "Clip ratio",
        "Share of tokens whose probability ratio hit the clip range (low: ratio < 1 - ε with "
        "A < 0; high: ratio > 1 + ε with A > 0).",
        [
            line("clip_ratio", "all", 0),
            line("clip_ratio/low", "low", 2, dashed=True),
            line("clip_ratio/high", "high", 3, dashed=True),
        ],
        ("clip_ratio",),
        y_zero=True,
    )
    add(
        "Learning rate",
        "Learning rate of each step (warm-up and schedule).",
        [line("lr", "lr", 6)],
        ("lr",),
        y_zero=True,
    )
    add(
        "Gradient norm",
        "Global gradient norm before clipping.",
        [line("grad_norm", "grad norm", 7)],
        ("grad_norm",),
        y_zero=True,
    )
    add(
        "Groups without signal",
        "Share of groups whose rewards all tie: their advantages are 0, they teach nothing.",
        [line("frac_reward_zero_std", "zero-std groups", 9)],
        ("frac_reward_zero_std",),
        y_zero=True,
    )
    add(
        "Tokens per step",
        "Prompt and completion tokens of the step's requests (generation and judges).",
        [line("tokens/prompt", "prompt", 0), line("tokens/completion", "completion", 1)],
        ("tokens/prompt", "tokens/completion"),
        y_zero=True,
        y_label="tokens",
    )
    lat_keys = ("latency/p50", "latency/p95", "latency/p99")
    lat_max = max((v for k in lat_keys for v in run.column(k) if _finite(v)), default=0.0)
    scale, unit = (1000.0, "ms") if lat_max < 1.0 else (1.0, "s")
    add(
        "Request latency",
        "Percentiles of request latency within each step.",
        [
            Series(
                k.split("/")[1],
                steps,
                [v * scale for v in run.column(k)],
                PALETTE[i],
                fmt=".3g",
            )
            for i, k in enumerate(lat_keys)
        ],
        lat_keys,
        y_zero=True,
        y_label=unit,
    )
    err_keys = run.keys_with_prefix("errors/")
    if err_keys:
        add(
            "Errors by class",
            "Failed requests per step, by error class (telemetry's errors/<class> counts).",
            [  # a step without errors of a class has no key for it: 0, not missing
                Series(k.split("/", 1)[1], steps, run.column(k, 0.0), PALETTE[(i + 3) % 10])
                for i, k in enumerate(err_keys)
            ],
            tuple(err_keys),
            y_zero=True,
            y_label="requests",
        )
    elif run.has("requests/errors"):
        add(
            "Errors by class",
            "Failed requests per step, by error class.",
            [line("requests/errors", "errors", 3)],
            ("requests/errors",),
            y_zero=True,
            note="no failed requests in this run",
            y_label="requests",
        )
    else:
        absent.append("Errors by class")
    cand_keys = run.keys_with_prefix("candidate_prob/")
    if cand_keys:
        add(
            "Prompt candidates",
            "Probability of each prompt candidate under the prompt policy.",
            [line(k, f"#{k.split('/', 1)[1]}", i) for i, k in enumerate(cand_keys)],
            tuple(cand_keys),
            y_zero=True,
            y_label="probability",
        )
    elif run.has("prompt/best_prob"):  # no per-candidate keys: the most probable one only
        add(
            "Prompt candidates",
            "Probability of the most probable prompt candidate (prompt/best_prob); the run "
            "logged no per-candidate candidate_prob/<id> keys.",
            [line("prompt/best_prob", "best candidate", 0)],
            ("prompt/best_prob",),
            y_zero=True,
            y_label="probability",
        )
    else:
        absent.append("Prompt candidates (prompt policy only)")
    if run.has("prompt/candidates"):
        add(
            "Candidate pool",
            "Live prompt candidates after each step (growth adds, pruning retires).",
            [line("prompt/candidates", "candidates", 4)],
            ("prompt/candidates",),
            y_zero=True,
        )
    return charts, absent


def _comparison_section(cmp: Mapping[str, Any] | None) -> str:
    if not cmp:
        return (
            '<h2>A/B comparison</h2><p class="absent">No comparison.json. Make one with '
            "<code>python -m engine compare --a RUN#ref --b RUN --out RUN</code>.</p>"
        )
    pct = round(float(cmp.get("confidence", 0.95)) * 100)
    head = (
        "<tr><th>metric</th><th>A</th><th>B</th><th>B &minus; A</th>"
        f"<th>{pct}% CI</th><th>p</th><th>win / tie / loss</th><th>improvement</th><th>n</th></tr>"
    )
    body = []
    for name, m in dict(cmp.get("metrics", {})).items():
        p = m.get("p_value")
        diff = m.get("diff")
        sig = _finite(p) and p < 0.05
        cls = ("sig-up" if (diff or 0) > 0 else "sig-down") if sig else ""
        imp = m.get("improvement")
        body.append(
            f'<tr class="{cls}"><td>{_esc(name)}</td><td>{_num(m.get("mean_a"), ".4f")}</td>'
            f"<td>{_num(m.get('mean_b'), '.4f')}</td>"
            f'<td class="diff">{_num(diff, "+.4f")}</td>'
            f"<td>[{_num(m.get('ci_low'), '+.4f')}, {_num(m.get('ci_high'), '+.4f')}]</td>"
            f"<td>{_num(p, '.4f') if not _finite(p) or p >= 1e-4 else '&lt;1e-4'}"
            f"{' *' if sig else ''}</td>"
            f"<td>{_num(m.get('win'), '.0%')} / {_num(m.get('tie'), '.0%')} / "
            f"{_num(m.get('loss'), '.0%')}</td>"
            f"<td>{_num(imp, '+.1%') if imp is not None else 'n/a'}</td>"
            f"<td>{_esc(m.get('n', ''))}</td></tr>"
        )
    samples = cmp.get("samples") or []
    sample_rows = "".join(
        f"<tr><td>{_esc(x.get('input', ''))}</td><td>{_esc(x.get('a', ''))}</td>"
        f"<td>{_esc(x.get('b', ''))}</td></tr>"
        for x in samples
    )
    sample_table = (
        f'<details><summary>sample outputs</summary><table class="samples"><tr><th>input</th>'
        f"<th>A</th><th>B</th></tr>{sample_rows}</table></details>"
        if samples
        else ""
    )
    fails = cmp.get("failures") or []
    failed_scores = sum(
        int(v) for per in dict(cmp.get("score_failures") or {}).values() for v in per.values()
    )
    notes = []
    if fails:
        notes.append(f"{len(fails)} failed generations (inputs dropped)")
    if failed_scores:
        notes.append(f"{failed_scores} failed score calls (samples dropped)")
    fail_note = f'<p class="absent">{_esc("; ".join(notes))}.</p>' if notes else ""
    return (
        "<h2>A/B comparison</h2>"
        f"<p>A = <b>{_esc(cmp.get('model_a'))}</b>, B = <b>{_esc(cmp.get('model_b'))}</b>; "
        f"{_esc(cmp.get('n_inputs'))} inputs &times; {_esc(cmp.get('samples_per_input'))} "
        f"samples per model, seed {_esc(cmp.get('seed'))}. Differences are B &minus; A paired "
        f"per input; {pct}% bootstrap interval; two-sided sign-flip permutation p-value "
        "(* p &lt; 0.05).</p>"
        f"<table>{head}{''.join(body)}</table>{fail_note}{sample_table}"
    )


def render_report(run: RunData) -> str:
    """Reporting: the whole HTML page for a loaded run."""
    rewards = run.column("reward")
    conv = convergence(rewards) if rewards else convergence([])
    charts, absent = _charts(run, conv)
    figures = "".join(
        f"<figure>{c.svg}<figcaption>{_esc(c.caption)}</figcaption></figure>" for c in charts
    )
    absent_note = (
        f'<p class="absent">Not recorded in this run: {_esc(", ".join(absent))}.</p>'
        if absent
        else ""
    )
    config = (
        "<details><summary>config.json</summary><pre>"
        f"{_esc(orjson.dumps(run.config, option=orjson.OPT_INDENT_2).decode())}</pre></details>"
        if run.config
        else ""
    )
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"GRPO run report: {run.run_dir.name or run.run_dir}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(run.run_dir)} &middot; generated {now} by "
        "python -m engine report &middot; hover a plot for the values at each step</p></header>"
        f"{_summary_section(run, conv)}"
        f'<h2>Training</h2><div class="grid">{figures}</div>{absent_note}'
        f"{_comparison_section(run.comparison)}{config}"
        "</main></body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Reporting: write the HTML report of ``run_dir`` to ``out`` (default RUN_DIR/report.html).

    Blocking file I/O; written to a temporary file and renamed into place.

    Raises:
        DataError: not a run directory, or one of its JSON files is invalid.
    """
    run = load_run(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(run), encoding="utf-8")
    tmp.replace(path)
    return path


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Reporting CLI: add the ``report`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write one self-contained HTML file (inline SVG plots, no network, no "
        "script) with the run's summary, convergence, training plots and, when RUN_DIR holds "
        "comparison.json, the A/B table.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/report.html)")
    return p


def report_command(args: argparse.Namespace) -> int:
    """Reporting CLI: run ``python -m engine report``; returns the exit status.

    Synchronous on purpose: it only reads a few files and writes one, with no event loop.
    """
    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
