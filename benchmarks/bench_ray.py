"""engine/cluster on Ray, side by side with its peers in one run (issue 16).

(a) **Reward pool.** A reward costing about 50 ms of pure-Python CPU per rollout, scored for
    N rollouts: the Rewarder's local worker-thread pool (the GIL runs one at a time) vs the
    same functions on reward-worker actors (:class:`engine.cluster.rewards.RemoteRewards`), on
    a local cluster of this machine's cores. Both arms are warmed once (untimed), then timed
    back to back in alternating order for ``--rounds`` rounds: the median of each is shown,
    with every round's figure and the load average (the pool's start-up is shown apart).
(b) **One global limit.** 2 and 4 rollout-shard actors, each with its own
    :class:`~engine.endpoints.client.Client`, against one simulated server (its own process)
    enforcing 600 RPM and a TPM limit: the shards lease from one limiter actor
    (:class:`~engine.cluster.limiter.LeasedLimiter`) vs per-shard limiters each set to the full
    limit (what verl's and verifiers' per-process limiters amount to). Goodput is successful
    requests over the server's allowance in the window (its burst plus rate x duration).
(c) **Two nodes.** ``ray.cluster_utils.Cluster`` with two Ray nodes on this machine, one
    training job (tinylm, 2 shards, one per node) pointed at it with ``cluster.address``.

    python benchmarks/bench_ray.py            # all three (needs pip install 'grpo-engine[ray]')
    python benchmarks/bench_ray.py --only a --rounds 7
    python benchmarks/bench_ray.py --only b --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cluster.limiter import LeasedLimiter, limiter_actor  # noqa: E402
from engine.cluster.rewards import RemoteRewards  # noqa: E402
from engine.config.sections import (  # noqa: E402
    ClusterConfig,
    EndpointConfig,
    LimitsConfig,
    RetryConfig,
)
from engine.rewards.rewarder import Rewarder, RewardSpec  # noqa: E402
from engine.testing.sim.process import sim_subprocess  # noqa: E402
from engine.types import Example  # noqa: E402

RPM = 600.0
TPM = 24_000.0  # ~30 tokens a request here: about 800 requests a minute, near the RPM limit
SERVER_BURST = 2.0  # seconds of rate the server's buckets hold
MARGIN = 0.98  # the shared limiter runs at 98 % of the server's limits (clock and network drift)


def cpu_reward(example: Example, text: str) -> float:
    """About 50 ms of pure-Python CPU (holds the GIL throughout)."""
    end = time.thread_time() + 0.05
    x = 0
    while time.thread_time() < end:
        x += 1
    return float(len(text) % 2)


# ----------------------------------------------------------------------------- (a)


async def bench_rewards(n: int, rounds: int) -> dict[str, Any]:
    """Both arms warmed once (the pool's workers started, the thread pool's threads), then
    ``rounds`` rounds, each timing both arms back to back in alternating order."""
    import statistics

    example = Example(id="bench", text="p", target="t")
    texts = [f"rollout {i}" for i in range(n)]
    local = Rewarder([RewardSpec("cpu", cpu_reward)])
    pool = RemoteRewards(ClusterConfig(backend="ray", reward_workers=os.cpu_count() or 2,
                                       reward_cpus=1.0))  # fmt: skip
    remote = pool.apply(local, ["cpu"])
    t0 = time.perf_counter()
    await pool.ready()
    cold = time.perf_counter() - t0
    arms = {"local threads": local, "ray pool": remote}
    for rewarder in arms.values():  # warm: not timed, the same for both
        await rewarder.score_group(example, texts[:4], group_id="warm")
    out: dict[str, list[float]] = {k: [] for k in arms}
    loads = []
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            t0 = time.perf_counter()
            scores = await arms[name].score_group(example, texts, group_id=f"r{r}")
            out[name].append(time.perf_counter() - t0)
            assert all(s.error is None for s in scores)
        loads.append(os.getloadavg()[0])
    pool.close()
    med = {k: statistics.median(v) for k, v in out.items()}
    ratios = [a / b for a, b in zip(out["local threads"], out["ray pool"], strict=True)]
    speedup = med["local threads"] / med["ray pool"]
    return {"n": n, "median": med, "rounds": out, "speedup": speedup, "loads": loads,
            "ratio_median": statistics.median(ratios), "cold_start": cold}  # fmt: skip


# ----------------------------------------------------------------------------- (b)


class _Sender:
    """A rollout shard for the benchmark: one client, ``concurrency`` callers in a loop."""

    async def ready(self) -> bool:
        return True

    async def run(
        self, url: str, limits: LimitsConfig, actor: Any, until: float, concurrency: int
    ) -> dict[str, int]:
        from engine.endpoints.client import Client

        limiter: Any = limits
        if actor is not None:
            limiter = LeasedLimiter(actor, limits, lease_requests=4, lease_ttl=0.3)
        ep = EndpointConfig(base_url=url, model="sim-model", max_tokens=16, deadline=120.0)
        ok = failed = 0
        async with Client(ep, limits=limiter, retry=RetryConfig(max_attempts=4)) as client:

            async def caller(i: int) -> None:
                nonlocal ok, failed
                j = 0
                while time.time() < until:
                    try:
                        await client.complete(f"shard prompt {i} {j}")
                        if time.time() <= until:
                            ok += 1
                    except Exception:
                        failed += 1
                    j += 1

            await asyncio.gather(*(caller(i) for i in range(concurrency)))
        if actor is not None:
            await limiter.aclose()
        return {"ok": ok, "failed": failed}


def _sim_stats(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats", timeout=10) as r:
        return dict(json.loads(r.read()))


async def bench_limit(shards: int, seconds: float, shared: bool) -> dict[str, Any]:
    import ray

    args = ("--rpm", str(RPM), "--tpm", str(TPM), "--burst-seconds", str(SERVER_BURST),
            "--latency", "0.05")  # fmt: skip
    with sim_subprocess(*args) as url:
        if shared:
            limits = LimitsConfig(rpm=RPM * MARGIN, tpm=TPM * MARGIN,
                                  burst_seconds=SERVER_BURST, max_concurrency=16)  # fmt: skip
            actor = limiter_actor(limits)
        else:  # each shard at the full limit: the peers' per-process limiters
            limits = LimitsConfig(rpm=RPM, tpm=TPM, burst_seconds=1.0, max_concurrency=16)
            actor = None
        sender = ray.remote(num_cpus=0)(_Sender)
        actors = [sender.remote() for _ in range(shards)]
        await asyncio.gather(*(a.ready.remote() for a in actors))  # started before the clock
        window = 0.5 + seconds  # the senders run from now until `until`: this whole window
        until = time.time() + window
        results = await asyncio.gather(
            *(a.run.remote(url, limits, actor, until, 8) for a in actors)
        )
        stats = await asyncio.to_thread(_sim_stats, url)
        for a in actors:
            ray.kill(a)
        if actor is not None:
            ray.kill(actor, no_restart=True)
    ok = sum(r["ok"] for r in results)
    allowance = RPM / 60.0 * window + RPM * SERVER_BURST / 60.0
    requests = int(stats.get("requests", 0))
    limited = int(stats.get("rate_limited", 0))
    return {
        "shards": shards,
        "limiter": "shared actor" if shared else "per shard, full limit each",
        "ok": ok,
        "failed": sum(r["failed"] for r in results),
        "goodput": ok / allowance,
        "server_requests": requests,
        "429s": limited,
        "429_rate": limited / max(1, requests),
    }


# ----------------------------------------------------------------------------- (c)


def _metrics(run: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(run, "metrics.jsonl").read_text().splitlines()]


async def bench_two_nodes(steps: int) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    from engine.cluster.training import ClusterTrainingManager
    from engine.config.loading import load_config
    from engine.training.trainer import TrainingManager

    base = [f"steps={steps}", "data.batch_size=8", "grpo.group_size=8", "seed=1"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        async with TrainingManager(load_config(None, [*base, f"out={tmp}/local"])) as tm:
            local = await tm.run()
        out["local_seconds"] = time.perf_counter() - t0
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1},
                          shutdown_at_exit=True)  # fmt: skip
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            cfg = load_config(None, [*base, f"out={tmp}/ray", "cluster.backend=ray",
                                     f"cluster.address={cluster.address}", "cluster.shards=2",
                                     "cluster.shard_cpus=1"])  # fmt: skip
            t0 = time.perf_counter()
            async with ClusterTrainingManager(cfg) as tm:
                summary = await tm.run()
                assert tm.pool is not None
                out["groups_by_shard"] = dict(tm.pool.by_shard)
            out["ray_seconds"] = time.perf_counter() - t0
            import ray

            ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
            out["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
            ray.shutdown()
        finally:
            cluster.shutdown()
        a, b = await asyncio.gather(asyncio.to_thread(_metrics, f"{tmp}/local"),
                                    asyncio.to_thread(_metrics, f"{tmp}/ray"))  # fmt: skip
        out["same_rewards"] = [x["reward"] for x in a] == [y["reward"] for y in b]
        out["steps"] = summary.steps_done
        out["reward_last_local"] = local.reward_last
        out["reward_last_ray"] = summary.reward_last
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("a", "b", "c"), action="append")
    p.add_argument("--rollouts", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5, help="(a): alternating rounds")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    parts = args.only or ["a", "b", "c"]
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"load average {os.getloadavg()[0]:.1f}, cores {os.cpu_count()}")  # fmt: skip
    # Ray starts its workers at niceness 15: on a machine loaded by other jobs they would get
    # a smaller share of the cores than the local thread pool they are compared with
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    if "a" in parts or "b" in parts:
        ray.init(include_dashboard=False, log_to_driver=False)
        if "a" in parts:
            r = await bench_rewards(args.rollouts, args.rounds)
            s = r["median"]
            print(f"(a) {r['n']} rollouts x 50 ms CPU, median of {args.rounds} alternating rounds:"
                  f" local threads {s['local threads']:.2f} s, ray pool {s['ray pool']:.2f} s:"
                  f" {r['speedup']:.2f}x (median of per-round ratios {r['ratio_median']:.2f}x;"
                  f" aim 1.8x)")  # fmt: skip
            for name, v in r["rounds"].items():
                print(f"    {name}: " + " ".join(f"{x:.2f}" for x in v))
            print(
                "    load average after each round: "
                + " ".join(f"{x:.2f}" for x in r["loads"])
                + f"; pool start-up (not timed above) {r['cold_start']:.2f} s"
            )
        if "b" in parts:
            print("(b) shards | limiter | ok | failed | goodput | server requests | 429s | 429 %")
            for shards in (2, 4):
                for shared in (True, False):
                    r = await bench_limit(shards, args.seconds, shared)
                    print(f"    {r['shards']} | {r['limiter']} | {r['ok']} | {r['failed']} | "
                          f"{r['goodput']:.3f} | {r['server_requests']} | {r['429s']} | "
                          f"{100 * r['429_rate']:.2f}")  # fmt: skip
        ray.shutdown()
    if "c" in parts:
        r = await bench_two_nodes(args.steps)
        print(f"(c) two nodes: {r}")


if __name__ == "__main__":
    asyncio.run(main())
