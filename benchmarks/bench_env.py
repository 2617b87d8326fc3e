"""Code-task episodes per second through the sandbox, at rising concurrency, against a loop.

Each episode scores one answer to a problem of the built-in ``code`` dataset with the
``unit_tests`` reward: the answer's code and the problem's tests run in the sandbox (launcher,
user + network + PID namespaces, limits, the harness). The answers cycle through the canned
kinds of the simulated server (correct, half right, stub), so the tests' own work is that of
the code task.

The peer, in the same run: a sequential loop that runs the same harness on the same files as
a plain subprocess per episode (``python -I``, a fresh directory, no isolation), one at a
time, the way a synchronous trainer would score code; and the same loop with ``-S`` (no
site-packages, as the sandbox runs code by default).

Where the time goes (concurrency 1, medians): ``spawn`` (fork and exec of the launcher),
``launcher`` (its interpreter start), ``isolate`` (unshare of the namespaces), ``setup``
(limits and fork of the code's process), ``code`` (the code's process: the harness, the
solution and its tests, the exit); an empty program through the sandbox is measured apart, so
``code`` minus it is the code itself.

    python benchmarks/bench_env.py [--episodes 48] [--levels 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from engine.config.sections import SandboxConfig
from engine.data import datasets
from engine.sandbox import Sandbox
from engine.sandbox.unit_tests import HARNESS, TestOutcome, extract_code, run_unit_tests
from engine.testing.sim.code import canned_code
from engine.types import Example


def episodes(n: int) -> list[tuple[Example, str]]:
    """``n`` (problem, solution code) pairs: the canned kinds in turn, no prose."""
    problems = datasets.load("code")
    out: list[tuple[Example, str]] = []
    number = 0
    while len(out) < n:
        ex = problems[len(out) % len(problems)]
        number += 1
        answer = canned_code(ex.text, 1.0, None, 0, number, 0)
        code = extract_code(answer or "", ex.meta["entry_point"])
        if code.strip() and not code.startswith("The function"):
            out.append((ex, code))
    return out


def plain_episode(code: str, tests: list[str], seconds: float, site: bool = True) -> float:
    """The peer: the harness as a plain subprocess in a fresh directory; the fraction passed."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-plain-"))
    try:
        (workdir / "solution.py").write_text(code)
        (workdir / "tests.json").write_bytes(
            orjson.dumps({"tests": tests, "test_seconds": seconds})
        )
        read_fd, write_fd = os.pipe()
        nonce = secrets.token_hex(16)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "SANDBOX_CHANNEL_FD": str(write_fd)}
        with subprocess.Popen(
            [sys.executable, "-I", *(() if site else ("-S",)), HARNESS],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
        ) as proc:
            os.close(write_fd)
            assert proc.stdin is not None
            proc.stdin.write((nonce + "\n").encode())
            proc.stdin.close()
            with os.fdopen(read_fd, "rb") as fh:
                reports = fh.read().decode()
            proc.wait(timeout=60)
        passed = sum(
            1 for line in reports.splitlines() if line.startswith(nonce) and line.endswith("pass")
        )
        return passed / len(tests)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sequential(
    work: list[tuple[Example, str]], seconds: float, site: bool = True
) -> tuple[float, list[float]]:
    """Episodes per second of the plain loop, and its rewards."""
    t0 = time.perf_counter()
    rewards = [plain_episode(code, ex.meta["tests"], seconds, site) for ex, code in work]
    return len(work) / (time.perf_counter() - t0), rewards


async def interpreter_start(repeats: int = 12) -> float:
    """Median ``code`` time of an empty program through the sandbox: the code's process
    with nothing to run (its start and exit, the PID and network namespaces' end)."""
    sandbox = Sandbox(SandboxConfig(max_concurrency=1))
    runs = [await sandbox.run("pass") for _ in range(repeats)]
    return statistics.median(r.timings["code"] for r in runs)


async def sandboxed(
    work: list[tuple[Example, str]], concurrency: int
) -> tuple[float, list[TestOutcome]]:
    """Episodes per second through the sandbox at ``concurrency``, and the outcomes."""
    sandbox = Sandbox(SandboxConfig(max_concurrency=concurrency, wall_seconds=30.0))
    await sandbox.check()
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(
        *(run_unit_tests(sandbox, code, ex.meta["tests"]) for ex, code in work)
    )
    return len(work) / (time.perf_counter() - t0), list(outcomes)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--levels", default="1,2,4,8,16")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    work = episodes(args.episodes)
    seconds = SandboxConfig().test_seconds
    print(f"{len(work)} code-task episodes, {os.cpu_count()} cores, load {os.getloadavg()}")
    start = await interpreter_start()
    loop_rate, loop_rewards = await asyncio.to_thread(sequential, work, seconds)
    bare_rate, _ = await asyncio.to_thread(sequential, work, seconds, False)
    rows = []
    breakdown: dict[str, float] = {}
    for c in levels:
        rate, outcomes = await sandboxed(work, c)
        assert [o.fraction for o in outcomes] == loop_rewards  # the same scores
        if c == 1:
            keys = outcomes[0].run.timings.keys()
            breakdown = {k: statistics.median(o.run.timings[k] for o in outcomes) for k in keys}
        rows.append((c, rate))
    loop_rate2, _ = await asyncio.to_thread(sequential, work, seconds)  # the peer again
    peer = (loop_rate + loop_rate2) / 2
    print(f"\nmean reward {statistics.fmean(loop_rewards):.3f} (sandbox and loop agree)")
    print("\n| runner | concurrency | episodes/s | x sequential loop |")
    print("|---|---|---|---|")
    print(f"| plain subprocess loop, `python -I` (peer, mean of 2) | 1 | {peer:.2f} | 1.00 |")
    print(
        f"| plain subprocess loop, `python -I -S` (no site, as the sandbox's code) | 1 | "
        f"{bare_rate:.2f} | {bare_rate / peer:.2f} |"
    )
    for c, rate in rows:
        print(f"| sandbox | {c} | {rate:.2f} | {rate / peer:.2f} |")
    total = sum(breakdown.values())
    print("\nwhere an episode's time goes (sandbox, concurrency 1, medians):\n")
    print("| part | ms | share |")
    print("|---|---|---|")
    for k, v in breakdown.items():
        print(f"| {k} | {v * 1e3:.1f} | {v / total:.0%} |")
    print(f"| total | {total * 1e3:.1f} | 100% |")
    itself = (breakdown["code"] - start) * 1e3
    print("\nthe code's process alone (an empty program's `code`: its start and exit, the")
    print(f"namespace's end): {start * 1e3:.1f} ms, so the code itself (harness, solution, tests)")
    print(f"is about {itself:.1f} ms of `code`; the peer's whole episode: {1e3 / peer:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
