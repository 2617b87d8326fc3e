"""Command line: ``python -m engine run``, train a policy with GRPO.

SIGINT and SIGTERM stop a run cleanly with a checkpoint and exit status 130 or 143; a second
signal stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from ..config.loading import load_config
from ..config.sections import RunConfig
from ..runtime import tune_gc
from ..telemetry.events import EventLog
from ..telemetry.logs import attach_event_log
from ..telemetry.monitor import describe
from ..training.assembly import build_components, needs_endpoint, open_clients, open_hf_server
from ..training.trainer import BatchMetrics, RunSummary, TrainingManager
from .args import check_output_dir, check_output_file, int_range

__all__ = ("add_config_args", "add_run_parser", "run_command")

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


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", metavar="FILE", help="TOML config file (see --print-config)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set grpo.beta=0.04 (repeatable; TOML values)",
    )


def add_run_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to ``python -m engine``'s subparsers."""
    run = subparsers.add_parser(
        "run",
        help="train a policy with GRPO",
        description="Train a policy with GRPO and write metrics, events, checkpoints, summary.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(run)
    run.add_argument("--out", metavar="DIR", help="output directory (default: config 'out')")
    run.add_argument(
        "--steps", type=int_range(1), metavar="N", help="optimizer steps (config 'steps')"
    )
    run.add_argument(
        "--seed", type=int_range(0), metavar="S", help="random seed >= 0 (config 'seed')"
    )
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
    return run


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config: ``--config``, then ``--set``, then ``--out``, ``--steps``, ``--seed``."""
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

    def __call__(self, m: BatchMetrics) -> None:
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


async def run_command(args: argparse.Namespace) -> int:
    """Run ``python -m engine run``; returns the exit status (errors raise EngineError)."""
    config = config_from_args(args)
    check_output_dir(config.out, "--out")  # refused before anything is written
    check_output_file(args.export_groups, "--export-groups", append=True)
    progress = _Progress(config.steps, quiet=args.quiet)
    signals_seen: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        parts = await _endpoint_parts(config, stack) if needs_endpoint(config) else {}
        trainer = await stack.enter_async_context(
            TrainingManager(
                config, on_batch_complete=progress, export_groups=args.export_groups, **parts
            )
        )
        attach_event_log(trainer.events)  # structlog records join the run's events.jsonl
        tune_gc()  # everything is built: freeze it, and collect the young generation rarely
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, trainer, signals_seen)
            summary = await trainer.run(resume=args.resume)
            tg.cancel_scope.cancel()
    progress.done()
    print(_format_summary(summary), file=sys.stderr)
    if signals_seen:
        return 128 + signals_seen[0]
    return 0


async def _endpoint_parts(config: RunConfig, stack: contextlib.AsyncExitStack) -> dict[str, Any]:
    """An endpoint policy's parts: its clients (closed by ``stack``) share the run's event
    log."""
    events = stack.enter_context(contextlib.closing(EventLog(Path(config.out) / "events.jsonl")))
    client, judge = await open_clients(config, stack, events)
    policy, rewarder, _ = build_components(config, client=client, judge_client=judge)
    if config.policy == "hf" and config.hf.generation == "server":
        await open_hf_server(config, policy, stack, client=client, events=events)
    return {"policy": policy, "rewarder": rewarder, "events": events}


async def _watch_signals(trainer: TrainingManager, seen: list[int]) -> None:
    """SIGINT or SIGTERM asks the trainer to stop after its step; a second one exits now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            seen.append(signum)
            trainer.request_stop("interrupted" if signum == signal.SIGINT else "terminated")
            if len(seen) > 1:
                raise SystemExit(128 + signum)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _format_summary(summary: RunSummary) -> str:
    return (
        f"\n{summary.stop_reason}: {summary.steps_done} steps in {summary.wall_time:.1f}s\n"
        f"  train reward   first 3 steps {_fmt(summary.reward_first)}  ->  "
        f"last 3 steps {_fmt(summary.reward_last)}\n"
        f"  eval reward    before {_fmt(summary.eval_before)}  ->  "
        f"after {_fmt(summary.eval_after)}  (greedy, held-out)\n"
        f"  convergence    {describe(summary.extra.get('convergence'))}\n"
        f"  outputs        {summary.out}/ (summary.json, metrics.jsonl, events.jsonl, "
        "checkpoints/)"
    )
