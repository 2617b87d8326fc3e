"""Load: a soak at more than 1,000 requests in flight, the client process measured alone.

"Ten minutes' worth of requests, compressed": 60,000 requests, which is ten minutes at
6,000 requests per minute, sent as fast as the simulated server (in its own process, answering
each request after about two seconds, with 0.9% faults) lets 1,100 concurrent callers go, after a
warm-up of 1,100 requests that opens every connection (all callers start in the same instant:
a burst, reported apart). The client runs in a process of its own too
(:mod:`.soak_client`), with the garbage collector tuned as ``python -m engine`` tunes it
(:func:`engine.runtime.tune_gc`), and measures itself: resident memory after the warm-up and at
the end (flat), open file descriptors and asyncio tasks before the client exists and after it
is closed (equal), and the event loop's lag, sampled by a ticker every 10 ms: no stall over
100 ms, in the burst or after it (the loop thread never runs 100 ms of CPU without yielding,
CPython's garbage collections included; their pauses are also reported apart), and a
wall-clock lag, which also counts time the OS gave to other processes, under 250 ms (the long
version; the CI version accepts 3 s, so that it holds on a loaded machine). CI sends 2,200
requests after the warm-up; ``pytest -m slow`` sends the 60,000.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.testing.sim import FAULT_KINDS

from .soak_client import CALLERS
from .support import REPO, engine_env, record

SIM_LATENCY = 2.0
"""Median seconds the sim takes per request: 1,100 callers then send about 550 requests per
second, so a pause of the server (its own garbage collections) backs up some 50 answers, which
the client works through in one loop iteration (about 0.5 ms of CPU each)."""
MAX_STALL_MS = 100.0
"""The longest acceptable event-loop stall: CPU milliseconds of the loop thread in one tick,
garbage collections included (a collection at 1,100 requests in flight scans some 70,000
objects: 45-95 ms)."""
SOAK_SPARED = ("timeout", "short_n")
"""Fault kinds left out of the soak: hangs (the fault suite has them) and short choices, after
which the client fans ``n > 1`` calls out (asking natively every 64th; the fault suite covers
that path)."""
MAX_LAG_MS = 250.0
"""The longest acceptable wall-clock lag of a tick in the long version (``-m slow``), a
measurement for a machine doing little else: the lag includes time the OS ran other processes
(the machine has 2 cores, and the server and the test runner are busy too)."""
LOADED_MAX_LAG_MS = 3_000.0
"""The wall-clock lag the CI version accepts: it must hold on a loaded 2-core machine (two
CPU-bound processes beside the suite), where a tick can wake a few hundred milliseconds late
for want of a core, not because the loop is blocked; :data:`MAX_STALL_MS`, in the loop
thread's own CPU time, is what shows the loop yields. A loop stuck for seconds still fails."""
LOADED_MIN_SERVER_IN_FLIGHT = CALLERS // 2
"""The fewest requests the CI version needs in flight at the server at once (the long version
needs 1,000). The client always holds its 1,100 callers in flight (checked as is), but on a
loaded machine it reads answers later than the server sends them, so fewer of its requests
are at the server at any one moment (926 in one loaded run)."""


@asynccontextmanager
async def sim_process(*args: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The simulated server in its own process: (base URL, its final statistics once it ends)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "serve-sim", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=engine_env(), cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    final: dict[str, Any] = {}
    try:
        async with asyncio.timeout(30):
            url = (await proc.stdout.readline()).decode().strip()
        assert url.startswith("http://"), url
        yield url, final
    finally:
        proc.terminate()
        _, err = await proc.communicate()
        lines = err.decode().strip().splitlines()
        if lines and lines[-1].startswith("{"):
            final.update(orjson.loads(lines[-1]))


async def soak(
    tmp: Path, total: int, name: str, max_lag_ms: float, min_server_in_flight: int
) -> dict[str, Any]:
    """Run the soak client against a sim process; check and return the figures."""
    faults = [f"--fault={kind}=0.001" for kind in FAULT_KINDS if kind not in SOAK_SPARED]
    async with sim_process(
        "--latency", str(SIM_LATENCY), "--latency-sigma", "0.3", "--retry-after", "0.01", *faults
    ) as (url, sim):  # fmt: skip
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.reliability.soak_client", url, str(total),
            str(tmp / "events.jsonl"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=engine_env(), cwd=REPO,
        )  # fmt: skip
        out, err = await client.communicate()
        assert client.returncode == 0, err.decode()[-3000:]
    figures = orjson.loads(out.splitlines()[-1])
    figures["server_max_in_flight"] = sim.get("max_in_flight")
    figures["server_faults"] = sum(sim.get("faults", {}).values())
    record(name, figures)
    assert figures["failures"] == 0 and figures["requests"] == CALLERS + total, figures
    assert figures["server_max_in_flight"] >= min_server_in_flight, figures
    assert figures["client_max_in_flight"] >= 1000, figures
    growth = figures["rss_end_mb"] - figures["rss_start_mb"]
    assert growth < max(20.0, 0.1 * figures["rss_start_mb"]), figures
    assert figures["max_loop_stall_cpu_ms"] < MAX_STALL_MS, figures
    assert figures["warmup_max_stall_cpu_ms"] < MAX_STALL_MS, figures
    assert figures["max_loop_lag_ms"] < max_lag_ms, figures
    assert figures["fds_after"] == figures["fds_before"], figures
    assert figures["tasks_after"] == figures["tasks_before"], figures
    assert (tmp / "events.jsonl").read_bytes().count(b"\n") >= CALLERS + total
    return figures


async def test_soak_short(tmp_path: Path) -> None:
    """2,200 requests at 1,100 in flight: memory flat, no fd or task leak, no stall >100 ms."""
    await soak(tmp_path, 2 * CALLERS, "soak-ci", LOADED_MAX_LAG_MS, LOADED_MIN_SERVER_IN_FLIGHT)


@pytest.mark.slow
async def test_soak_ten_minutes_compressed(tmp_path: Path) -> None:
    """60,000 requests (10 minutes at 6,000/min) at 1,100 in flight: the same checks."""
    await soak(tmp_path, 60_000, "soak-slow", MAX_LAG_MS, 1000)
