"""The report's step timeline, drawn: where the time of each step went.

:func:`timeline_section` is the report's "Step timeline" section (:mod:`.timeline` reads the
data): a stacked bar per step of the learner's time (waiting for rollouts, update, the
policy's after-update work, evaluation, checkpoint), a table of the slowest steps, and for a
few steps a Gantt chart of every request attempt of its batch (queue wait for a permit, then
the request on the wire; generation and judge apart), each group's admission wait, the
batch's rollouts and the learner's phases. Inline SVG with ``<title>`` tooltips and in-page
links from the bars and the table to the detailed steps: no script. Every text from the
events is escaped.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence

from .charts import esc, nice_ticks, tick_label
from .timeline import LEARNER_PHASES, Span, StepTimeline, Timeline

__all__ = ("COLORS", "overview_chart", "step_chart", "timeline_section")

COLORS = {
    "waiting": "#c9d2dc",
    "update": "#7a5cb5",
    "after_update": "#2a9d9f",
    "eval": "#3f9e5a",
    "checkpoint": "#8c6d5c",
    "other": "#e6e0d4",
    "rollouts": "#b9cbe6",
    "admission": "#e3c26b",
    "queue": "#9aa5b1",
    "generation": "#3b6fb6",
    "judge": "#e8833a",
}
"""Fill of each span kind; other request kinds are slate."""

_OTHER = "#6c7a89"
_ERROR = "#c0392b"
_LABELS = {
    "waiting": "waiting for rollouts",
    "after_update": "after update",
    "queue": "queue wait (permit)",
    "admission": "admission wait",
    "other": "other (metrics, callbacks)",
}
_W = 1180
_ML, _MR = 96, 16
_ROW = 11
_MAX_ROWS = 72
"""Rows of one detailed chart beyond which spans share the last row."""


def _label(kind: str) -> str:
    return _LABELS.get(kind, kind.replace("_", " "))


def _color(kind: str) -> str:
    return COLORS.get(kind, _OTHER)


def _secs(v: float) -> str:
    return f"{v:.3f} s" if math.isfinite(v) else "n/a"


def _anchor(step: int) -> str:
    return f"timeline-step-{step}"


def _legend(kinds: Sequence[str], y: float) -> str:
    x, out = float(_ML), []
    for k in kinds:
        out.append(
            f'<g class="legend"><rect x="{x:.0f}" y="{y - 8:.0f}" width="12" height="10" '
            f'fill="{_color(k)}"/><text x="{x + 16:.0f}" y="{y + 1:.0f}">{esc(_label(k))}'
            "</text></g>"
        )
        x += 16 + 6.2 * len(_label(k)) + 16
    return "".join(out)


_Scale = Callable[[float], float]


def _x_axis(ticks: Sequence[float], sx: _Scale, y0: float, y1: float, label: str) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out = []
    for t in ticks:
        x = sx(t)
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}"/>'
            f'<text class="tick" x="{x:.1f}" y="{y1 + 14:.1f}" text-anchor="middle">'
            f"{esc(tick_label(t, step))}</text>"
        )
    mid = _ML + (_W - _ML - _MR) / 2
    out.append(
        f'<text class="label" x="{mid:.0f}" y="{y1 + 30:.1f}" text-anchor="middle">'
        f"{esc(label)}</text>"
    )
    return "".join(out)


# ============================================================================ overview


def _stack(st: StepTimeline) -> list[tuple[str, float]]:
    """The learner's time of a step by part, in drawing order (bottom first)."""
    parts = [("waiting", st.waiting)] + [(p, st.phases.get(p, 0.0)) for p in LEARNER_PHASES]
    parts.append(("other", st.other))
    return [(k, v) for k, v in parts if v > 0]


def overview_chart(tl: Timeline, detailed: Sequence[int] = ()) -> str:
    """Stacked bars of each step's learner time; detailed steps link to their chart."""
    steps = [s for s in tl.steps if math.isfinite(s.duration)]
    height, top, bottom = 290, 52, 246
    y_ticks = nice_ticks(0.0, max((s.duration for s in steps), default=1.0) or 1.0, 5)
    x_ticks = nice_ticks(min((s.step for s in steps), default=0), max(
        (s.step for s in steps), default=1), 8, integer=True)  # fmt: skip
    x0, x1 = x_ticks[0] - 0.5, x_ticks[-1] + 0.5
    pw = _W - _ML - _MR

    def sx(x: float) -> float:
        return _ML + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return bottom - y / y_ticks[-1] * (bottom - top)

    bar = max(0.6, 0.8 * pw / (x1 - x0))
    out = [
        f'<svg class="chart timeline" id="timeline-overview" viewBox="0 0 {_W} {height}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="time per step">',
        '<text class="title" x="12" y="20">Time per step, as the learner spent it</text>',
        _legend(["waiting", *LEARNER_PHASES, "other"], 40),
    ]
    ystep = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for t in y_ticks:
        out.append(
            f'<line class="grid" x1="{_ML}" y1="{sy(t):.1f}" x2="{_W - _MR}" y2="{sy(t):.1f}"/>'
            f'<text class="tick" x="{_ML - 7}" y="{sy(t) + 3.5:.1f}" text-anchor="end">'
            f"{esc(tick_label(t, ystep))}</text>"
        )
    out.append(
        f'<text class="label" x="14" y="{(top + bottom) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + bottom) / 2:.0f})">seconds</text>'
    )
    out.append(_x_axis(x_ticks, sx, bottom, bottom, "step"))
    linked = set(detailed)
    for st in steps:
        out.append(_bar(st, sx(st.step) - bar / 2, bar, sy, st.step in linked))
    out.append("</svg>")
    return "".join(out)


def _bar(st: StepTimeline, x: float, w: float, sy: _Scale, linked: bool) -> str:
    tip = f"step {st.step}: {_secs(st.duration)}" + "".join(
        f"\n{_label(k)} {_secs(v)}" for k, v in _stack(st)
    )
    level, rects = 0.0, []
    for kind, v in _stack(st):
        y_top, y_bot = sy(level + v), sy(level)
        rects.append(
            f'<rect class="seg seg-{esc(kind)}" x="{x:.2f}" y="{y_top:.2f}" width="{w:.2f}" '
            f'height="{max(0.0, y_bot - y_top):.2f}" fill="{_color(kind)}"/>'
        )
        level += v
    body = f'<g class="bar"><title>{esc(tip)}</title>{"".join(rects)}</g>'
    return f'<a href="#{_anchor(st.step)}">{body}</a>' if linked else body


# ============================================================================ one step


def _rows(spans: Sequence[Span]) -> tuple[dict[int, int], list[str], int]:
    """A row per span: ``learner`` and ``batch`` first, then each group's spans packed into
    as few rows as do not overlap, then ``other``. Returns (row of each span index, row
    labels, spans that had to share the last row)."""
    by_row: dict[str, list[int]] = {}
    for i, s in enumerate(spans):
        by_row.setdefault(s.row, []).append(i)
    groups = sorted(set(by_row) - {"learner", "batch", "other"}, key=_group_key)
    where: dict[int, int] = {}
    labels: list[str] = []
    crowded = 0
    for name in ["learner", "batch", *groups, "other"]:
        mine = by_row.get(name)
        if not mine:
            continue
        ends: list[float] = []  # the end of the last span in each of this row's lanes
        queued: dict[float, int] = {}  # a queue wait's end -> its lane: its request follows
        base = len(labels)
        for i in mine:
            s = spans[i]
            lane = queued.pop(s.start, -1) if s.kind != "queue" else -1
            if lane < 0:
                lane = next((j for j, e in enumerate(ends) if e <= s.start), len(ends))
            if lane == len(ends):
                if base + lane >= _MAX_ROWS:
                    lane, crowded = max(0, _MAX_ROWS - 1 - base), crowded + 1
                if lane == len(ends):
                    ends.append(s.end)
                    labels.append(name if lane == 0 else "")
            ends[lane] = max(ends[lane], s.end)
            where[i] = base + lane
            if s.kind == "queue":
                queued[s.end] = lane
    return where, labels, crowded


def _group_key(gid: str) -> tuple[int, int | str]:
    _, _, tail = gid.partition("-")
    return (0, int(tail)) if tail.isdigit() else (1, gid)


def step_chart(st: StepTimeline, spans: Sequence[Span], dropped: int = 0) -> str:
    """A Gantt chart of one step: a row per group (its requests' queue waits and time on
    the wire, its admission waits), the batch's rollouts and the learner's phases."""
    where, labels, crowded = _rows(spans)
    lo = min([st.start, *(s.start for s in spans)], default=0.0)
    hi = max([st.end, *(s.end for s in spans)], default=lo + 1.0)
    lo = lo if math.isfinite(lo) else min((s.start for s in spans), default=0.0)
    hi = hi if math.isfinite(hi) and hi > lo else lo + 1.0
    top = 76
    bottom = top + max(1, len(labels)) * _ROW + 4
    ticks = nice_ticks(0.0, hi - lo, 8)
    pw = _W - _ML - _MR

    def sx(t: float) -> float:
        return _ML + t / ticks[-1] * pw

    out = [
        f'<svg class="chart timeline" id="{_anchor(st.step)}" viewBox="0 0 {_W} '
        f'{bottom + 40}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="timeline of step {st.step}">',
        f'<text class="title" x="12" y="20">Step {st.step}: {esc(_secs(st.duration))}</text>',
        f'<text class="note" x="12" y="38">{esc(_step_note(st, dropped, crowded))}</text>',
        _legend([k for k in _KIND_ORDER if any(s.kind == k for s in spans)], 58),
        _x_axis(ticks, sx, top, bottom, f"seconds since {_clock(lo)}"),
    ]
    for r, label in enumerate(labels):
        y = top + r * _ROW + _ROW - 2
        if label:
            out.append(
                f'<text class="tick" x="{_ML - 6}" y="{y:.0f}" text-anchor="end">'
                f"{esc(label)}</text>"
            )
    for i, s in enumerate(spans):
        out.append(_span_rect(s, sx(s.start - lo), sx(s.end - lo), top + where[i] * _ROW))
    out.append("</svg>")
    return "".join(out)


_KIND_ORDER = ("waiting", *LEARNER_PHASES, "rollouts", "admission", "queue", "generation",
               "judge")  # fmt: skip


def _span_rect(s: Span, x0: float, x1: float, y: float) -> str:
    err = f' stroke="{_ERROR}" stroke-width="1.2"' if s.error else ""
    tip = f"{s.detail or _label(s.kind)} ({s.duration:.3f} s)"
    return (
        f'<rect class="span span-{esc(s.kind)}" x="{x0:.2f}" y="{y + 1:.1f}" '
        f'width="{max(0.8, x1 - x0):.2f}" height="{_ROW - 2}" fill="{_color(s.kind)}"{err}>'
        f"<title>{esc(tip)}</title></rect>"
    )


def _clock(t: float) -> str:
    if not math.isfinite(t):
        return "the step's start"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


def _step_note(st: StepTimeline, dropped: int, crowded: int) -> str:
    parts = [f"{_label(k)} {v:.2f} s" for k, v in _stack(st)]
    req = ", ".join(f"{n} {k}" for k, n in sorted(st.requests.items()))
    if req:
        parts.append(f"requests: {req}; queue wait {st.queue_wait:.2f} s total")
    if dropped:
        parts.append(f"{dropped} spans not drawn")
    if crowded:
        parts.append(f"{crowded} spans share the last row")
    return "; ".join(parts)


# ============================================================================ the section


def _slowest_table(tl: Timeline, detailed: Sequence[int], n: int = 5) -> str:
    head = (
        "<tr><th>step</th><th>time</th><th>waiting for rollouts</th><th>update</th>"
        "<th>after update</th><th>eval</th><th>checkpoint</th><th>other</th><th>rollouts</th>"
        "<th>requests</th><th>queue wait (max)</th><th>errors</th></tr>"
    )
    rows = []
    for st in tl.slowest(n):
        step = (
            f'<a href="#{_anchor(st.step)}">{st.step}</a>' if st.step in detailed else str(st.step)
        )
        req = ", ".join(f"{n} {esc(k)}" for k, n in sorted(st.requests.items())) or "0"
        cells = [_secs(st.duration), _secs(st.waiting)]
        cells += [_secs(st.phases[p]) if p in st.phases else "&ndash;" for p in LEARNER_PHASES]
        cells += [
            _secs(st.other),
            _secs(st.rollouts),
            req,
            f"{_secs(st.queue_wait)} ({_secs(st.queue_wait_max)})",
            str(st.errors),
        ]
        rows.append(f"<tr><td>{step}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="slowest">{head}{"".join(rows)}</table>'


def timeline_section(tl: Timeline | None, why_absent: str = "") -> str:
    """The report's "Step timeline" section; ``why_absent`` when there is no timeline."""
    if tl is None or not tl.steps:
        note = (why_absent or "No events.jsonl.") if tl is None else (
            "events.jsonl has no request or phase events of any step.")  # fmt: skip
        return f'<h2 id="timeline">Step timeline</h2><p class="absent">{esc(note)}</p>'
    detailed = sorted(tl.detail)
    intro = (
        "<p>Each step as the learner spent it: waiting for its batch's rollouts, then its "
        "update, the policy's after-update work, evaluation and checkpoint. Below, the "
        f"slowest steps and detailed timelines of steps {esc(', '.join(map(str, detailed)))}"
        " (python -m engine report --timeline-step N draws others): one row per group, each "
        "request attempt drawn as its queue wait for a permit, then its time on the wire; "
        "failed attempts outlined red. Hover a bar for its figures.</p>"
    )
    if tl.missing:
        intro += f'<p class="absent">No events of step {esc(", ".join(map(str, tl.missing)))}.</p>'
    if not tl.has_phases:
        intro += (
            '<p class="absent">These events carry no phase events (a run written before '
            "they existed): the learner's time is unknown, requests only.</p>"
        )
    figures = "".join(
        f"<figure>{step_chart(st, tl.detail[k], tl.dropped.get(k, 0))}</figure>"
        for k in detailed
        if (st := tl.step(k)) is not None
    )
    return (
        f'<h2 id="timeline">Step timeline</h2>{intro}'
        f"<figure>{overview_chart(tl, detailed)}</figure>"
        f'<h3>Slowest steps</h3>{_slowest_table(tl, detailed)}<div class="timelines">'
        f"{figures}</div>"
    )
