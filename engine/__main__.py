"""Command line: ``python -m engine run | eval | compare | serve-sim | report``.

This is the only place that configures logging. Bad input (config, data, checkpoint) ends with
one readable line on stderr and exit status 2; SIGINT and SIGTERM stop a run cleanly with a
checkpoint and exit status 130 or 143.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from . import _blas  # noqa: F401  (sets BLAS threads before numpy loads)
from .config.schema import RunConfig, config_reference, load_config
from .errors import EngineError, first_engine_error

__all__ = ("main",)

_RUN_EPILOG = """\
With no arguments, trains the embedded tiny language model on the built-in task (reverse a
short digit string; partial credit per correct position) offline, in about a minute, and
writes runs/latest/{metrics.jsonl,events.jsonl,checkpoints/,summary.json}.

examples:
  python -m engine run
  python -m engine run --steps 100 --seed 3 --set grpo.beta=0.04 --set optim.lr=0.01
  python -m engine run --config examples/local.toml --out runs/local
  python -m engine run --resume runs/latest          # continue from the latest checkpoint
  python -m engine run --print-config                # the full config reference

exit status: 0 done, 2 bad input, 130 interrupted (SIGINT), 143 terminated (SIGTERM)
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (see --print-config)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set grpo.beta=0.04 (repeatable; TOML values)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="grpo-engine: Group Relative Policy Optimization as an asyncio batch engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train a policy with GRPO",
        description="Train a policy with GRPO and write metrics, events, checkpoints, summary.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(run)
    run.add_argument("--out", metavar="DIR", help="output directory (default: config 'out')")
    run.add_argument("--steps", type=int, metavar="N", help="optimizer steps (config 'steps')")
    run.add_argument("--seed", type=int, metavar="S", help="random seed (config 'seed')")
    run.add_argument("--resume", metavar="DIR", help="resume from a run dir or checkpoint dir")
    run.add_argument(
        "--print-config", action="store_true", help="print the config reference and exit"
    )
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument(
        "--export-groups",
        metavar="FILE",
        help="also write every scored group as JSONL for weight trainers (docs/export.md)",
    )

    sim = sub.add_parser(
        "serve-sim",
        help="serve the simulated OpenAI-compatible server",
        description="Serve the simulated OpenAI-compatible server (options as for "
        "python -m engine.testing.sim --help).",
        add_help=False,
    )
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)

    from .cli.compare import add_compare_parser
    from .cli.report import add_report_parser

    add_compare_parser(sub)
    add_report_parser(sub)

    from .rollout.evaluate import add_eval_parser

    add_eval_parser(sub)
    return parser


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    for name in ("out", "steps", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            overrides.append(f"{name}={value!r}" if name == "out" else f"{name}={value}")
    return load_config(args.config, overrides)


class _Progress:
    """One progress line per step: an updating line on a TTY, periodic lines otherwise."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.every = 1 if self.tty else max(1, total // 20)

    def __call__(self, m: Any) -> None:
        if self.quiet:
            return
        step = m.batch_id + 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(step, 1) * (self.total - step)
        ev = m.all.get("eval/reward")
        line = (
            f"step {step:>4}/{self.total}  reward {m.avg_reward:6.3f}  kl {m.kl:7.4f}  "
            f"entropy {m.entropy:6.3f}  clip {m.clip_ratio:5.3f}  lr {m.lr:.2e}"
            + (f"  eval {ev:6.3f}" if ev is not None else "")
            + f"  {elapsed:5.1f}s eta {eta:4.0f}s"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line + ("\n" if step == self.total else ""))
            sys.stderr.flush()
        elif step % self.every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


async def _endpoint_parts(cfg: RunConfig, stack: Any) -> dict[str, Any]:
    """An endpoint policy's parts: its clients (closed by ``stack``, an AsyncExitStack) share
    the run's event log."""
    import contextlib
    from pathlib import Path

    from .telemetry.events import EventLog
    from .training.assembly import build_components, open_clients

    events = stack.enter_context(contextlib.closing(EventLog(Path(cfg.out) / "events.jsonl")))
    client, judge = await open_clients(cfg, stack, events)
    policy, rewarder, _ = build_components(cfg, client=client, judge_client=judge)
    return {"policy": policy, "rewarder": rewarder, "events": events}


async def _run(args: argparse.Namespace) -> int:
    import contextlib

    from .runtime import tune_gc
    from .telemetry.events import attach_event_log
    from .telemetry.monitor import describe
    from .training.trainer import TrainingManager

    cfg = _config_from_args(args)
    progress = _Progress(cfg.steps, quiet=args.quiet)
    signum_seen: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        parts = await _endpoint_parts(cfg, stack) if cfg.policy != "tinylm" else {}
        trainer = await stack.enter_async_context(
            TrainingManager(
                cfg, on_batch_complete=progress, export_groups=args.export_groups, **parts
            )
        )

        attach_event_log(trainer.events)  # structlog records join the run's events.jsonl

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    signum_seen.append(signum)
                    trainer.request_stop("interrupted" if signum == signal.SIGINT else "terminated")
                    if len(signum_seen) > 1:  # a second signal: stop at once
                        raise SystemExit(128 + signum)

        tune_gc()  # everything is built: freeze it, and collect the young generation rarely
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            summary = await trainer.run(resume=args.resume)
            tg.cancel_scope.cancel()
    progress.done()
    print(
        f"\n{summary.stop_reason}: {summary.steps_done} steps in {summary.wall_time:.1f}s\n"
        f"  train reward   first 3 steps {_fmt(summary.reward_first)}  ->  "
        f"last 3 steps {_fmt(summary.reward_last)}\n"
        f"  eval reward    before {_fmt(summary.eval_before)}  ->  "
        f"after {_fmt(summary.eval_after)}  (greedy, held-out)\n"
        f"  convergence    {describe(summary.extra.get('convergence'))}\n"
        f"  outputs        {summary.out}/ (summary.json, metrics.jsonl, events.jsonl, "
        "checkpoints/)",
        file=sys.stderr,
    )
    if signum_seen:
        return 128 + signum_seen[0]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engine``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-sim"]:  # all its options belong to the simulated server's own CLI
        from .cli.serve_sim import main as sim_main

        return sim_main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve-sim":
            from .cli.serve_sim import main as sim_main

            return sim_main(args.sim_args)
        if args.command == "run":
            if args.print_config:
                print(config_reference())
                return 0
            from .telemetry.events import configure_logging

            configure_logging()
            return anyio.run(_run, args)
        if args.command == "compare":
            from .cli.compare import compare_command
            from .telemetry.events import configure_logging

            configure_logging()
            return anyio.run(compare_command, args)
        if args.command == "report":
            from .cli.report import report_command

            return report_command(args)
        if args.command == "eval":
            from .rollout.evaluate import eval_command
            from .telemetry.events import configure_logging

            configure_logging()
            return anyio.run(eval_command, args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        found = first_engine_error(group)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
