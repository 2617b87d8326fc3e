"""Stage: evaluation. Score a trained policy on a dataset: ``python -m engine eval``.

::

    python -m engine eval --checkpoint runs/local/checkpoints/step-20 --data heldout.jsonl
    python -m engine eval --checkpoint runs/local --data heldout.jsonl     # its latest one
    python -m engine eval --checkpoint models/sentiment --data heldout.jsonl   # model.save()
    python -m engine eval --config examples/local.toml --data heldout.jsonl  # untrained policy

The checkpoint's config builds the policy (``--config`` and ``--set`` override it) and its
arrays restore it; with ``--config`` alone the policy is evaluated as initialised (for the
prompt policy: uniform over its seed candidates, so greedy decoding is the base prompt).
Decoding is greedy unless ``--sample``. Each example is scored with the run's rewards; the
summary gives the mean reward, the pass rate (reward >= ``--pass-threshold``), errors,
tokens and latency. ``--out FILE`` writes one JSON line per example.

Exit status: 0 done, 2 bad input (config, data, checkpoint), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import orjson

from ..types import Example

__all__ = (
    "EvalResult",
    "add_eval_parser",
    "eval_command",
    "evaluate_policy",
    "load_policy_checkpoint",
)


@dataclass(slots=True)
class EvalResult:
    """What an evaluation measured.

    Attributes:
        n: examples evaluated.
        mean_reward: mean reward over scored examples (NaN when none scored).
        pass_rate: fraction of all examples with reward >= the pass threshold.
        errors: examples whose generation or scoring failed (not in ``mean_reward``).
        prompt_tokens, completion_tokens: tokens spent on generation.
        latency_p50, latency_p95: request latency percentiles, seconds.
        wall_time: seconds for the whole evaluation.
        rows: per example: ``id``, ``input``, ``target``, ``output``, ``reward``, ``parts``,
            ``error``, ``latency``.
    """

    n: int
    mean_reward: float
    pass_rate: float
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_p50: float
    latency_p95: float
    wall_time: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the rows, as JSON data (NaN as None)."""
        names = ("n", "mean_reward", "pass_rate", "errors", "prompt_tokens")
        names += ("completion_tokens", "latency_p50", "latency_p95", "wall_time")
        return _jsonable({k: getattr(self, k) for k in names})


async def evaluate_policy(
    policy: Any,
    examples: Sequence[Example],
    rewarder: Any,
    *,
    snapshot: Any = None,
    greedy: bool = True,
    seed: int = 0,
    concurrency: int = 16,
    pass_threshold: float = 1.0,
    on_result: Callable[[int, dict[str, Any]], Any] | None = None,
) -> EvalResult:
    """Generate one output per example from ``snapshot`` and score it.

    Args:
        policy: any :class:`~engine.policies.base.Policy`.
        examples: what to evaluate on.
        rewarder: a :class:`~engine.rewards.rewarder.Rewarder`.
        snapshot: the parameters to use; default the policy's live snapshot (prompt policy)
            or ``policy.snapshot(0)``.
        greedy: argmax decoding (the prompt policy: its most probable candidate at
            temperature 0); else sampled with generators seeded by ``(seed, i)``.
        concurrency: examples in flight at once (the client's limits apply on top).
        pass_threshold: a reward at or above it counts as a pass.
        on_result: called with ``(done_count, row)`` after each example.
    """
    if snapshot is None:
        snapshot = policy.live_snapshot() or policy.snapshot(0)
    rows: list[dict[str, Any] | None] = [None] * len(examples)
    limiter = anyio.Semaphore(max(1, concurrency))
    done = 0
    t0 = time.perf_counter()

    async def one(i: int, ex: Example) -> None:
        nonlocal done
        async with limiter:
            rng = np.random.default_rng([seed, i])
            sample = (await policy.generate(snapshot, ex, 1, rng, greedy=greedy))[0]
            row: dict[str, Any] = {
                "id": ex.id,
                "input": ex.text,
                "target": ex.target,
                "output": sample.text,
                "reward": math.nan,
                "parts": {},
                "error": sample.error,
                "latency": sample.latency,
                "prompt_tokens": sample.usage.prompt_tokens,
                "completion_tokens": sample.usage.completion_tokens,
                "choice": sample.choice,
            }
            if sample.error is None:
                score = await rewarder.score(ex, sample.text)
                row["reward"], row["parts"], row["error"] = score.reward, score.parts, score.error
            rows[i] = row
            done += 1
            if on_result is not None:
                on_result(done, row)

    async with anyio.create_task_group() as tg:
        for i, ex in enumerate(examples):
            tg.start_soon(one, i, ex)
    got = [r for r in rows if r is not None]
    rewards = np.array([r["reward"] for r in got], dtype=np.float64)
    ok = np.isfinite(rewards)
    lat = np.array([r["latency"] for r in got if r["error"] is None], dtype=np.float64)
    p50, p95 = (float(x) for x in np.percentile(lat, [50, 95])) if lat.size else (0.0, 0.0)
    return EvalResult(
        n=len(got),
        mean_reward=float(rewards[ok].mean()) if ok.any() else math.nan,
        pass_rate=float((rewards[ok] >= pass_threshold).sum() / len(got)) if got else math.nan,
        errors=int((~ok).sum()),
        prompt_tokens=int(sum(r["prompt_tokens"] for r in got)),
        completion_tokens=int(sum(r["completion_tokens"] for r in got)),
        latency_p50=p50,
        latency_p95=p95,
        wall_time=time.perf_counter() - t0,
        rows=got,
    )


def load_policy_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """``(policy arrays, meta, checkpoint dir)`` of a trainer checkpoint, a run directory (its
    latest checkpoint) or a saved :class:`~engine.training.finetune.FineTunedModel`.

    Raises:
        CheckpointError: nothing loadable there, or no policy state in it.
    """
    from ..errors import CheckpointError
    from ..learning import checkpoint as ckpt

    p = Path(path)
    if not (p / "meta.json").exists():
        latest = ckpt.latest_checkpoint(p / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{p}: not a checkpoint, a run directory or a saved model")
        p = latest
    arrays, meta = ckpt.load_checkpoint(p)
    if "policy" not in meta or "config" not in meta:
        raise CheckpointError(f"{p}: the checkpoint holds no policy state and config")
    policy_arrays = {k[len("policy/") :]: v for k, v in arrays.items() if k.startswith("policy/")}
    return policy_arrays, meta, p


# ----------------------------------------------------------------------------- CLI

_EPILOG = """\
examples:
  python -m engine eval --checkpoint runs/local --data engine/data/datasets/sentiment.jsonl
  python -m engine eval --config examples/local.toml --data heldout.jsonl --limit 50
  python -m engine eval --checkpoint models/sentiment --data heldout.jsonl --out rows.jsonl

exit status: 0 done, 2 bad input (config, data, checkpoint), 130 interrupted
"""


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
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
    p.add_argument("--data", metavar="FILE", required=True, help="JSONL examples to score")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N examples")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for --sample")
    p.add_argument(
        "--pass-threshold", type=float, default=1.0, metavar="R", help="reward that passes"
    )
    p.add_argument("--concurrency", type=int, default=16, metavar="N", help="examples in flight")
    p.add_argument("--out", metavar="FILE", help="write one JSON line per example")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


class _Progress:
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
    from ..config.schema import load_config
    from ..data.jsonl import read_jsonl, take
    from ..errors import ConfigError
    from ..runtime import tune_gc
    from ..telemetry.events import EventLog
    from ..training.assembly import build_components, open_clients

    if not args.checkpoint and not args.config:
        raise ConfigError("eval needs --checkpoint DIR or --config FILE (or both)")
    meta: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    if args.checkpoint:
        arrays, meta, _ = await anyio.to_thread.run_sync(load_policy_checkpoint, args.checkpoint)
    cfg = load_config(args.config, args.overrides, base=meta.get("config"))
    examples = await anyio.to_thread.run_sync(
        lambda: (
            take(read_jsonl(args.data), args.limit) if args.limit else list(read_jsonl(args.data))
        )
    )
    events = EventLog(None)
    async with AsyncExitStack() as stack:
        client = judge_client = None
        if cfg.policy != "tinylm":
            client, judge_client = await open_clients(cfg, stack, events)
        policy, rewarder, _ = build_components(cfg, client=client, judge_client=judge_client)
        if rewarder is None:
            raise ConfigError("no reward functions: set [reward] functions", key="reward")
        snapshot = None
        if args.checkpoint:
            policy.load_state(arrays, meta["policy"])
            if policy.live_snapshot() is None:
                snapshot = policy.snapshot(int(meta.get("step", 0)))
        progress = _Progress(len(examples), args.quiet)
        tune_gc()  # everything is built: freeze it, and collect the young generation rarely
        result = await evaluate_policy(
            policy,
            examples,
            rewarder,
            snapshot=snapshot,
            greedy=not args.sample,
            seed=args.seed,
            concurrency=args.concurrency,
            pass_threshold=args.pass_threshold,
            on_result=progress,
        )
    if args.out:
        lines = b"".join(orjson.dumps(_jsonable(row)) + b"\n" for row in result.rows)
        out = anyio.Path(args.out)
        await out.parent.mkdir(parents=True, exist_ok=True)
        await out.write_bytes(lines)
    summary = {
        "policy": cfg.policy,
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


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return {k: fix(v) for k, v in row.items()}


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
