"""Benchmark (endpoint client stage): goodput under server-enforced RPM and TPM limits, against
a minute-window and a one-second-window server, with fair peers.

Two servers enforce the same per-minute limits (``--rpm``, ``--tpm``) over different windows:
a **minute window** (the bucket holds 60 s of rate: a minute's allowance may arrive at once)
and a **one-second window** (it holds 1 s of rate: the same average, no burst). Each arm gets
a fresh simulated server in its own process (``python -m engine serve-sim --burst-seconds W``),
so every arm meets full buckets, and pushes chat requests at ``--concurrency`` for
``--seconds`` (no call starts after that; the wall time runs until the last one ends):

- ``engine``: :class:`engine.endpoints.client.Client`, its default limits config (window
  learning on) with ``rpm``/``tpm`` set to the server's, against a server that sends **no**
  ``x-ratelimit-*`` headers: it learns the window from 429s;
- ``engine+headers``: the same config against a server that sends OpenAI's
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers;
- ``openai``: ``openai.AsyncOpenAI`` as it comes (``max_retries`` 2, no client-side limit);
- ``openai+aiolimiter``: the SDK behind two :class:`aiolimiter.AsyncLimiter` buckets of the
  server's rpm and tpm per minute (``AsyncLimiter(rpm, 60)``: the idiomatic way to add a
  client-side limit), with the engine's retry count
  (``max_retries = RetryConfig().max_attempts - 1``);
- ``openai+aiolimiter-1s``: the same with one-second buckets (``AsyncLimiter(rpm / 60, 1)``):
  what a user who knows the server enforces a one-second window would pick.

Reported per arm: successes, failures, wall time, goodput as a fraction of what the server
allows in that wall time, and the 429 rate (429 responses / all responses, from the server's
own ``/sim/stats``).

What the server allows: both limits are token buckets that start full (``W`` seconds of rate),
so in ``T`` seconds it admits at most ``min(R * W/60 + R/60 * T, (K * W/60 + K/60 * T) / c)``
requests, where ``R`` is rpm, ``K`` tpm and ``c`` the tokens it charges per request (its
estimate, never refunded). Goodput is successes over that.

Scaling: the windows are real (60 s and 1 s) and so are the rates; what is short is the run
(``--seconds``, 20 by default, a third of the long window), so a minute-window server's burst
is most of what it allows in a run, and an arm that gives the burst up scores low. Run::

    python benchmarks/bench_ratelimit.py                        # 2 servers x 5 arms x 20 s
    python benchmarks/bench_ratelimit.py --windows 1 --arms engine,openai+aiolimiter
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
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
CHARGE = len(PROMPT) // 4 + 1 + MAX_TOKENS
"""Tokens the simulator charges per request at admission (its estimate; never refunded)."""
ARMS = ("engine", "engine+headers", "openai", "openai+aiolimiter", "openai+aiolimiter-1s")


def start_server(
    args: argparse.Namespace, window: float, headers: bool
) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "engine", "serve-sim", "--port", "0",
        "--latency", str(args.latency),
        "--rpm", str(args.rpm),
        "--tpm", str(args.tpm),
        "--burst-seconds", str(window),
    ]  # fmt: skip
    if not headers:
        cmd.append("--no-rate-headers")
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


async def drive(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> dict:
    ok = failed = 0
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    stop = t0 + seconds

    async def worker() -> None:
        nonlocal ok, failed
        while time.perf_counter() < stop:
            try:
                await call()
                ok += 1
            except Exception as e:
                failed += 1
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"ok": ok, "failed": failed, "wall": time.perf_counter() - t0, "errors": errors}


async def drive_phases(call: Callable[[], Awaitable[object]], args: argparse.Namespace) -> dict:
    """``args.phases`` rounds of :func:`drive` with ``args.pause`` seconds of no requests
    between them (a training step's quiet spell); per-phase walls in ``walls``."""
    t0 = time.perf_counter()
    out: dict = {"ok": 0, "failed": 0, "errors": {}, "walls": [], "phase_ok": []}
    for k in range(args.phases):
        if k:
            await asyncio.sleep(args.pause)
        phase = await drive(call, args.concurrency, args.seconds)
        out["ok"] += phase["ok"]
        out["failed"] += phase["failed"]
        for name, n in phase["errors"].items():
            out["errors"][name] = out["errors"].get(name, 0) + n
        out["walls"].append(phase["wall"])
        out["phase_ok"].append(phase["ok"])
    out["wall"] = sum(out["walls"])
    out["elapsed"] = time.perf_counter() - t0
    return out


async def run_engine(url: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        events = EventLog(Path(tmp) / "events.jsonl")
        cfg = EndpointConfig(base_url=url, model="sim-model", max_tokens=MAX_TOKENS,
                             deadline=args.deadline)  # fmt: skip
        # the defaults, with the server's limits; the sim, like OpenAI, charges max_tokens
        # up front and never refunds, so refunds are off (as for OpenAI)
        limits = LimitsConfig(rpm=args.rpm, tpm=args.tpm, max_concurrency=args.concurrency,
                              tpm_refund=False)  # fmt: skip
        async with Client(cfg, limits=limits, retry=RetryConfig(), events=events,
                          api_key=FAKE_KEY) as client:  # fmt: skip

            async def call() -> object:
                return await client.complete(PROMPT)

            out = await drive_phases(call, args)
            s = client.statistics().limiter
            assert s is not None
            out["client"] = (f"learned windows: requests {s.request_window:.3g} s, tokens "
                             f"{s.token_window:.3g} s ({s.window_learning})")  # fmt: skip
        events.close()
    return out


async def run_openai(url: str, args: argparse.Namespace, *, period: float | None) -> dict:
    """The SDK, bare (``period`` None) or behind aiolimiter buckets of ``period`` seconds."""
    import openai
    from aiolimiter import AsyncLimiter

    limited = period is not None
    retries = RetryConfig().max_attempts - 1 if limited else openai.DEFAULT_MAX_RETRIES
    client = openai.AsyncOpenAI(base_url=url, api_key=FAKE_KEY, max_retries=retries)
    p = period or 60.0
    rpm = AsyncLimiter(args.rpm * p / 60.0, p)
    tpm = AsyncLimiter(args.tpm * p / 60.0, p)
    try:

        async def call() -> object:
            if limited:
                await rpm.acquire()
                await tpm.acquire(CHARGE)
            return await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=MAX_TOKENS,
            )

        out = await drive_phases(call, args)
        out["client"] = f"max_retries={client.max_retries}" + (
            f", AsyncLimiter({rpm.max_rate:g}, {p:g}) + AsyncLimiter({tpm.max_rate:g}, {p:g})"
            if limited
            else ""
        )
    finally:
        await client.close()
    return out


def admits(args: argparse.Namespace, window: float, charge: int, wall: float) -> float:
    """Requests the server admits at most in ``wall`` seconds from full buckets."""
    b = window / 60.0
    by_rpm = args.rpm * b + args.rpm / 60.0 * wall
    by_tpm = (args.tpm * b + args.tpm / 60.0 * wall) / charge
    return min(by_rpm, by_tpm)


def allowed(args: argparse.Namespace, window: float, charge: int, out: dict) -> float:
    """Requests the server admits at most over the run's phases (its buckets start full).

    A bucket of ``W`` seconds admits at most ``W + T`` seconds of rate in any ``T`` seconds:
    so at most the sum over the phases of a full bucket and its refill, and at most one
    full bucket and the refill over the whole run, pauses included; the smaller counts."""
    walls = out.get("walls", [out["wall"]])
    per_phase = sum(admits(args, window, charge, wall) for wall in walls)
    whole = admits(args, window, charge, out.get("elapsed", out["wall"]))
    return min(per_phase, whole)


def phase_goodputs(args: argparse.Namespace, window: float, charge: int, out: dict) -> str:
    """Each phase's goodput (after a pause of at least the window the buckets are full)."""
    pairs = zip(out["phase_ok"], out["walls"], strict=True)
    return ", ".join(f"{ok / admits(args, window, charge, wall):.3f}" for ok, wall in pairs)


async def run_arm(arm: str, window: float, args: argparse.Namespace) -> tuple[dict, dict]:
    proc, url = start_server(args, window, headers=arm != "engine")
    try:
        if arm.startswith("engine"):
            out = await run_engine(url, args)
        else:
            periods = {"openai": None, "openai+aiolimiter": 60.0, "openai+aiolimiter-1s": 1.0}
            out = await run_openai(url, args, period=periods[arm])
        stats = server_stats(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return out, stats


async def bench(args: argparse.Namespace) -> None:
    import openai

    charge = CHARGE
    steady = min(args.rpm, args.tpm / charge)
    print(
        f"servers: rpm {args.rpm:g}, tpm {args.tpm:g} (charged {charge} tokens/request: "
        f"{steady:.0f} requests/min steady), windows {args.windows}, latency {args.latency} s; "
        f"{args.seconds:g} s per arm at concurrency {args.concurrency}"
        + (f" x {args.phases} phases, {args.pause:g} s apart" if args.phases > 1 else "")
        + "; "
        f"openai {openai.__version__}",
        flush=True,
    )
    rows = []
    for window in (float(w) for w in args.windows.split(",")):
        for arm in args.arms.split(","):
            if arm not in ARMS:
                raise SystemExit(f"--arms: unknown arm {arm!r}; expected some of {ARMS}")
            out, stats = await run_arm(arm, window, args)
            by_status = {int(k): v for k, v in stats["by_status"].items()}  # type: ignore[union-attr]
            responses = sum(by_status.values())
            r429 = by_status.get(429, 0)
            goodput = out["ok"] / allowed(args, window, charge, out)

            rows.append((window, arm, out, responses, r429, goodput))
            phases = (
                f"; per phase: ok {out['phase_ok']}, "
                f"goodput {phase_goodputs(args, window, charge, out)}"
            )
            print(
                f"window {window:g} s, {arm}: {out['ok']} ok, {out['failed']} failed "
                f"{out['errors']}, {out['wall']:.1f} s, goodput {goodput:.3f} of allowed, "
                f"429s {r429}/{responses} = {r429 / max(responses, 1):.2%}; {out['client']}"
                + (phases if args.phases > 1 else ""),
                flush=True,
            )
    print()
    print("| server window | client | ok | failed | wall s | goodput | 429 rate |")
    print("|---|---|---|---|---|---|---|")
    for window, arm, out, responses, r429, goodput in rows:
        print(
            f"| {window:g} s | {arm} | {out['ok']} | {out['failed']} | {out['wall']:.1f} | "
            f"{goodput:.3f} | {r429 / max(responses, 1):.2%} ({r429} of {responses}) |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of calls per arm")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rpm", type=float, default=1200.0)
    ap.add_argument("--tpm", type=float, default=36_000.0)
    ap.add_argument("--windows", default="60,1", help="server windows (bucket seconds)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--deadline", type=float, default=300.0, help="engine per-request deadline")
    ap.add_argument(
        "--phases",
        type=int,
        default=1,
        help="phases of --seconds of calls per arm, on one client and one server",
    )
    ap.add_argument(
        "--pause",
        type=float,
        default=60.0,
        help="seconds with no calls between phases (a quiet spell: the buckets refill)",
    )
    args = ap.parse_args()
    # the engine's retry logs are debug lines; keep the benchmark's output to its results
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("openai").setLevel(logging.WARNING)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
