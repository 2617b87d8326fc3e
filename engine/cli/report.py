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
        "script) with the run's summary, convergence, training plots and, when RUN_DIR holds "
        "comparison.json, the A/B table.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/report.html)")
    return p


def report_command(args: argparse.Namespace) -> int:
    """Run ``python -m engine report``; returns the exit status.

    Synchronous on purpose: it only reads a few files and writes one, with no event loop.
    """
    check_output_file(args.out, "--out")  # refused before the run directory is read
    path = write_report(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0
