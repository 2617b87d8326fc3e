"""``python -m engine serve-sim``: serve the simulated OpenAI-compatible server in this process.

The first stdout line is the base URL; it serves until SIGINT or SIGTERM, then prints the final
:class:`~engine.testing.sim.SimStatistics` as one JSON line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson

from ..runtime import event_loop_factory
from ..testing.sim import ALL_FAULT_KINDS, Faults, SimConfig, SimServer
from .args import OneLineParser, finite_float, int_range, print_error

__all__ = ("main",)


def _build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="python -m engine serve-sim",
        description="Serve the simulated OpenAI-compatible server; prints the base URL first.",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int_range(0, 65535), default=8000, help="0 picks a free port")
    ap.add_argument("--seed", type=int_range(0), default=0)
    ap.add_argument("--latency", type=finite_float, default=0.0, help="median seconds per request")
    ap.add_argument("--latency-sigma", type=finite_float, default=0.0, help="log-normal sigma")
    ap.add_argument("--per-token-latency", type=finite_float, default=0.0)
    ap.add_argument("--rpm", type=finite_float, default=None, help="enforced requests per minute")
    ap.add_argument("--tpm", type=finite_float, default=None, help="enforced tokens per minute")
    ap.add_argument("--burst-seconds", type=finite_float, default=60.0)
    ap.add_argument("--honor-n", dest="honor_n", action="store_true", default=True)
    ap.add_argument("--ignore-n", dest="honor_n", action="store_false")
    ap.add_argument(
        "--fault-rate",
        type=finite_float,
        default=0.0,
        help="total fault probability split evenly over every kind but timeout",
    )
    ap.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="a fault rate (repeatable, overrides --fault-rate); kinds: "
        + ", ".join(ALL_FAULT_KINDS),
    )
    ap.add_argument("--hang-seconds", type=finite_float, default=30.0)
    ap.add_argument(
        "--retry-after", type=finite_float, default=0.05, help="seconds asked by 429 faults"
    )
    ap.add_argument("--no-rate-headers", dest="rate_headers", action="store_false", default=True)
    ap.add_argument("--max-concurrency-served", type=int_range(1), default=None)
    ap.add_argument("--keepalive-timeout", type=finite_float, default=5.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument(
        "--strict-models",
        action="store_true",
        help="404 (as vLLM does) for a request naming neither a served model nor a loaded adapter",
    )
    ap.add_argument(
        "--no-runtime-lora",
        dest="runtime_lora",
        action="store_false",
        default=True,
        help="no /v1/load_lora_adapter routes (vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING)",
    )
    ap.add_argument(
        "--max-lora-rank", type=int_range(1, 65536), default=16, help="largest adapter rank loaded"
    )
    ap.add_argument(
        "--usage-cost",
        type=finite_float,
        default=None,
        metavar="USD",
        help="report usage.cost (as OpenRouter does) at USD per prompt + completion token",
    )
    return ap


def _faults_from_args(args: argparse.Namespace) -> Faults:
    extra = {"hang_seconds": args.hang_seconds, "retry_after": args.retry_after}
    rates: dict[str, float] = {}
    for item in args.fault:
        kind, sep, rate = item.partition("=")
        if not sep or kind not in ALL_FAULT_KINDS:
            raise ValueError(
                f"--fault expects KIND=RATE with KIND in {ALL_FAULT_KINDS}, got {item!r}"
            )
        try:
            rates[kind] = finite_float(rate)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--fault {item!r}: {exc}") from None
    return Faults(**rates, **extra) if rates else Faults.spread(args.fault_rate, **extra)


def _config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        seed=args.seed,
        latency=args.latency,
        latency_sigma=args.latency_sigma,
        per_token_latency=args.per_token_latency,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_seconds=args.burst_seconds,
        honor_n=args.honor_n,
        faults=_faults_from_args(args),
        rate_headers=args.rate_headers,
        max_concurrency_served=args.max_concurrency_served,
        api_key=args.api_key,
        keepalive_timeout=args.keepalive_timeout,
        strict_models=args.strict_models,
        runtime_lora=args.runtime_lora,
        max_lora_rank=args.max_lora_rank,
        usage_cost=args.usage_cost,
    )


async def _serve(config: SimConfig, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)
    async with SimServer(config, host=host, port=port) as sim:
        print(sim.base_url, flush=True)
        await stop.wait()
        statistics = orjson.dumps(sim.statistics().as_dict()).decode()
    print(statistics, file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the simulated server until SIGINT/SIGTERM; returns the exit status (2 for bad
    options)."""
    args = _build_parser().parse_args(argv)
    try:
        config = _config_from_args(args)
    except (ValueError, TypeError) as e:
        print_error(str(e))
        return 2
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        try:
            return runner.run(_serve(config, args.host, args.port))
        except OSError as e:  # the address cannot be bound: in use, not ours, not an address
            print_error(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}")
            return 2
