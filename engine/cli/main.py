"""Command line: ``python -m engine run | eval | compare | serve-sim | report``.

Each subcommand has its module (:mod:`engine.cli.run`, :mod:`engine.cli.eval`,
:mod:`engine.cli.compare`, :mod:`engine.cli.report`, :mod:`engine.cli.serve_sim`); this one
builds the parser and dispatches. It is the only place that configures logging. Bad input
(config, data, checkpoint) ends with one readable line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from ..config.reference import config_reference
from ..errors import EngineError, first_engine_error, first_error
from ..runtime import event_loop_factory
from ..telemetry.logs import configure_logging
from ..telemetry.streams import guard_standard_streams
from .args import OneLineParser, print_error
from .compare import add_compare_parser, compare_command
from .eval import add_eval_parser, eval_command
from .report import add_report_parser, report_command
from .run import add_run_parser, run_command
from .serve_sim import main as serve_sim_main

__all__ = ("build_parser", "main")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m engine`` with every subcommand."""
    parser = OneLineParser(
        prog="python -m engine",
        description="grpo-engine: Group Relative Policy Optimization as an asyncio batch engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(sub)
    sim = sub.add_parser(
        "serve-sim",
        help="serve the simulated OpenAI-compatible server",
        description="Serve the simulated OpenAI-compatible server (options as for "
        "python -m engine serve-sim --help).",
        add_help=False,
    )
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)
    add_compare_parser(sub)
    add_report_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engine``; returns the exit status. A reader that closes
    stdout or stderr (``| head``) ends the output to it, not the command
    (:mod:`engine.telemetry.streams`)."""
    with guard_standard_streams():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-sim"]:  # all its options belong to the simulated server's own CLI
        return serve_sim_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # the help on stdout, the one error line on stderr
        parser.print_help()
        print_error("no command given: run, eval, compare, report or serve-sim")
        return 2
    try:
        return _dispatch(parser, args)
    except EngineError as exc:
        print_error(str(exc))
        return 2
    except OSError as exc:  # a path the user named cannot be read or written
        print_error(_os_error(exc))
        return 2
    except BaseExceptionGroup as group:
        found = first_engine_error(group) or first_error(group, OSError)
        if found is None:
            raise
        print_error(_os_error(found) if isinstance(found, OSError) else str(found))
        return 2
    except KeyboardInterrupt:
        return 130


def _os_error(exc: OSError) -> str:
    """``PATH: strerror`` of a failed file operation (``errno``'s text without the repr)."""
    where = ": ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command``; its exit status."""
    if args.command == "serve-sim":
        return serve_sim_main(args.sim_args)
    if args.command == "run" and args.print_config:
        print(config_reference())
        return 0
    if args.command == "report":
        return report_command(args)
    commands = {"run": run_command, "compare": compare_command, "eval": eval_command}
    if args.command not in commands:
        parser.error(f"unknown command {args.command!r}")
    configure_logging()
    factory = event_loop_factory()  # uvloop when its extra is installed
    options = {} if factory is None else {"loop_factory": factory}
    return anyio.run(commands[args.command], args, backend_options=options)
