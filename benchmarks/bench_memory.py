"""Benchmark (whole run, memory): peak RSS of a training run must not grow with the dataset.

For each size (1k, 10k and 100k prompts by default) a JSONL dataset is written to a temporary
directory, and a fresh Python process runs one epoch over it, streamed from disk
(``data.train``), with the prompt policy against the simulated server (its own process, zero
latency, two-token completions), G = 2, a reward function, ``metrics.jsonl`` and
``events.jsonl`` written as in any run. At the end the child reports its peak resident set
size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (and ``VmHWM`` from ``/proc/self/status``
where there is one). The parent prints each size and the ratio of the largest to the
smallest, which should stay near 1 (aim <= 1.2). ``--judge`` adds an LLM judge (a second
request per rollout, and the judge's verdict cache). Run::

    python -m benchmarks.bench_memory                      # 1k, 10k, 100k prompts
    python -m benchmarks.bench_memory --sizes 1000 10000   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("good", "bad", "fine", "great", "awful", "clear", "concise", "accurate", "slow", "quick")


def write_dataset(path: Path, n: int) -> None:
    """``n`` short reviews in the spec's TrainingExample format, written line by line."""
    with open(path, "wb") as fh:
        for i in range(n):
            text = f"review {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(8))
            label = "positive" if i % 2 else "negative"
            fh.write(orjson.dumps({"input": {"text": text}, "output": {"generated": label}}))
            fh.write(b"\n")


def sim_process() -> contextlib.AbstractContextManager[str]:
    """The simulated server, zero latency, in a child process; yields its base URL."""
    from engine.testing.sim import sim_subprocess

    return sim_subprocess("--seed", "0")


def peak_rss_kib() -> tuple[int, int | None]:
    """(ru_maxrss in KiB (Linux units), VmHWM in KiB or None)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        maxrss //= 1024
    hwm = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return maxrss, hwm


# ----------------------------------------------------------------------------- the child


async def child_run(args: argparse.Namespace) -> dict[str, object]:
    """One epoch over ``args.data`` with the prompt policy; returns what the parent prints."""
    from engine.config.loading import load_config
    from engine.endpoints.client import Client
    from engine.telemetry.events import EventLog
    from engine.training.assembly import build_components
    from engine.training.trainer import TrainingManager

    n = args.prompts
    batch = args.batch_size
    overrides = [
        "policy='prompt'",
        f"steps={max(1, n // batch)}",
        f"data.train='{args.data}'",
        f"data.batch_size={batch}",
        "data.eval_fraction=0.0",
        "grpo.group_size=2",
        f"grpo.mini_batch_size={batch}",
        "trainer.eval_every=0",
        "trainer.checkpoint_every=0",
        f"endpoint.base_url='{args.url}'",
        "endpoint.mode='completions'",
        "endpoint.max_tokens=2",
        "limits.max_concurrency=64",
        "prompt.instructions=['Classify the sentiment.', 'Answer positive or negative.']",
        "reward.functions=['exact_match']",
    ]
    if args.judge:
        overrides.append("reward.judge_prompt='Is the label right?'")
    cfg = load_config(None, overrides)
    out = Path(args.out)
    events = EventLog(out / "events.jsonl")
    t0 = time.perf_counter()
    async with Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry, events=events) as client:
        policy, rewarder, _ = build_components(cfg, client=client, judge_client=client)
        async with TrainingManager(
            cfg, policy=policy, rewarder=rewarder, out=out, events=events
        ) as tm:
            summary = await tm.run()
    events.close()
    maxrss, hwm = peak_rss_kib()
    return {
        "prompts": n,
        "steps": summary.steps_done,
        "requests": summary.extra.get("requests"),
        "wall": time.perf_counter() - t0,
        "maxrss_kib": maxrss,
        "vmhwm_kib": hwm,
    }


# ----------------------------------------------------------------------------- the parent


def run_size(n: int, url: str, tmp: Path, args: argparse.Namespace) -> dict[str, object]:
    """Write the dataset of ``n`` prompts and run one epoch over it in a fresh process."""
    data = tmp / f"prompts-{n}.jsonl"
    write_dataset(data, n)
    cmd = [
        sys.executable, "-m", "benchmarks.bench_memory", "--child", "--data", str(data),
        "--url", url, "--out", str(tmp / f"run-{n}"), "--batch-size", str(args.batch_size),
        "--prompts", str(n),
    ] + (["--judge"] if args.judge else [])  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child for {n} prompts failed:\n{res.stderr[-3000:]}")
    data.unlink()
    return orjson.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--judge", action="store_true", help="add an LLM judge reward")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(orjson.dumps(asyncio.run(child_run(args))).decode(), flush=True)
        return
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; prompt policy, "
        f"G=2, batch {args.batch_size}, one epoch, sim at zero latency"
        + (", LLM judge" if args.judge else ""),
        flush=True,
    )
    rows = []
    with sim_process() as url, tempfile.TemporaryDirectory() as d:
        for n in args.sizes:
            r = run_size(n, url, Path(d), args)
            rows.append(r)
            hwm = r["vmhwm_kib"]
            print(
                f"  {n:>7} prompts: {r['steps']:>5} steps, {r['requests']:>7} requests, "
                f"{r['wall']:6.1f} s, peak RSS {int(r['maxrss_kib']) / 1024:7.1f} MiB"
                + (f" (VmHWM {int(hwm) / 1024:.1f} MiB)" if hwm else ""),
                flush=True,
            )
    ratio = int(rows[-1]["maxrss_kib"]) / int(rows[0]["maxrss_kib"])
    print(f"peak RSS ratio {args.sizes[-1]}/{args.sizes[0]} prompts: {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
