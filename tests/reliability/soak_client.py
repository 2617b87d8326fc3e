"""The client side of the soak (``test_soak.py``), run in a process of its own.

``python -m tests.reliability.soak_client URL TOTAL EVENTS`` sends ``CALLERS`` warm-up requests
and then ``TOTAL`` more to the simulated server at ``URL`` with ``CALLERS`` concurrent callers
through one :class:`~engine.endpoints.client.Client`, measures this process (resident memory,
open file descriptors, asyncio tasks, event-loop lag) and prints the figures as one JSON line.
A process of its own, so that what is measured is the engine as ``python -m engine`` runs it,
not a test runner's heap of test modules and plugins: it tunes the garbage collector as the CLI does
(:func:`engine.runtime.tune_gc`), unless ``ENGINE_SOAK_GC=off`` (CPython's defaults, for
comparison) or ``ENGINE_SOAK_GC=N`` (young threshold ``N``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.config.sections import EndpointConfig, LimitsConfig, RetryConfig
from engine.endpoints.client import Client
from engine.runtime import YOUNG_THRESHOLD, tune_gc
from engine.telemetry.events import EventLog

CALLERS = 1100
"""Concurrent callers, each sending its next request as soon as the last one returns."""
TICK = 0.01
"""The lag ticker's period, seconds."""


def rss_mb() -> float:
    """Resident set size of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")  # pragma: no cover


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raise_fd_limit(need: int) -> None:
    """Raise the soft limit on open files to at least ``need`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target < need:
            raise SystemExit(f"the hard limit on open files ({hard}) is below {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass
class Soak:
    """What one soak measured."""

    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    measuring: bool = False  # past the warm-up
    lags: list[float] = field(default_factory=list)  # wall-clock lag of each tick
    stalls: list[float] = field(default_factory=list)  # loop-thread CPU seconds in each tick
    warmup_stall: float = 0.0  # the longest during the warm-up (all callers start at once)
    warm: asyncio.Event = field(default_factory=asyncio.Event)  # set when the warm-up is done
    gc_pauses: list[tuple[int, float]] = field(default_factory=list)  # (generation, CPU s)
    gc_cpu: float = 0.0  # loop-thread CPU seconds spent in garbage collection so far
    own_stalls: list[float] = field(default_factory=list)  # each tick's CPU minus its GC


async def ticker(soak: Soak, stop: asyncio.Event) -> None:
    """Sample the event loop's lag: how late each 10 ms sleep wakes up, in wall-clock time
    and in CPU time of the loop's thread, with and without the time CPython's garbage
    collector took in it. A stall is CPU time spent without yielding; wall-clock lag also
    counts time the OS ran other processes."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t, cpu, gc_cpu = loop.time(), time.thread_time(), soak.gc_cpu
        await asyncio.sleep(TICK)
        if soak.measuring:
            soak.lags.append(loop.time() - t - TICK)
            soak.stalls.append(time.thread_time() - cpu)
            soak.own_stalls.append(soak.stalls[-1] - (soak.gc_cpu - gc_cpu))
        else:
            soak.warmup_stall = max(soak.warmup_stall, time.thread_time() - cpu)


def watch_gc(soak: Soak) -> Any:
    """Add up the CPU time of garbage collections, and record each pause once measuring."""
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
            return
        pause = time.thread_time() - started[0]
        soak.gc_cpu += pause
        if soak.measuring:
            soak.gc_pauses.append((info["generation"], pause))

    gc.callbacks.append(callback)
    return callback


async def callers(client: Client, soak: Soak, total: int, events: EventLog) -> None:
    """CALLERS tasks sending requests until ``total`` have been sent."""
    next_id = 0

    async def caller() -> None:
        nonlocal next_id
        while next_id < total:
            i = next_id
            next_id += 1
            soak.in_flight += 1
            soak.max_in_flight = max(soak.max_in_flight, soak.in_flight)
            try:
                await client.complete(f"soak request {i}: say something", n=1 + i % 3,
                                      group_id=f"{i // 1000}-{i % 1000}")  # fmt: skip
            except Exception:
                soak.failures += 1
            finally:
                soak.in_flight -= 1
            soak.requests += 1
            if soak.requests == CALLERS:
                soak.warm.set()
            if soak.requests % 5000 == 0:  # as the trainer does at each step
                events.step_metrics(i // 1000)

    async with asyncio.TaskGroup() as tg:
        for _ in range(CALLERS):
            tg.create_task(caller())


async def soak(url: str, total: int, events_path: str) -> dict[str, Any]:
    """The soak; returns its figures."""
    fds_before, tasks_before = open_fds(), len(asyncio.all_tasks())
    events = EventLog(events_path)
    client = Client(
        EndpointConfig(base_url=url, max_tokens=16, timeout=10.0, deadline=60.0),
        limits=LimitsConfig(max_concurrency=CALLERS + 100),
        retry=RetryConfig(max_attempts=6, backoff_base=0.01, backoff_cap=0.1),
        events=events,
    )
    s, stop = Soak(), asyncio.Event()
    marks: dict[str, float] = {}
    gc_callback = watch_gc(s)
    gc_mode = os.environ.get("ENGINE_SOAK_GC", "")  # "off": CPython's defaults; a number:
    if gc_mode != "off":  # that young threshold; else as python -m engine does once it is built
        tune_gc(int(gc_mode) if gc_mode else YOUNG_THRESHOLD)

    async def after_warmup() -> None:  # every connection is open by then
        await s.warm.wait()
        marks.update(rss=rss_mb(), t=time.perf_counter(), cpu=time.process_time())
        marks["blocks"] = sys.getallocatedblocks()
        s.measuring = True

    async with client:
        tick = asyncio.create_task(ticker(s, stop))
        warm = asyncio.create_task(after_warmup())
        await callers(client, s, CALLERS + total, events)
        elapsed, cpu = time.perf_counter() - marks["t"], time.process_time() - marks["cpu"]
        rss_end, blocks_end = rss_mb(), sys.getallocatedblocks()
        stop.set()
        await tick
        await warm
        stats = client.statistics()
    events.close()
    gc.callbacks.remove(gc_callback)
    for _ in range(5):  # let closed transports release their sockets
        await asyncio.sleep(0.05)
    lags = sorted(s.lags)
    return {
        "requests": s.requests,
        "failures": s.failures,
        "http_attempts": stats.attempts,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(total / elapsed),
        "client_cpu_percent": round(100 * cpu / elapsed),
        "client_max_in_flight": s.max_in_flight,
        "rss_start_mb": round(marks["rss"], 1),
        "rss_end_mb": round(rss_end, 1),
        "allocated_blocks_start": marks["blocks"],
        "allocated_blocks_end": blocks_end,
        "max_loop_stall_cpu_ms": round(1000 * max(s.stalls), 1),
        "max_loop_stall_cpu_ms_without_gc": round(1000 * max(s.own_stalls), 1),
        "max_gc_pause_cpu_ms": round(1000 * max((p for _, p in s.gc_pauses), default=0.0), 1),
        "gc_collections": len(s.gc_pauses),
        "gen2_collections": sum(1 for g, _ in s.gc_pauses if g == 2),
        "warmup_max_stall_cpu_ms": round(1000 * s.warmup_stall, 1),
        "max_loop_lag_ms": round(1000 * lags[-1], 1),
        "p99_loop_lag_ms": round(1000 * lags[int(0.99 * len(lags))], 1),
        "ticks": len(lags),
        "fds_before": fds_before,
        "fds_after": open_fds(),
        "tasks_before": tasks_before,
        "tasks_after": len(asyncio.all_tasks()),
    }


def main(argv: list[str]) -> int:
    url, total, events_path = argv[0], int(argv[1]), argv[2]
    raise_fd_limit(CALLERS + 512)
    figures = asyncio.run(soak(url, total, events_path))
    sys.stdout.write(orjson.dumps(figures).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
