"""The report page: one self-contained HTML file about a run directory.

:func:`write_report` reads a run (:func:`~.run.load_run`) and writes ``RUN_DIR/report.html``:
the run's summary, a convergence verdict (:func:`engine.telemetry.monitor.convergence`), the
training plots (:mod:`.plots`), the step timeline of ``events.jsonl`` (:mod:`.timeline_charts`)
and, when the run holds ``comparison.json``, the A/B table.
The page needs nothing but a browser: no network, no script, no library; a small inline
stylesheet styles it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ...errors import DataError
from ...files import atomic_write_text, ensure_dir
from ...telemetry.monitor import convergence, describe
from .charts import esc, finite, format_value
from .plots import training_charts
from .run import RunData, load_run
from .timeline_charts import timeline_section

__all__ = ("render_report", "write_report")

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
svg.timeline .grid{stroke:var(--line)}
.timelines figure{margin-top:14px}
table.slowest a{color:#3b6fb6}
h3{font-size:14px;margin:18px 0 8px}
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


def _num(v: object, fmt: str = ".4g") -> str:
    """A number formatted with ``fmt``; ``n/a`` for None; anything else escaped as text."""
    return format_value(v, fmt) if finite(v) else ("n/a" if v is None else esc(v))


def _card(key: str, value: str, sub: str = "") -> str:
    s = f'<div class="s">{sub}</div>' if sub else ""
    return f'<div class="card"><div class="k">{key}</div><div class="v">{value}</div>{s}</div>'


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``(dotted.key, value)`` of every leaf of a nested mapping."""
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from _flatten(v, key)
        else:
            yield key, v


# ============================================================================ summary


_TREND_MEANING = {
    "improving": "the reward is still rising: more steps are likely to help.",
    "declining": "the reward is falling over the last steps: check the learning rate and KL.",
    "plateaued": "no trend, and any change is small next to the reward level.",
    "unclear": "no significant trend, but too noisy to call it a plateau.",
}


def _summary_section(run: RunData, conv: Mapping[str, Any]) -> str:
    """Cards of the headline numbers, the convergence verdict, and summary.json."""
    s = run.summary or {}
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{_num(v) if finite(v) else esc(v)}</td></tr>"
        for k, v in _flatten(s)
    )
    table = (
        f'<details><summary>summary.json</summary><table class="kv">{rows}</table></details>'
        if s
        else '<p class="absent">No summary.json (the run did not finish).</p>'
    )
    return (
        f'<h2>Summary</h2><div class="cards">{"".join(_summary_cards(run, s))}</div>'
        f"{_verdict(conv)}{table}"
    )


def _summary_cards(run: RunData, s: Mapping[str, Any]) -> list[str]:
    steps = s.get("steps_done", len(run.rows))
    wall = s.get("wall_time")
    return [
        _card("steps", esc(steps), esc(f"stop: {s.get('stop_reason', 'n/a')}")),
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
            f"{_num(wall, '.1f')} s" if finite(wall) else "n/a",
            esc(f"{s.get('requests', 'n/a')} requests"),
        ),
        _card("policy", esc(s.get("policy", "n/a")), esc(f"{len(run.rows)} metric rows")),
        *_spend_card(s),
    ]


def _spend_card(s: Mapping[str, Any]) -> list[str]:
    """The spend card, when the run spent anything or had a budget."""
    spent, budget = s.get("spent_usd"), s.get("budget_usd")
    if not (finite(spent) and spent > 0) and not finite(budget):
        return []
    sub = f"of ${_num(budget)} budget" if finite(budget) else "no budget"
    return [_card("spend", f"${_num(spent)}", esc(sub))]


def _verdict(conv: Mapping[str, Any]) -> str:
    """The convergence trend of the train reward, and what it means."""
    trend = conv.get("trend", "insufficient data")
    explain = _TREND_MEANING.get(trend, "too few steps to fit a trend.")
    return (
        f'<div class="verdict {esc(trend.split()[0])}"><b>Convergence:</b> '
        f"{esc(describe(conv))} &mdash; {esc(explain)}"
        f'<div class="s" style="color:var(--muted);font-size:12px">Least-squares slope of the '
        f"train reward over the last {esc(conv.get('window'))} steps with a t-distribution "
        "interval (engine.telemetry.monitor.convergence), computed from metrics.jsonl.</div></div>"
    )


# ============================================================================ A/B comparison


def _comparison_section(cmp: Mapping[str, Any] | None) -> str:
    """The A/B table of ``comparison.json``, its failures and a few sample outputs."""
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
    body = "".join(_metric_row(name, m) for name, m in dict(cmp.get("metrics", {})).items())
    return (
        "<h2>A/B comparison</h2>"
        f"<p>A = <b>{esc(cmp.get('model_a'))}</b>, B = <b>{esc(cmp.get('model_b'))}</b>; "
        f"{esc(cmp.get('n_inputs'))} inputs &times; {esc(cmp.get('samples_per_input'))} "
        f"samples per model, seed {esc(cmp.get('seed'))}. Differences are B &minus; A paired "
        f"per input; {pct}% bootstrap interval; two-sided sign-flip permutation p-value "
        "(* p &lt; 0.05).</p>"
        f"<table>{head}{body}</table>{_failure_note(cmp)}{_sample_table(cmp)}"
    )


def _metric_row(name: str, m: Mapping[str, Any]) -> str:
    """One metric's row; a significant difference is coloured by its sign."""
    p = m.get("p_value")
    diff = m.get("diff")
    sig = finite(p) and p < 0.05
    cls = ("sig-up" if (diff or 0) > 0 else "sig-down") if sig else ""
    imp = m.get("improvement")
    return (
        f'<tr class="{cls}"><td>{esc(name)}</td><td>{_num(m.get("mean_a"), ".4f")}</td>'
        f"<td>{_num(m.get('mean_b'), '.4f')}</td>"
        f'<td class="diff">{_num(diff, "+.4f")}</td>'
        f"<td>[{_num(m.get('ci_low'), '+.4f')}, {_num(m.get('ci_high'), '+.4f')}]</td>"
        f"<td>{_num(p, '.4f') if not finite(p) or p >= 1e-4 else '&lt;1e-4'}"
        f"{' *' if sig else ''}</td>"
        f"<td>{_num(m.get('win'), '.0%')} / {_num(m.get('tie'), '.0%')} / "
        f"{_num(m.get('loss'), '.0%')}</td>"
        f"<td>{_num(imp, '+.1%') if imp is not None else 'n/a'}</td>"
        f"<td>{esc(m.get('n', ''))}</td></tr>"
    )


def _failure_note(cmp: Mapping[str, Any]) -> str:
    fails = cmp.get("failures") or []
    failed_scores = sum(
        int(v) for per in dict(cmp.get("score_failures") or {}).values() for v in per.values()
    )
    notes = []
    if fails:
        notes.append(f"{len(fails)} failed generations (inputs dropped)")
    if failed_scores:
        notes.append(f"{failed_scores} failed score calls (samples dropped)")
    return f'<p class="absent">{esc("; ".join(notes))}.</p>' if notes else ""


def _sample_table(cmp: Mapping[str, Any]) -> str:
    samples = cmp.get("samples") or []
    if not samples:
        return ""
    rows = "".join(
        f"<tr><td>{esc(x.get('input', ''))}</td><td>{esc(x.get('a', ''))}</td>"
        f"<td>{esc(x.get('b', ''))}</td></tr>"
        for x in samples
    )
    return (
        f'<details><summary>sample outputs</summary><table class="samples"><tr><th>input</th>'
        f"<th>A</th><th>B</th></tr>{rows}</table></details>"
    )


# ============================================================================ the page


T = TypeVar("T")

_SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError)
"""What drawing a section raises when a file of the run holds values of another shape (a list
where a table goes, a string where a number goes): the files are outside input."""


def _drawn(file: str, run: RunData, draw: Callable[[], T]) -> T:
    """``draw()``; a value of an unexpected shape in ``file`` becomes one DataError naming it."""
    try:
        return draw()
    except _SHAPE_ERRORS as exc:
        raise DataError(
            f"unexpected value: {type(exc).__name__}: {exc}", path=str(run.run_dir / file)
        ) from None


def render_report(run: RunData) -> str:
    """The whole HTML page for a loaded run.

    Raises:
        DataError: a file of the run holds a value of a shape the page cannot show.
    """
    rewards = _drawn("metrics.jsonl", run, lambda: run.column("reward"))
    conv = convergence(rewards) if rewards else convergence([])
    charts, absent = _drawn("metrics.jsonl", run, lambda: training_charts(run, conv))
    summary = _drawn("summary.json", run, lambda: _summary_section(run, conv))
    comparison = _drawn("comparison.json", run, lambda: _comparison_section(run.comparison))
    figures = "".join(
        f"<figure>{c.svg}<figcaption>{esc(c.caption)}</figcaption></figure>" for c in charts
    )
    absent_note = (
        f'<p class="absent">Not recorded in this run: {esc(", ".join(absent))}.</p>'
        if absent
        else ""
    )
    config = (
        "<details><summary>config.json</summary><pre>"
        f"{esc(orjson.dumps(run.config, option=orjson.OPT_INDENT_2).decode())}</pre></details>"
        if run.config
        else ""
    )
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"GRPO run report: {run.run_dir.name or run.run_dir}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<header><h1>{esc(title)}</h1><p>{esc(run.run_dir)} &middot; generated {now} by "
        "python -m engine report &middot; hover a plot for the values at each step</p></header>"
        f"{summary}"
        f'<h2>Training</h2><div class="grid">{figures}</div>{absent_note}'
        f"{timeline_section(run.timeline, 'No events.jsonl in this run directory.')}"
        f"{comparison}{config}"
        "</main></body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    timeline_steps: Collection[int] | None = None,
) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default RUN_DIR/report.html);
    ``timeline_steps``: the steps whose timeline is drawn in detail (default the slowest few
    and the last).

    Blocking file I/O; written to a new temporary file and renamed into place, so a symlink
    at the target is replaced, not followed.

    Raises:
        DataError: not a run directory, or one of its JSON files is invalid.
    """
    run = load_run(run_dir, timeline_steps=timeline_steps)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    ensure_dir(path.parent, follow=True)
    atomic_write_text(path, render_report(run))  # never through a symlink (engine.files)
    return path
