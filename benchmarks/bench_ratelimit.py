"""Benchmark (endpoint client stage): goodput under server-enforced RPM and TPM limits.

For each client a fresh simulated server is started in its own process
(``python -m engine serve-sim --rpm 600 --tpm ... --latency 0.05``), so both meet full
buckets, then ``--requests`` chat requests are pushed through at ``--concurrency``:

- ``engine``: :class:`engine.endpoints.client.Client` with limits set to the server's
  (``rpm``, ``tpm``),
  its retries and the shared 429 gate;
- ``openai``: ``openai.AsyncOpenAI`` with its own retries (``max_retries`` default, 2).

Reported per client: successes, failed requests, wall time, goodput as a fraction of what the
server allows in that wall time, and the 429 rate (429 responses / all responses, from the
server's own ``/sim/stats``).

What the server allows: both limits are token buckets that start full (``burst_seconds`` of
rate), so in ``T`` seconds it admits at most ``min(R * b/60 + R/60 * T, (K * b/60 + K/60 * T) / c)``
requests, where ``R`` is rpm, ``K`` tpm, ``b`` the burst seconds and ``c`` the tokens it charges
per request (``len(prompt) // 4 + 1 + max_tokens``, its estimate, never refunded). Goodput is
successes over that. Run::

    python benchmarks/bench_ratelimit.py                   # 2,000 requests: about 3-4 minutes each
    python benchmarks/bench_ratelimit.py --requests 500 --burst-seconds 1
    python benchmarks/bench_ratelimit.py --requests 500 --burst-seconds 1 --client-burst-seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.sections import EndpointConfig, LimitsConfig, RetryConfig
from engine.endpoints.client import Client
from engine.telemetry.events import EventLog

PROMPT = "Write one short sentence about group relative policy optimization."
MAX_TOKENS = 16
FAKE_KEY = "sk-bench-not-a-real-key"


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "serve-sim",
        "--port",
        "0",
        "--latency",
        str(args.latency),
        "--rpm",
        str(args.rpm),
        "--tpm",
        str(args.tpm),
        "--burst-seconds",
        str(args.burst_seconds),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"simulated server did not start: {url!r}")
    return proc, url


def server_stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats", timeout=10) as r:
        return orjson.loads(r.read())


async def drive(call: Callable[[], Awaitable[object]], concurrency: int, total: int) -> dict:
    remaining = total
    ok = failed = 0
    errors: dict[str, int] = {}

    async def worker() -> None:
        nonlocal remaining, ok, failed
        while remaining > 0:
            remaining -= 1
            try:
                await call()
                ok += 1
            except Exception as e:
                failed += 1
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"ok": ok, "failed": failed, "wall": time.perf_counter() - t0, "errors": errors}


async def run_engine(url: str, args: argparse.Namespace, tmp: Path) -> dict:
    events = EventLog(tmp / "events.jsonl")
    cfg = EndpointConfig(
        base_url=url, model="sim-model", max_tokens=MAX_TOKENS, deadline=args.deadline
    )
    limits = LimitsConfig(  # the sim, like OpenAI, charges max_tokens up front: no refunds
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrency=args.concurrency,
        adaptive=args.adaptive,
        tpm_refund=False,
        burst_seconds=args.client_burst_seconds,
    )
    async with Client(
        cfg, limits=limits, retry=RetryConfig(), events=events, api_key=FAKE_KEY
    ) as client:

        async def call() -> object:
            return await client.complete(PROMPT)

        out = await drive(call, args.concurrency, args.requests)
        out["client"] = client.statistics()
    events.close()
    return out


async def run_openai(url: str, args: argparse.Namespace, tmp: Path) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key=FAKE_KEY)  # max_retries default
    try:

        async def call() -> object:
            return await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=MAX_TOKENS,
            )

        out = await drive(call, args.concurrency, args.requests)
        out["client"] = f"max_retries={client.max_retries}"
    finally:
        await client.close()
    return out


def allowed(args: argparse.Namespace, wall: float) -> float:
    """Requests the server admits at most in ``wall`` seconds (both buckets start full)."""
    charge = len(PROMPT) // 4 + 1 + MAX_TOKENS
    b = args.burst_seconds / 60.0
    by_rpm = args.rpm * b + args.rpm / 60.0 * wall
    by_tpm = (args.tpm * b + args.tpm / 60.0 * wall) / charge
    return min(by_rpm, by_tpm)


async def bench(args: argparse.Namespace) -> None:
    import tempfile

    import openai

    charge = len(PROMPT) // 4 + 1 + MAX_TOKENS
    steady = min(args.rpm, args.tpm / charge)
    print(
        f"server: rpm {args.rpm:g}, tpm {args.tpm:g} (charged {charge} tokens/request, so "
        f"{steady:.0f} requests/min steady), burst {args.burst_seconds:g} s, latency "
        f"{args.latency} s; {args.requests} requests at concurrency {args.concurrency}; "
        f"openai {openai.__version__}",
        flush=True,
    )
    rows = []
    runners = {"engine": run_engine, "openai": run_openai}
    for name in args.clients.split(","):
        proc, url = start_server(args)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                out = await runners[name](url, args, Path(tmp))
            stats = server_stats(url)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        by_status = {int(k): v for k, v in stats["by_status"].items()}  # type: ignore[union-attr]
        responses = sum(by_status.values())
        r429 = by_status.get(429, 0)
        goodput = out["ok"] / allowed(args, out["wall"])
        rows.append((name, out, responses, r429, goodput))
        print(
            f"{name}: {out['ok']} ok, {out['failed']} failed {out['errors']}, "
            f"{out['wall']:.1f} s, goodput {goodput:.2f} of allowed, "
            f"429s {r429}/{responses} = {r429 / max(responses, 1):.1%}; {out['client']}",
            flush=True,
        )
    print()
    print(
        f"{'client':8s} {'ok':>6s} {'failed':>7s} {'wall s':>7s} {'ok/min':>7s} "
        f"{'goodput':>8s} {'429 rate':>9s}"
    )
    for name, out, responses, r429, goodput in rows:
        print(
            f"{name:8s} {out['ok']:6d} {out['failed']:7d} {out['wall']:7.1f} "
            f"{60 * out['ok'] / out['wall']:7.0f} {goodput:8.2f} {r429 / max(responses, 1):9.1%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rpm", type=float, default=600.0)
    ap.add_argument("--tpm", type=float, default=18_000.0)
    ap.add_argument("--burst-seconds", type=float, default=60.0, help="server bucket size")
    ap.add_argument(
        "--client-burst-seconds",
        type=float,
        default=1.0,
        help="engine: limits.burst_seconds (its own buckets' size; 1 is the engine default)",
    )
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--deadline", type=float, default=300.0, help="engine per-request deadline")
    ap.add_argument("--clients", default="engine,openai")
    ap.add_argument("--adaptive", action="store_true", help="engine: AIMD concurrency")
    args = ap.parse_args()
    # the engine's retry logs are debug lines; keep the benchmark's output to its results
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
