"""The run report: one self-contained HTML page about a run directory.

``python -m engine report RUN_DIR [--out FILE]`` reads ``metrics.jsonl``, ``summary.json``,
``config.json`` and, when present, ``comparison.json`` (from ``python -m engine compare
--out RUN_DIR``), and writes ``RUN_DIR/report.html``: the run's summary, a convergence verdict
(:func:`engine.telemetry.monitor.convergence`), plots over steps, the step timeline drawn from
``events.jsonl`` (:mod:`.timeline`: where each step's time went) and the A/B table.

The page needs nothing but a browser: no network, no script, no library. Plots are inline SVG
drawn here (:mod:`.charts`: axes with "nice" ticks, titles, legends), styled by a small inline
stylesheet; hovering a step shows every plotted value at that step (SVG ``<title>``
tooltips). Plots whose metrics a run did not record are listed as absent instead of drawn
empty (:mod:`.plots`).

Example::

    path = write_report("runs/latest")          # runs/latest/report.html
"""

from __future__ import annotations

from .charts import Series, line_chart, nice_ticks, tick_label
from .page import render_report, write_report
from .run import RunData, load_run

__all__ = (
    "RunData",
    "Series",
    "line_chart",
    "load_run",
    "nice_ticks",
    "render_report",
    "tick_label",
    "write_report",
)
