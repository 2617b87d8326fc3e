"""Command line: ``python -m engine eval``, score a trained policy on a dataset.

::

    python -m engine eval --checkpoint runs/local/checkpoints/step-20 --data heldout.jsonl
    python -m engine eval --checkpoint runs/local --data heldout.jsonl     # its latest one
    python -m engine eval --checkpoint models/sentiment --data heldout.jsonl   # model.save()
    python -m engine eval --config examples/local.toml --data heldout.jsonl  # untrained policy

The checkpoint's config builds the policy (``--config`` and ``--set`` override it), but where
requests go (``provider``, ``base_url``, ``api_key_env`` of ``[endpoint]`` and ``[judge]``)
and which reward functions are imported come from ``--config`` and ``--set`` only, or with
``--trust-saved-config`` from the checkpoint, printed first (:mod:`engine.training.saved`).
Its arrays restore the policy (an hf run's checkpoint or a saved hf model loads its
``hf.model`` in-process and restores the adapter, checked against the base model's
fingerprint); with ``--config`` alone the policy is evaluated as initialised (for the prompt
policy: uniform over its seed candidates, so greedy decoding is the base prompt).
Decoding is greedy unless ``--sample``. Each example is scored with the run's rewards
(:func:`engine.rollout.evaluate.evaluate_policy`); the summary gives the mean reward, the pass
rate (reward >= ``--pass-threshold``), errors, tokens and latency. ``--out FILE`` writes one
JSON line per example.

Exit status: 0 done, 2 bad input (config, data, checkpoint), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import orjson

from ..config.loading import load_config
from ..config.sections import RunConfig
from ..data.jsonl import read_jsonl
from ..data.sampler import take
from ..environments.runner import EpisodeRunner
from ..errors import ConfigError, DataError
from ..files import atomic_write_bytes, ensure_dir
from ..learning.checkpoint import load_policy_checkpoint, restoring
from ..policies.base import Policy, PolicySnapshot
from ..rollout.evaluate import EvalResult, evaluate_policy, jsonable
from ..runtime import tune_gc
from ..telemetry.events import EventLog
from ..training.assembly import build_components, needs_endpoint, open_clients
from ..training.saved import resolve_saved_config
from ..types import Example
from .args import MAX_CONCURRENCY, check_output_file, finite_float, int_range

__all__ = ("add_eval_parser", "eval_command")

_EPILOG = """\
examples:
  python -m engine eval --checkpoint runs/local --data engine/data/datasets/sentiment.jsonl
  python -m engine eval --config examples/local.toml --data heldout.jsonl --limit 50
  python -m engine eval --checkpoint models/sentiment --data heldout.jsonl --out rows.jsonl \
      --set endpoint.base_url=http://127.0.0.1:8000/v1

A checkpoint's config is data: its endpoint (provider, base_url, api_key_env, also of
[judge]) and its module:function reward functions are used only when you give them
(--config, --set) or pass --trust-saved-config, which prints what it takes from the
checkpoint before any request. A saved api_key_env never goes to a base_url you name.

exit status: 0 done, 2 bad input (config, data, checkpoint), 130 interrupted
"""


def add_eval_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``python -m engine``'s subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained policy on a dataset",
        description="Evaluate a checkpoint (or a config's initial policy) on a JSONL dataset: "
        "mean reward, pass rate, errors, tokens and latency.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint, run dir or saved model")
    p.add_argument("--config", metavar="FILE", help="TOML config (overrides the checkpoint's)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set endpoint.base_url=...",
    )
    p.add_argument(
        "--trust-saved-config",
        action="store_true",
        help="use the endpoint and reward imports the checkpoint names (printed first)",
    )
    p.add_argument("--data", metavar="FILE", required=True, help="JSONL examples to score")
    p.add_argument("--limit", type=int_range(1), metavar="N", help="only the first N examples")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int_range(0), default=0, metavar="S", help="seed for --sample")
    p.add_argument(
        "--pass-threshold", type=finite_float, default=1.0, metavar="R", help="reward that passes"
    )
    p.add_argument(
        "--concurrency",
        type=int_range(1, MAX_CONCURRENCY),
        default=16,
        metavar="N",
        help="examples in flight",
    )
    p.add_argument("--out", metavar="FILE", help="write one JSON line per example")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


class _Progress:
    """``eval  37/220  reward 0.512  errors 0``: an updating line on a TTY, a few otherwise."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.tty = sys.stderr.isatty()
        self.every = 1 if self.tty else max(1, total // 10)
        self.t0 = time.perf_counter()
        self.rewards: list[float] = []
        self.errors = 0

    def __call__(self, done: int, row: dict[str, Any]) -> None:
        if math.isfinite(row["reward"]):
            self.rewards.append(row["reward"])
        else:
            self.errors += 1
        if self.quiet or not (done % self.every == 0 or done == self.total):
            return
        mean = sum(self.rewards) / len(self.rewards) if self.rewards else math.nan
        line = (
            f"eval {done:>5}/{self.total}  reward {mean:6.3f}  errors {self.errors}  "
            f"{time.perf_counter() - self.t0:6.1f}s"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line + ("\n" if done == self.total else ""))
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr, flush=True)


async def eval_command(args: argparse.Namespace) -> int:
    """Run ``python -m engine eval``; returns the exit status (errors raise EngineError)."""
    if not args.checkpoint and not args.config:
        raise ConfigError("eval needs --checkpoint DIR or --config FILE (or both)")
    check_output_file(args.out, "--out")  # refused before the evaluation, not after it
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    if args.checkpoint:
        arrays, meta, _ = await anyio.to_thread.run_sync(load_policy_checkpoint, args.checkpoint)
    if args.checkpoint:
        config = resolve_saved_config(
            meta["config"],
            source=str(args.checkpoint),
            path=args.config,
            overrides=args.overrides,
            trust=args.trust_saved_config,
        ).config
    else:
        config = load_config(args.config, args.overrides)
    examples = await anyio.to_thread.run_sync(_read_examples, args.data, args.limit)
    events = EventLog(None)
    result = await _evaluate(args, config, examples, events, arrays, meta)
    if args.out:
        await _write_rows(args.out, result)
    summary = {
        "policy": config.policy,
        "checkpoint": args.checkpoint,
        "data": args.data,
        "decoding": "sample" if args.sample else "greedy",
        **result.summary(),
        "requests": events.count,
    }
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_format_summary(summary))
    return 0


def _read_examples(path: str, limit: int | None) -> list[Example]:
    """Blocking: the examples of ``path``, the first ``limit`` of them when given.

    Raises:
        DataError: a malformed line, or no examples at all (nothing to evaluate).
    """
    examples = take(read_jsonl(path), limit) if limit else list(read_jsonl(path))
    if not examples:
        raise DataError("the dataset has no examples", path=path)
    return examples


async def _evaluate(
    args: argparse.Namespace,
    config: RunConfig,
    examples: list[Example],
    events: EventLog,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> EvalResult:
    """Build the policy and rewards of ``config`` (clients on ``events``), restore the
    checkpoint's state into the policy when one was given, and evaluate it."""
    async with AsyncExitStack() as stack:
        client = judge_client = None
        if needs_endpoint(config):
            client, judge_client = await open_clients(config, stack, events)
        policy, rewarder, _ = build_components(config, client=client, judge_client=judge_client)
        if rewarder is None:
            raise ConfigError("no reward functions: set [reward] functions", key="reward")
        snapshot = None
        if args.checkpoint:
            with restoring(args.checkpoint):  # a malformed meta.json: one CheckpointError
                snapshot = _restore(policy, arrays, meta)
        progress = _Progress(len(examples), args.quiet)
        tune_gc()  # everything is built: freeze it, and collect the young generation rarely
        return await evaluate_policy(
            policy,
            examples,
            rewarder,
            snapshot=snapshot,
            greedy=not args.sample,
            seed=args.seed,
            concurrency=args.concurrency,
            pass_threshold=args.pass_threshold,
            on_result=progress,
            episodes=EpisodeRunner.from_config(config, events=events),
        )


def _restore(
    policy: Policy, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> PolicySnapshot | None:
    """Load a checkpoint's state into ``policy``; the snapshot to evaluate (None: the policy's
    live one)."""
    policy.load_state(arrays, meta["policy"])
    if policy.live_snapshot() is None:
        return policy.snapshot(int(meta.get("step", 0)))
    return None


async def _write_rows(path: str, result: EvalResult) -> None:
    lines = b"".join(orjson.dumps(jsonable(row)) + b"\n" for row in result.rows)

    def write() -> None:
        out = Path(path)
        ensure_dir(out.parent, follow=True)
        atomic_write_bytes(out, lines)  # never through a symlink (engine.files)

    await anyio.to_thread.run_sync(write)


def _format_summary(s: dict[str, Any]) -> str:
    def f(x: Any, spec: str = ".3f") -> str:
        return "n/a" if x is None else format(x, spec)

    return (
        f"eval of {s['checkpoint'] or 'the initial policy'} on {s['data']} ({s['decoding']})\n"
        f"  examples     {s['n']}  ({s['errors']} errors)\n"
        f"  reward       mean {f(s['mean_reward'])}   pass rate {f(s['pass_rate'])}\n"
        f"  tokens       prompt {s['prompt_tokens']}   completion {s['completion_tokens']}\n"
        f"  latency      p50 {f(s['latency_p50'])}s   p95 {f(s['latency_p95'])}s\n"
        f"  wall time    {s['wall_time']:.1f}s   requests {s['requests']}"
    )
