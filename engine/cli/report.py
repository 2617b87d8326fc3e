"""Command line of the run report: ``python -m engine report RUN_DIR [--out FILE]``.

Wired into :mod:`engine.__main__` by :func:`add_report_parser` and :func:`report_command`.
"""

from __future__ import annotations

import argparse

from ..evaluation.report import write_report
from .args import check_output_file

__all__ = ("add_report_parser", "report_command")


def add_report_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write one self-contained HTML file (inline SVG plots, no network, no "
        "script) with the run's summary, convergence, training plots, the step timeline from "
        "events.jsonl (where each step's time went: queue waits, generation and judge "
        "requests, update, eval, checkpoint) and, when RUN_DIR holds comparison.json, the "
        "A/B table.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/report.html)")
    p.add_argument(
        "--timeline-step",
        dest="timeline_steps",
        type=_step,
        action="append",
        metavar="N",
        help="draw the detailed timeline of step N (repeatable; default: the 3 slowest steps "
        "and the last)",
    )
    return p


def _step(text: str) -> int:
    """A step index: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a step number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a step is >= 0, got {value}")
    return value


def report_command(args: argparse.Namespace) -> int:
    """Run ``python -m engine report``; returns the exit status.

    Synchronous on purpose: it only reads a few files and writes one, with no event loop.
    """
    check_output_file(args.out, "--out")  # refused before the run directory is read
    path = write_report(args.run_dir, args.out, timeline_steps=args.timeline_steps)
    print(f"wrote {path}")
    return 0
