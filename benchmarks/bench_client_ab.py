"""Benchmark: the client's CPU per request against bare aiohttp's, two versions of the engine
side by side (e.g. a branch and the commit before it).

Each round runs, for every tree in turn, one process that alternates bare aiohttp and the
engine (``bench_client``'s ``engine-matched`` arm: every feature on, ``max_concurrency = c``)
``--pairs`` times against its own simulated server, and prints the engine/bare ratios of
each pair: the ratio is taken inside one process a few seconds apart, so the load of a
shared machine hits both arms alike; the rounds alternate the trees so that it hits both
trees alike. Run::

    git archive dd8e753 | tar -x -C /tmp/before        # the tree to compare with
    python benchmarks/bench_client_ab.py /tmp/before . --rounds 5 --gc cli
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


async def _pairs(conc: int, total: int, pairs: int, mode: str) -> None:
    """In a tree's own process: ``pairs`` alternations of bare aiohttp and the engine."""
    # the tree's engine first (bench_client, this branch's, would put its own root first)
    sys.path.insert(0, os.getcwd())
    import engine

    print(f"ENGINE {engine.__file__}", flush=True)
    sys.path.insert(1, str(HERE.parent))
    import bench_client as bc

    warm = max(2 * conc, 200)
    with (
        bc.server_process(0.05) as url,
        tempfile.TemporaryDirectory() as tmp,
        bc.gc_settings(mode),
    ):
        for _ in range(pairs):
            bare = await bc.run_bare(url, conc, total, warm)
            eng = await bc.run_engine(url, conc, total, warm, Path(tmp), True)
            print(f"PAIR {eng.cpu_us / bare.cpu_us:.3f} {eng.rps / bare.rps:.3f} "
                  f"{bare.cpu_us:.0f} {eng.cpu_us:.0f}", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", help="repository roots to compare (each needs engine/)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=2, help="bare/engine pairs per process")
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--gc", choices=["default", "cli"], default="cli")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # inside one tree: the engine on sys.path is that tree's
        asyncio.run(_pairs(args.concurrency, args.requests, args.pairs, args.gc))
        return
    ratios: dict[str, list[tuple[float, ...]]] = {t: [] for t in args.trees}
    for r in range(args.rounds):
        for tree in args.trees:
            root = Path(tree).resolve()
            cmd = [sys.executable, str(HERE), "--worker", "--pairs", str(args.pairs),
                   "--concurrency", str(args.concurrency), "--requests", str(args.requests),
                   "--gc", args.gc]  # fmt: skip
            env = dict(os.environ, PYTHONPATH=str(root))
            out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("ENGINE ") and r == 0:
                    print(f"{tree}: {line}", flush=True)
                if line.startswith("PAIR "):
                    ratios[tree].append(tuple(float(x) for x in line.split()[1:]))
                    print(f"round {r + 1} {tree}: {line[5:]}", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\nGC {args.gc}, c={args.concurrency}: medians over the pairs (range)")
    head = f"{'x bare CPU':>20s} {'x bare req/s':>20s} {'bare us':>8s} {'engine us':>9s}"
    print(f"{'tree':30s} {head}")
    for tree, rows in ratios.items():
        if not rows:
            print(f"{tree:30s} no result")
            continue
        cpu, rps, bare, eng = zip(*rows, strict=True)
        print(f"{tree:30s} {statistics.median(cpu):6.2f} ({min(cpu):.2f}-{max(cpu):.2f}) "
              f"{statistics.median(rps):8.2f} ({min(rps):.2f}-{max(rps):.2f}) "
              f"{statistics.median(bare):8.0f} {statistics.median(eng):9.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
