"""Command line: ``python -m engine compare --a SPEC --b SPEC ...``, an A/B test of two models.

Wired into :mod:`engine.cli.main` by :func:`add_compare_parser` and :func:`compare_command`;
its clients, judges and rewarder are built by the assembly (:mod:`engine.training.assembly`).
Progress goes to stderr, the table to stdout, and with ``--out DIR`` the whole result to
``DIR/comparison.json`` (which ``python -m engine report`` shows when DIR is a run directory).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..config.loading import load_config
from ..data.jsonl import read_jsonl
from ..data.tasks import reward as task_reward
from ..endpoints.client import Client
from ..errors import ConfigError
from ..evaluation.compare import (
    BUILTIN_METRICS,
    EndpointGenerator,
    Generator,
    ModelComparator,
    PairwiseJudge,
    heldout_examples,
    load_generator,
)
from ..evaluation.compare.generation import Closeable, Configured
from ..files import atomic_write_bytes, ensure_dir
from ..rewards.rewarder import Rewarder
from ..runtime import tune_gc
from ..training.assembly import build_judge, build_rewarder, make_client
from ..types import Example
from .args import MAX_CONCURRENCY, MAX_RESAMPLES, MAX_SAMPLES, check_output_dir, int_range

__all__ = ("add_compare_parser", "compare_command")

_EPILOG = """\
SPEC is a checkpoint directory (RUN/checkpoints/step-N), a run directory (its latest
checkpoint), either of them with '#ref' appended (the run's frozen initial policy), or a TOML
config (a fixed prompt on its endpoint: the prompt policy's base prompt, i.e. the first
prompt.instructions entry zero-shot, or the input alone). Checkpoints of tinylm, prompt and
hf policies load (and models saved by FineTunedModel.save); a prompt policy samples its
candidates on its config's endpoint, an hf model runs in-process. --data
defaults to the run's held-out split. Quality defaults to the built-in task's reward for
tinylm checkpoints, else to the [reward] of B's config (or A's): its reward functions and,
with a judge_prompt, its LLM judge.

A checkpoint's config is data: its endpoint (provider, base_url, api_key_env, also of
[judge]) and its module:function reward functions are used only when you give them
(--config, --set, applied over each checkpoint's config) or pass --trust-saved-config,
which prints what it takes from the checkpoint before any request.

examples:
  python -m engine compare --a runs/latest#ref --b runs/latest --out runs/latest
  python -m engine compare --a runs/a --b runs/b/checkpoints/step-40 --samples 8 --seed 1
  python -m engine compare --a runs/p#ref --b runs/p --config examples/local.toml
  python -m engine compare --a base.toml --b tuned.toml --data eval.jsonl \\
      --quality mypkg.rewards:score --pairwise-judge judge.toml

Exit status: 0 done (whatever the verdict), 2 bad input.
"""


def add_compare_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """A/B testing CLI: add the ``compare`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "compare",
        help="A/B test two models with paired statistics",
        description="Answer the same inputs with two models (same seeds), score both, and test "
        "the paired differences B - A: bootstrap CI, permutation p-value, win/tie/loss.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--a", required=True, metavar="SPEC", help="model A, the baseline")
    p.add_argument("--b", required=True, metavar="SPEC", help="model B, the candidate")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="evaluation JSONL (default for checkpoints: the run's held-out split)",
    )
    p.add_argument(
        "--metrics",
        default="quality,diversity,relevance",
        metavar="LIST",
        help=f"comma-separated, among {', '.join(BUILTIN_METRICS)} "
        "(default: quality,diversity,relevance)",
    )
    p.add_argument(
        "--samples",
        type=int_range(1, MAX_SAMPLES),
        default=4,
        metavar="K",
        help="samples per input (4)",
    )
    p.add_argument("--seed", type=int_range(0), default=0, metavar="S", help="seed (0)")
    p.add_argument("--out", metavar="DIR", help="write DIR/comparison.json")
    p.add_argument("--limit", type=int_range(1), metavar="N", help="use at most N inputs")
    p.add_argument(
        "--quality",
        metavar="FN",
        help="quality reward: 'task' (built-in task reward) or 'module:function'",
    )
    p.add_argument(
        "--judge",
        metavar="TOML",
        help="LLM judge as the quality metric: the config's judge endpoint (or endpoint) with "
        "its reward.judge_prompt as the rubric",
    )
    p.add_argument(
        "--pairwise-judge",
        metavar="TOML",
        help="config whose judge endpoint (or endpoint) judges A vs B; its reward.judge_prompt "
        "is the rubric",
    )
    _add_saved_config_args(p)
    p.add_argument(
        "--concurrency",
        type=int_range(1, MAX_CONCURRENCY),
        default=16,
        metavar="N",
        help="calls in flight (16)",
    )
    p.add_argument(
        "--resamples",
        type=int_range(1, MAX_RESAMPLES),
        default=10_000,
        metavar="N",
        help="bootstrap resamples (10000)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _add_saved_config_args(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and ``--trust-saved-config``: what the user gives over each
    checkpoint's saved config (which is data, not authority)."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config over each checkpoint's config (e.g. its [endpoint] and [reward])",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of each checkpoint's config (repeatable), e.g. "
        "--set endpoint.base_url=...",
    )
    p.add_argument(
        "--trust-saved-config",
        action="store_true",
        help="use the endpoint and reward imports a checkpoint names (printed first)",
    )


def _import_function(spec: str) -> Any:
    """``'task'`` or ``'package.module:function'`` -> the function."""
    if spec == "task":
        return task_reward
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"--quality {spec!r}: expected 'task' or 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--quality {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"--quality {spec!r} is not callable")
    return fn


def _saved_config_args(args: argparse.Namespace) -> dict[str, Any]:
    """How a checkpoint spec's saved config is taken: under --config and --set, its endpoint
    and reward imports only with --trust-saved-config."""
    return {
        "config": args.config,
        "overrides": args.overrides,
        "trust_saved_config": args.trust_saved_config,
    }


class _Progress:
    """``compare  37/220 inputs  1.2s``: an updating line on a TTY, a few lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        line = f"compare {done:>5}/{total} inputs  {time.perf_counter() - self.t0:6.1f}s"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line + ("\n" if done == total else ""))
            sys.stderr.flush()
        elif done == total or done % max(1, total // 10) == 0:
            print(line, file=sys.stderr, flush=True)


def _examples(args: argparse.Namespace, a: Generator, b: Generator) -> list[Example]:
    """Blocking: the evaluation inputs from --data or a model's run config."""
    if args.data:
        exs = []
        for ex in read_jsonl(args.data):
            exs.append(ex)
            if args.limit is not None and len(exs) >= args.limit:
                break
        if not exs:
            raise ConfigError(f"{args.data}: no examples", key="--data")
        return exs
    for model in (b, a):
        if isinstance(model, Configured) and model.run_config is not None:
            return heldout_examples(model.run_config, args.limit)
    raise ConfigError("no evaluation data: pass --data FILE", key="--data")


async def compare_command(args: argparse.Namespace) -> int:
    """A/B testing CLI: run ``python -m engine compare``; returns the exit status."""
    check_output_dir(args.out, "--out")  # refused before the comparison, not after it
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    if args.quality and args.judge:
        raise ConfigError("give --quality or --judge, not both")
    quality = _import_function(args.quality) if args.quality else None
    async with AsyncExitStack() as stack:
        a = await load_generator(args.a, **_saved_config_args(args))
        stack.push_async_callback(_aclose, a)
        b = await load_generator(args.b, **_saved_config_args(args))
        stack.push_async_callback(_aclose, b)
        examples = await anyio.to_thread.run_sync(_examples, args, a, b)
        if args.judge:
            client, rubric = await _judge_client(args.judge, stack)
            quality = build_judge(rubric or _QUALITY_RUBRIC, client, name="quality")
        if quality is None and "quality" in metrics:
            quality = await _config_rewarder(a, b, stack)
        pairwise = None
        if args.pairwise_judge:
            client, rubric = await _judge_client(args.pairwise_judge, stack)
            pairwise = PairwiseJudge(client, rubric or _PAIRWISE_RUBRIC)
        try:
            comparator = ModelComparator(
                a,
                b,
                examples,
                metrics,
                samples_per_input=args.samples,
                seed=args.seed,
                quality=quality,
                pairwise_judge=pairwise,
                concurrency=args.concurrency,
                n_resamples=args.resamples,
                on_progress=_Progress(args.quiet),
            )
        except ValueError as exc:  # a metric that cannot be computed with these options
            raise ConfigError(str(exc)) from None
        tune_gc()  # everything is built: freeze it, and collect the young generation rarely
        result = await comparator.compare()
    print(result)
    if args.out:
        out = Path(args.out)

        def write() -> Path:
            ensure_dir(out, follow=True)
            return atomic_write_bytes(out / "comparison.json", result.to_json())

        path = await anyio.to_thread.run_sync(write)
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


_QUALITY_RUBRIC = "Grade the response: is it correct, complete and on topic for the input?"
_PAIRWISE_RUBRIC = "Which response answers the input better: correct, complete, on topic?"


async def _judge_client(path: str, stack: AsyncExitStack) -> tuple[Client, str]:
    """A client on a config's judge endpoint (else its endpoint), closed with ``stack``."""
    config = await anyio.to_thread.run_sync(load_config, path)
    client = make_client(config, judge=True)
    stack.push_async_callback(client.aclose)
    return client, config.reward.judge_prompt


async def _config_rewarder(a: Generator, b: Generator, stack: AsyncExitStack) -> Rewarder | None:
    """The [reward] of B's (else A's) config unless it is a tinylm checkpoint; else None."""
    for model in (b, a):
        config = model.run_config if isinstance(model, Configured) else None
        if config is None or (
            config.policy == "tinylm" and not isinstance(model, EndpointGenerator)
        ):
            continue
        judge_client = None
        if config.reward.judge_prompt.strip():
            judge_client = make_client(config, judge=True)
            stack.push_async_callback(judge_client.aclose)
        return build_rewarder(config, judge_client=judge_client)
    return None


async def _aclose(model: Generator) -> None:
    if isinstance(model, Closeable):
        await model.aclose()
