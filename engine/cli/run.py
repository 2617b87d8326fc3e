"""Command line: ``python -m engine run``, train a policy with GRPO.

SIGINT, SIGTERM and SIGHUP stop a run cleanly with a checkpoint and the summary, exit status
130, 143 or 129 (:mod:`engine.training.stopping`); a second signal stops at once. A run in
which every group failed for ``trainer.max_failed_steps`` consecutive steps stops with exit
status 3 and one ``error:`` line saying why. A run whose spend budget
(``limits.max_cost_usd``) is spent stops cleanly with a checkpoint and exit status 4.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..config.loading import load_config
from ..config.sections import RunConfig
from ..endpoints.spend import SpendMeter, Threshold
from ..errors import ConfigError, EngineError
from ..evaluation.report import write_report
from ..runtime import tune_gc
from ..telemetry.events import EventLog
from ..telemetry.logs import attach_event_log
from ..telemetry.monitor import describe
from ..telemetry.prometheus import PrometheusServer, RunMetrics
from ..telemetry.trackers import require_trackers
from ..training.assembly import build_components, needs_endpoint, open_clients, open_hf_server
from ..training.resume import ResumePlan, plan_resume
from ..training.rundir import claim_run_dir
from ..training.stopping import STOP_SIGNALS, SignalStop
from ..training.trainer import BatchMetrics, RunSummary, TrainingManager
from .args import check_output_dir, check_output_file, int_range

__all__ = ("FAILURES_STATUS", "add_config_args", "add_run_parser", "run_command")

FAILURES_STATUS = 3
"""Exit status of a run stopped because every group failed for ``trainer.max_failed_steps``
consecutive steps."""

_RUN_EPILOG = """\
With no arguments, trains the embedded tiny language model on the built-in task (reverse a
short digit string; partial credit per correct position) offline, in about a minute, and
writes runs/latest/{metrics.jsonl,events.jsonl,checkpoints/,summary.json}.

examples:
  python -m engine run
  python -m engine run --steps 100 --seed 3 --set grpo.beta=0.04 --set optim.lr=0.01
  python -m engine run --config examples/local.toml --out runs/local
  python -m engine run --resume runs/latest          # continue from the latest checkpoint
  python -m engine run --resume runs/latest --steps 300    # ... and run it for longer
  python -m engine run --out runs/latest --overwrite # replace the run there
  python -m engine run --print-config                # the full config reference
  python -m engine run --prometheus-port 9464        # live metrics at 127.0.0.1:9464/metrics

--resume DIR continues the run in DIR, writing DIR: its config.json is the base, and
--config, --set and the flags apply over it. What may change: --steps (when optim.schedule
is constant; a decaying schedule is a function of steps), trainer.checkpoint_every,
trainer.keep_checkpoints, [limits], [telemetry], where the endpoint is (provider, base_url,
api_key_env) and --quiet, --export-groups. Any other change (lr, data, rewards, seed, group size,
policy...) would change the run's trajectory and is refused unless --force-resume, and so
is a dataset file whose content changed (the checkpoint keeps its SHA-256). As for a
checkpoint, the saved endpoint and module:function rewards are used only when you give them
again or pass --trust-saved-config (printed first).

One run owns a directory: it holds DIR/run.lock (with its pid) while it writes, so a second
run on DIR exits 2 at once; a lock left by a killed run is taken over. A directory that
holds another run (config.json, metrics.jsonl, summary.json, checkpoints/) is refused unless
--resume continues it or --overwrite deletes its files first; the default directory,
runs/latest, is the one exception: a new run there replaces the previous one (with a note).

spend budget: limits.max_cost_usd (USD, generation and judges together) warns on stderr at
50%, 80% and 100%; once it is spent no new request is sent, the requests in flight finish and
count, a checkpoint is written, summary.json says stop_reason "budget" and spent_usd, and the
run exits with status 4. Costs come from the provider's usage.cost, else [prices."model"]
(USD per 1M input/output tokens) or the built-in table of common hosted models.

experiment trackers: report_to = ["tensorboard", "mlflow", "wandb", "trackio"] in the config
(or --set 'report_to=["mlflow"]') also logs metrics, config, summary and report.html to each;
settings in [tracking]; each needs its extra: pip install 'grpo-engine[trackers]' (README).

exit status: 0 done, 2 bad input, 3 stopped because every group failed for
trainer.max_failed_steps consecutive steps (e.g. every request failed), 4 spend budget spent
(limits.max_cost_usd), 130 interrupted (SIGINT), 143 terminated (SIGTERM), 129 hung up
(SIGHUP); a signal stops after the current step with a checkpoint and summary.json
"""

EXIT_BUDGET = 4
"""Exit status of a run stopped because its spend budget is spent."""


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
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR (its latest checkpoint, or DIR/checkpoints/step-N)",
    )
    run.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even with flags that change the run's trajectory (lr, data, seed...)",
    )
    run.add_argument(
        "--trust-saved-config",
        action="store_true",
        help="on --resume, use the saved endpoint and reward imports (printed first)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out: delete its metrics, checkpoints and summary first",
    )
    run.add_argument(
        "--print-config", action="store_true", help="print the config reference and exit"
    )
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument(
        "--export-groups",
        metavar="FILE",
        help="also write every scored group as JSONL for weight trainers (docs/export.md)",
    )
    run.add_argument(
        "--prometheus-port",
        type=int_range(0, 65535),
        metavar="PORT",
        help="serve Prometheus metrics (requests, errors by class, tokens, cost, in flight, "
        "event-loop lag, step, reward) at http://127.0.0.1:PORT/metrics while training; 0 "
        "picks a free port, printed at the start (config 'telemetry.prometheus_port'; the "
        "address is 'telemetry.prometheus_host')",
    )
    return run


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config: ``--config``, then ``--set``, then ``--out``, ``--steps``, ``--seed``,
    ``--prometheus-port``."""
    overrides = list(args.overrides)
    for name in ("out", "steps", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            overrides.append(f"{name}={value!r}" if name == "out" else f"{name}={value}")
    port = getattr(args, "prometheus_port", None)
    if port is not None:
        overrides.append(f"telemetry.prometheus_port={port}")
    return load_config(args.config, overrides)


def resume_plan(args: argparse.Namespace) -> ResumePlan:
    """``--resume DIR``: DIR's config under ``--config``, ``--set``, ``--steps``, ``--seed``,
    writing DIR (blocking: reads DIR).

    Raises:
        ConfigError: --overwrite or another --out given; flags that change the trajectory
            without --force-resume; saved authority not given again (nor trusted).
    """
    if args.overwrite:
        raise ConfigError("--resume continues the run in DIR and --overwrite deletes it: give one")
    overrides = list(args.overrides)
    overrides += [
        f"{n}={getattr(args, n)}" for n in ("steps", "seed") if getattr(args, n) is not None
    ]
    if getattr(args, "prometheus_port", None) is not None:
        overrides.append(f"telemetry.prometheus_port={args.prometheus_port}")
    plan = plan_resume(
        args.resume,
        path=args.config,
        overrides=overrides,
        trust_saved_config=args.trust_saved_config,
    )
    if args.out is not None and Path(args.out).resolve() != plan.run_dir.resolve():
        raise ConfigError(
            f"--resume continues the run in {plan.run_dir}, and writes there: --out "
            f"{args.out} names another directory (copy the run there to fork it)"
        )
    if plan.changes and not args.force_resume:
        shown = "; ".join(f"{k} from {a!r} to {b!r}" for k, a, b in plan.changes[:4])
        more = f" (and {len(plan.changes) - 4} more)" if len(plan.changes) > 4 else ""
        raise ConfigError(
            f"--resume {args.resume} would change {shown}{more}, which changes the run's "
            "trajectory: a resumed run may change only --steps (constant schedule), "
            "trainer.checkpoint_every, trainer.keep_checkpoints, [limits], [telemetry] and "
            "where the endpoint is; pass --force-resume to change it anyway"
        )
    return plan


class _Progress:
    """One progress line per step: an updating line on a TTY, periodic lines otherwise."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.every = 1 if self.tty else max(1, total // 20)

    def __call__(self, m: BatchMetrics) -> None:
        if self.quiet or getattr(sys.stderr, "broken", False):  # its reader has gone
            return
        step = m.batch_id + 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(step, 1) * (self.total - step)
        ev = m.all.get("eval/reward")
        failed = m.all.get("eval/failures")
        line = (
            f"step {step:>4}/{self.total}  reward {m.avg_reward:6.3f}  kl {m.kl:7.4f}  "
            f"entropy {m.entropy:6.3f}  clip {m.clip_ratio:5.3f}  lr {m.lr:.2e}"
            + (f"  eval {ev:6.3f}" if ev is not None else "")
            + (f" ({failed} failed)" if ev is not None and failed else "")
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


def _is_default_out(args: argparse.Namespace, config: RunConfig) -> bool:
    """Whether the run writes the default directory (``runs/latest``): no ``--out`` and no
    ``out`` in the config. That directory is replaced by each new run, not refused."""
    return args.out is None and config.out == RunConfig.__dataclass_fields__["out"].default


async def _train(
    args: argparse.Namespace,
    config: RunConfig,
    plan: ResumePlan | None,
    spend: SpendMeter,
    stop: SignalStop,
    progress: _Progress,
    stack: contextlib.AsyncExitStack,
) -> RunSummary:
    """Claim the run directory, build the trainer and run it (resumed where ``plan`` says)."""
    live = await _serve_metrics(config, stack)  # None unless telemetry.prometheus_port
    latest = _is_default_out(args, config) and plan is None
    claim = await anyio.to_thread.run_sync(
        functools.partial(
            claim_run_dir,
            config.out,
            resume=plan is not None,
            overwrite=args.overwrite or latest,
        )
    )
    stack.callback(claim.release)  # claimed before anything is written; released last
    if latest and claim.replaces:
        print(f"note: replacing the previous run in {config.out} (its name says latest; "
              "give --out DIR to keep a run)", file=sys.stderr)  # fmt: skip
    parts = await _endpoint_parts(config, stack, spend) if needs_endpoint(config) else {}
    manager: type[TrainingManager] = TrainingManager
    if config.cluster.backend == "ray":  # Ray loads only for a run that asks for it
        from ..cluster.training import ClusterTrainingManager

        manager = ClusterTrainingManager
    trainer = await stack.enter_async_context(
        manager(
            config,
            on_batch_complete=progress if live is None else _both(progress, live),
            export_groups=args.export_groups,
            spend=spend,
            run_dir=claim,
            **parts,
        )
    )
    if live is not None:
        live.attach(trainer.events)
    attach_event_log(trainer.events)  # structlog records join the run's events.jsonl
    tune_gc()  # everything is built: freeze it, and collect the young generation rarely
    stop.attach(trainer)
    summary = await trainer.run(
        resume=plan.checkpoint if plan is not None else None,
        force_resume=args.force_resume,
    )
    await _report_to_trackers(trainer)
    return summary


async def run_command(args: argparse.Namespace) -> int:
    """Run ``python -m engine run``; returns the exit status (errors raise EngineError)."""
    if not args.resume and (args.force_resume or args.trust_saved_config):
        raise ConfigError("--force-resume and --trust-saved-config apply to --resume DIR")
    plan = await anyio.to_thread.run_sync(resume_plan, args) if args.resume else None
    config = plan.config if plan is not None else config_from_args(args)
    require_trackers(config.report_to)  # a missing extra: one error before anything is written
    check_output_dir(config.out, "--out")  # refused before anything is written
    check_output_file(args.export_groups, "--export-groups", append=True)
    progress = _Progress(config.steps, quiet=args.quiet)
    spend = SpendMeter.from_config(config, on_threshold=_print_threshold)
    stop = SignalStop()
    summary: RunSummary | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(stop.watch)  # from here on a signal stops the run cleanly
        with stop.startup():
            async with contextlib.AsyncExitStack() as stack:
                summary = await _train(args, config, plan, spend, stop, progress, stack)
        tg.cancel_scope.cancel()
    progress.done()
    if summary is None:  # a signal during start-up: nothing was written
        return stop.status or 0
    print(_format_summary(summary), file=sys.stderr)
    return _exit_status(summary, stop)


def _exit_status(summary: RunSummary, stop: SignalStop) -> int:
    """The exit status the summary's stop reason gives (a signal that came after the run was
    done changes nothing); a ``failures`` stop also says why on stderr."""
    if summary.stop_reason in STOP_SIGNALS.values() and stop.status is not None:
        return stop.status
    if summary.stop_reason == "failures":
        print(f"error: run stopped: {summary.extra.get('stop_detail')}", file=sys.stderr)
        return FAILURES_STATUS
    if summary.stop_reason == "budget":
        return EXIT_BUDGET
    return 0


async def _report_to_trackers(trainer: TrainingManager) -> None:
    """With ``report_to`` set, write OUT/report.html and attach it to the trackers' runs."""
    if not trainer.trackers or trainer.out is None:
        return
    try:
        path = await anyio.to_thread.run_sync(write_report, trainer.out)
    except (OSError, EngineError) as exc:  # the run is done: a report it cannot write is noted
        print(f"warning: report.html not written for the trackers: {exc}", file=sys.stderr)
        return
    trainer.trackers.log_artifact(path)


async def _serve_metrics(config: RunConfig, stack: contextlib.AsyncExitStack) -> RunMetrics | None:
    """The run's Prometheus endpoint (closed by ``stack``), when ``telemetry.prometheus_port``
    is set (``--prometheus-port``); its URL goes to stderr. Served before the run directory is
    claimed, so a port that cannot be bound writes nothing."""
    tel = config.telemetry
    if tel.prometheus_port is None:
        return None
    live = RunMetrics()
    server = PrometheusServer(live, host=tel.prometheus_host, port=tel.prometheus_port)
    await stack.enter_async_context(server)
    print(f"prometheus metrics: {server.url}", file=sys.stderr, flush=True)
    return live


def _both(progress: _Progress, live: RunMetrics) -> Callable[[BatchMetrics], None]:
    """The step callback: the progress line, then the live metrics."""

    def on_step(m: BatchMetrics) -> None:
        progress(m)
        live.observe_step(m.batch_id, m.all)

    return on_step


def _print_threshold(crossed: Threshold) -> None:
    """A spend threshold crossed: one line on stderr (on its own line on a TTY)."""
    sys.stderr.write(("\n" if sys.stderr.isatty() else "") + crossed.line() + "\n")
    sys.stderr.flush()


async def _endpoint_parts(
    config: RunConfig, stack: contextlib.AsyncExitStack, spend: SpendMeter
) -> dict[str, Any]:
    """An endpoint policy's parts: its clients (closed by ``stack``) share the run's event
    log and spend meter."""
    events = stack.enter_context(contextlib.closing(EventLog(Path(config.out) / "events.jsonl")))
    client, judge = await open_clients(config, stack, events, spend)
    policy, rewarder, _ = build_components(config, client=client, judge_client=judge)
    if config.policy == "hf" and config.hf.generation == "server":
        await open_hf_server(config, policy, stack, client=client, events=events)
    return {"policy": policy, "rewarder": rewarder, "events": events}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _failed(summary: RunSummary) -> str:
    """``; failed: before N, after M`` when held-out examples failed (left out of the mean)."""
    counts = summary.extra.get("eval_failures") or {}
    parts = [f"{k} {n}" for k, n in counts.items() if n]
    return f"; failed: {', '.join(parts)}" if parts else ""


def _format_summary(summary: RunSummary) -> str:
    return (
        f"\n{summary.stop_reason}: {summary.steps_done} steps in {summary.wall_time:.1f}s\n"
        f"  train reward   first 3 steps {_fmt(summary.reward_first)}  ->  "
        f"last 3 steps {_fmt(summary.reward_last)}\n"
        f"  eval reward    before {_fmt(summary.eval_before)}  ->  "
        f"after {_fmt(summary.eval_after)}  (greedy, held-out{_failed(summary)})\n"
        f"  convergence    {describe(summary.extra.get('convergence'))}\n"
        + _spend_line(summary)
        + _served_line(summary)
        + (
            f"  outputs        {summary.out}/ (summary.json, metrics.jsonl, events.jsonl, "
            "checkpoints/)"
            if summary.out is not None
            else "  outputs        none (stopped before the run started)"
        )
    )


def _served_line(summary: RunSummary) -> str:
    """The prompt policy's served candidate and why (``served_prompt.json`` has it too)."""
    served = summary.extra.get("served")
    if not isinstance(served, dict):
        return ""
    return f"  served prompt  candidate {served.get('candidate')}: {served.get('reason')}\n"


def _spend_line(summary: RunSummary) -> str:
    """The summary's spend line: USD spent (and the budget), when anything was spent or
    budgeted."""
    spent = summary.extra.get("spent_usd") or 0.0
    budget = summary.extra.get("budget_usd")
    if not spent and budget is None:
        return ""
    of = f" of ${budget:.6g} budget" if budget is not None else ""
    return f"  spend          ${spent:.6g}{of}\n"
