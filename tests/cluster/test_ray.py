"""engine/cluster on a real local Ray cluster: the reward pool, shards, the global limiter,
a shard killed mid-run, bad addresses and nodes, and a shutdown that leaves nothing behind.

Every test shares the session's cluster (``ray_cluster``, 2 CPUs); the last one stops it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from engine.cluster.connect import ClusterError, NodeInfo, RayCluster, check_nodes, node_versions
from engine.cluster.limiter import LeasedLimiter, driver_clients, limiter_actor, share_limit
from engine.cluster.rewards import DEPTH, RemoteRewards
from engine.cluster.training import ClusterTrainingManager
from engine.config.loading import load_config
from engine.config.sections import (
    ClusterConfig,
    EndpointConfig,
    LimitsConfig,
    RetryConfig,
    SandboxConfig,
)
from engine.endpoints.client import Client
from engine.errors import ConfigError
from engine.rewards.code import UnitTestsReward
from engine.rewards.judges import LLMJudge
from engine.rewards.rewarder import JudgeSpec, Rewarder, RewardSpec
from engine.sandbox import Sandbox
from engine.telemetry.events import EventLog
from engine.testing.sim import SimConfig, SimServer
from engine.training.trainer import TrainingManager
from engine.types import Example

from . import workloads

pytestmark = pytest.mark.usefixtures("ray_cluster")

TIMING = {"gen_time", "step_time", "latency/p50", "latency/p95", "latency/p99"}
BASE = ["steps=3", "data.batch_size=4", "grpo.group_size=4", "seed=5"]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ex(i: int) -> Example:
    return Example(id=f"e{i}", text="p", target="t")


# ----------------------------------------------------------------------------- reward pool


async def test_remote_rewards_run_on_workers_bounded_and_record_failures() -> None:
    cluster = ClusterConfig(backend="ray", reward_workers=2, reward_cpus=0.5)
    pool = RemoteRewards(cluster)
    specs = [("cpu", workloads.cpu_reward), ("pid", workloads.pid_reward),
             ("bad", workloads.failing_reward)]  # fmt: skip
    local = Rewarder([RewardSpec(name, fn) for name, fn in specs])
    remote = pool.apply(local, ["cpu", "pid", "bad"])
    texts = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    got = await remote.score_group(_ex(0), texts, group_id="0-0")
    want = await local.score_group(_ex(0), texts, group_id="0-0")
    for g, w in zip(got, want, strict=True):
        assert g.parts["cpu"] == w.parts["cpu"]  # the same function, run elsewhere
        assert g.parts["pid"] != os.getpid()  # ... in a Ray worker, not here
        assert math.isnan(g.reward) and math.isnan(w.reward)  # the failure is recorded ...
        assert g.error == w.error  # ... exactly as a local one is
        assert g.error is not None and "reward 'bad' failed: ValueError: no verdict" in g.error
    assert pool.calls == 3 * len(texts)
    assert 1 <= pool.peak_in_flight <= DEPTH * 2  # bounded by reward_workers
    pool.close()


async def test_a_reward_worker_the_cluster_cannot_place_holds_no_rollout_up() -> None:
    # three workers of 1 CPU each on the session's 2-CPU cluster: one is never placed
    pool = RemoteRewards(ClusterConfig(backend="ray", reward_workers=3, reward_cpus=1.0))
    remote = pool.apply(Rewarder([RewardSpec("pid", workloads.pid_reward)]), ["pid"])
    async with asyncio.timeout(60):
        got = await remote.score_group(_ex(2), ["a"] * 8, group_id="0-2")
    assert all(g.error is None for g in got)
    assert 1 <= len({g.parts["pid"] for g in got}) <= 2
    assert pool.calls == 8
    pool.close()


CODE_TASK = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "entry_point": "add"}


async def test_the_sandboxed_unit_tests_reward_runs_on_the_pool_with_failures_as_locally() -> None:
    pool = RemoteRewards(ClusterConfig(backend="ray", reward_workers=2, reward_cpus=0.5))
    fast = SandboxConfig(wall_seconds=3.0, test_seconds=1.0)
    broken = UnitTestsReward(Sandbox(SandboxConfig(python="/no/python")))
    specs = [RewardSpec("unit_tests", UnitTestsReward(Sandbox(fast)).__call__),
             RewardSpec("broken", broken.__call__)]  # fmt: skip
    local = Rewarder(specs)
    remote = pool.apply(local, ["unit_tests", "broken"])
    texts = [
        "```python\ndef add(a, b):\n    return a + b\n```",  # passes both
        "```python\ndef add(a, b):\n    return a - b\n```",  # passes one
        "```python\ndef add(a, b):\n    while True:\n        pass\n```",  # loops: a score
        "no code here",
    ]
    code_ex = Example(id="c0", text="write add", target="", meta=CODE_TASK)
    got = await remote.score_group(code_ex, texts, group_id="0-0")
    want = await local.score_group(code_ex, texts, group_id="0-0")
    pids = await pool.ready()
    for g, w in zip(got, want, strict=True):
        assert g.parts["unit_tests"] == w.parts["unit_tests"] or (
            math.isnan(g.parts["unit_tests"]) and math.isnan(w.parts["unit_tests"])
        )
        # the sandbox failing is recorded as locally: the same exception and message (the
        # OS's own detail after it may differ between processes)
        prefix = "reward 'broken' failed: SandboxUnavailable: cannot start the sandbox interpreter"
        assert g.error is not None and w.error is not None
        assert g.error.startswith(prefix) and w.error.startswith(prefix)
    assert os.getpid() not in pids
    # no tests in the example: the same recorded RewardError, never a 0
    plain = await remote.score_group(_ex(1), texts[:1], group_id="0-1")
    plain_local = await local.score_group(_ex(1), texts[:1], group_id="0-1")
    assert plain[0].error == plain_local[0].error
    assert (
        plain[0].error is not None and "RewardError: example 'e1' has no 'tests'" in plain[0].error
    )
    pool.close()


# ----------------------------------------------------------------------------- shards


async def test_one_shard_gives_the_same_metrics_as_local(tmp_path: Path) -> None:
    local = load_config(None, [*BASE, f"out={tmp_path / 'local'}"])
    async with TrainingManager(local) as tm:
        await tm.run()
    ray_cfg = load_config(None, [*BASE, f"out={tmp_path / 'ray'}", "cluster.backend=ray",
                                 "cluster.shards=1"])  # fmt: skip
    async with ClusterTrainingManager(ray_cfg) as tm:
        await tm.run()
    a, b = _lines(tmp_path / "local/metrics.jsonl"), _lines(tmp_path / "ray/metrics.jsonl")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING and k != "cluster/groups_retried"
        }
        assert y["cluster/groups_retried"] == 0
    ea = [e for e in _lines(tmp_path / "local/events.jsonl") if e.get("kind") == "generation"]
    eb = [e for e in _lines(tmp_path / "ray/events.jsonl") if e.get("kind") == "generation"]
    assert sorted(e["group_id"] for e in ea) == sorted(e["group_id"] for e in eb)
    assert {e["shard"] for e in eb} == {0}


async def test_two_shards_share_the_groups_and_every_event_reaches_the_driver(
    tmp_path: Path,
) -> None:
    cfg = load_config(None, [*BASE, f"out={tmp_path}", "cluster.backend=ray", "cluster.shards=2",
                             "grpo.max_staleness=1"])  # fmt: skip
    async with ClusterTrainingManager(cfg, make_parts=workloads.slow_parts) as tm:
        await tm.run()
        assert tm.pool is not None
        assert set(tm.pool.by_shard) == {0, 1}
        assert sum(tm.pool.by_shard.values()) == 3 * 4
    gen = [e for e in _lines(tmp_path / "events.jsonl") if e.get("kind") == "generation"]
    assert len(gen) == 3 * 4  # one per group (embedded policy), none lost, none doubled
    assert {e["shard"] for e in gen} == {0, 1}
    assert all(m["groups/complete"] == 4 for m in _lines(tmp_path / "metrics.jsonl"))


def _parity(req: Any) -> str:
    """The simulated model: right under an instruction that says GOOD, else "maybe"."""
    x = req.prompt.rsplit("Input:", 1)[-1].split("\n", 1)[0].strip()
    truth = "even" if x.endswith(("0", "2", "4", "6", "8")) else "odd"
    return truth if "GOOD" in req.prompt else "maybe"


PARITY = [Example(id=f"p{i}", text=f"item {i}", target="even" if i % 2 == 0 else "odd")
          for i in range(40)]  # fmt: skip


async def test_the_prompt_policy_runs_on_two_shards_with_the_drivers_candidates(
    tmp_path: Path,
) -> None:
    """The driver's policy knows a candidate the shards' own copies were never built with: it
    reaches them with each group, the shards' requests render it, and the driver learns it."""
    from engine.training.assembly import build_rewarder, make_client
    from engine.training.finetune import build_prompt_policy

    seen: list[str] = []

    def model(req: Any) -> str:
        seen.append(req.prompt)
        return _parity(req)

    async with SimServer(SimConfig(model=model)) as sim:
        common = ["policy='prompt'", "optim.lr=0.5", "steps=4", "data.batch_size=2",
                  "grpo.group_size=4", "endpoint.mode='completions'", "endpoint.max_tokens=4",
                  f"endpoint.base_url='{sim.base_url}'", "endpoint.model='sim'",
                  "reward.functions=['exact_match']"]  # fmt: skip
        run = load_config(None, [*common, "prompt.instructions=['Answer.']", f"out={tmp_path}",
                                 "cluster.backend=ray", "cluster.shards=2"])  # fmt: skip
        driver = load_config(None, [*common, "prompt.instructions=['Answer.', "
                                    "'GOOD: say even or odd.']"])  # fmt: skip
        async with make_client(driver) as client:
            policy = build_prompt_policy(driver, client, examples=PARITY)
            async with ClusterTrainingManager(run, policy=policy, rewarder=build_rewarder(run),
                                              train=PARITY[:32],
                                              heldout=PARITY[32:]) as tm:  # fmt: skip
                summary = await tm.run()
                assert tm.pool is not None and set(tm.pool.by_shard) == {0, 1}
        assert summary.steps_done == 4
        assert summary.eval_after is not None and summary.eval_after == 1.0
    assert policy.best().instruction.startswith("GOOD")
    requests = [e for e in _lines(tmp_path / "events.jsonl") if e.get("kind") == "generation"]
    on_shards = [e for e in requests if "shard" in e]
    assert {e["shard"] for e in on_shards} == {0, 1}
    assert len(on_shards) >= 4 * 2  # every group's requests, written once by the driver
    assert any("GOOD" in p for p in seen[: len(seen) // 2])  # rendered on the shards too


async def test_one_shard_gives_the_prompt_policy_the_same_metrics_as_local(
    tmp_path: Path,
) -> None:
    """The prompt policy on a deterministic server: one shard reproduces the local run."""
    async with SimServer(SimConfig(model=_parity)) as sim:
        common = ["policy='prompt'", "optim.lr=0.5", "steps=3", "data.batch_size=2",
                  "grpo.group_size=4", "endpoint.mode='completions'", "endpoint.max_tokens=4",
                  f"endpoint.base_url='{sim.base_url}'", "endpoint.model='sim'", "seed=3",
                  "prompt.instructions=['Answer.', 'GOOD: say even or odd.']",
                  "reward.functions=['exact_match']"]  # fmt: skip
        local = load_config(None, [*common, f"out={tmp_path / 'local'}"])
        ray_cfg = load_config(None, [*common, f"out={tmp_path / 'ray'}", "cluster.backend=ray",
                                     "cluster.shards=1"])  # fmt: skip
        for cfg, manager in ((local, TrainingManager), (ray_cfg, ClusterTrainingManager)):
            from engine.training.assembly import build_rewarder, make_client
            from engine.training.finetune import build_prompt_policy

            events = EventLog(Path(cfg.out) / "events.jsonl")  # as finetune() wires it
            async with make_client(cfg, events=events) as client:
                policy = build_prompt_policy(cfg, client, examples=PARITY)
                async with manager(cfg, policy=policy, rewarder=build_rewarder(cfg),
                                   train=PARITY[:32], heldout=PARITY[32:],
                                   events=events) as tm:  # fmt: skip
                    await tm.run()
            events.close()
    a, b = _lines(tmp_path / "local/metrics.jsonl"), _lines(tmp_path / "ray/metrics.jsonl")
    assert len(a) == len(b) == 3
    skip = TIMING | {"cluster/groups_retried"} | {k for k in a[0] if "latency" in k}
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in skip} == {
            k: v for k, v in y.items() if k not in skip
        }


async def test_finetune_takes_the_cluster_backend_from_its_config(tmp_path: Path) -> None:
    """engine.finetune with [cluster] backend = "ray" and shards runs its groups on shards."""
    import engine

    async with SimServer(SimConfig(model=_parity)) as sim:
        cfg = load_config(None, ["policy='prompt'", "cluster.backend=ray", "cluster.shards=1",
                                 "data.batch_size=2", "grpo.group_size=4"])  # fmt: skip
        async with await engine.finetune(
            [{"input": {"text": e.text}, "output": {"generated": e.target}} for e in PARITY],
            base_prompt="Answer.",
            instructions=["GOOD: say even or odd."],
            optimizer={"learningRate": 0.5, "steps": 3},
            endpoint={
                "base_url": sim.base_url,
                "model": "sim",
                "mode": "completions",
                "max_tokens": 4,
            },
            config=cfg,
            out=tmp_path,
        ) as model:
            assert model.summary.steps_done == 3
    requests = [e for e in _lines(tmp_path / "events.jsonl") if e.get("kind") == "generation"]
    assert requests and {e.get("shard") for e in requests if "shard" in e} == {0}
    assert sum("shard" in e for e in requests) >= 3 * 2


def test_an_hf_run_with_shards_is_refused_with_the_reason() -> None:
    cfg = load_config(None, ["policy='hf'", "cluster.backend=ray", "cluster.shards=2"])
    with pytest.raises(ConfigError, match="in-process with torch weights"):
        ClusterTrainingManager(cfg)


async def test_a_shard_killed_mid_run_has_its_groups_retried(tmp_path: Path) -> None:
    steps = 4
    cfg = load_config(None, ["steps=4", "data.batch_size=4", "grpo.group_size=4", "seed=5",
                             f"out={tmp_path}", "cluster.backend=ray", "cluster.shards=2",
                             "grpo.max_staleness=0"])  # fmt: skip
    async with ClusterTrainingManager(cfg, make_parts=workloads.slow_parts) as tm:

        async def kill_when_busy() -> None:
            busy = False
            while not busy:  # polls the pool's own state: nothing to wait on
                await asyncio.sleep(0.02)
                busy = tm.pool is not None and tm.pool._load[0] > 0 and tm.learner.version >= 1
            assert tm.pool is not None
            pid = await tm.pool.shards[0].pid.remote()
            os.kill(pid, signal.SIGKILL)  # the worker process dies with groups in flight

        killer = asyncio.ensure_future(kill_when_busy())
        await tm.run()
        assert killer.done()
        await killer
        assert tm.pool is not None
        assert tm.pool.retried >= 1
        assert tm.pool.lost == 0
    metrics = _lines(tmp_path / "metrics.jsonl")
    assert len(metrics) == steps
    assert all(m["groups/complete"] == 4 for m in metrics)  # nothing lost
    assert sum(m["cluster/groups_retried"] for m in metrics) == tm.pool.retried
    gen = [e for e in _lines(tmp_path / "events.jsonl") if e.get("kind") == "generation"]
    # every group's generation reached the driver once; a killed attempt's may not have
    assert sorted({e["group_id"] for e in gen}) == sorted(
        f"{s}-{j}" for s in range(steps) for j in range(4)
    )


# ----------------------------------------------------------------------------- global limiter


async def _a_429_pauses(seen_by: LeasedLimiter, other: LeasedLimiter, client: Client) -> None:
    """A 429 (with a 1.5 s wait) seen through ``seen_by`` pauses ``other``'s ``client``."""
    seen_by.on_rate_limited(1.5)
    for _ in range(100):
        if other.gate_wait() > 0:
            break
        await asyncio.sleep(0.02)
    assert 0.5 < other.gate_wait() <= 1.5
    t1 = time.monotonic()
    await client.complete("after the pause")
    assert time.monotonic() - t1 >= 0.5


async def test_shards_share_one_limit_and_a_429_pauses_them_all() -> None:
    import ray

    # the client side keeps a 5 % margin under the server's 600 RPM (its buckets and ours
    # drift by the network's jitter)
    limits = LimitsConfig(rpm=570, tpm=57_000, burst_seconds=1.0, max_concurrency=8)
    actor = limiter_actor(limits)
    sim_cfg = SimConfig(rpm=600, tpm=60_000, burst_seconds=1.0)
    retry = RetryConfig(max_attempts=1)
    try:
        async with (
            SimServer(sim_cfg) as sim,
            LeasedLimiter(actor, limits, lease_requests=2, lease_ttl=0.2) as a,
            LeasedLimiter(actor, limits, lease_requests=2, lease_ttl=0.2) as b,
        ):
            ep = EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=8)
            async with (
                Client(ep, limits=a, retry=retry) as ca,
                Client(ep, limits=b, retry=retry) as cb,
            ):
                t0 = time.monotonic()
                calls = [c.complete(f"q{i}") for i in range(20) for c in (ca, cb)]
                results = await asyncio.gather(*calls)
                elapsed = time.monotonic() - t0
                assert len(results) == 40
                assert sim.statistics().rate_limited == 0  # one limit for both: no 429
                # 40 requests at 9.5/s after a burst of 9: more than 3 s (each client at
                # the full limit alone would have sent them in about 1 s, drawing 429s)
                assert elapsed >= 3.0
                assert a.leases + b.leases < 40  # leased in chunks, not one by one
                # a 429 seen by one pauses the other, for the server's wait
                await _a_429_pauses(a, b, cb)
        stats = await actor.statistics.remote()
        assert stats["rate_limited"] == 1
    finally:
        ray.kill(actor, no_restart=True)


async def test_the_drivers_eval_and_judge_clients_share_the_shards_limit() -> None:
    import ray

    limits = LimitsConfig(rpm=570, burst_seconds=1.0, max_concurrency=8)
    actor = limiter_actor(limits)
    retry = RetryConfig(max_attempts=1)
    try:
        async with (
            SimServer(SimConfig(rpm=600, burst_seconds=1.0)) as sim,
            LeasedLimiter(actor, limits, lease_requests=2, lease_ttl=0.2) as shard,
        ):
            ep = EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=8)
            # the driver's clients as a run builds them: each with a limiter of its own
            async with (
                Client(ep, limits=limits, retry=retry) as shard_client,
                Client(ep, limits=limits, retry=retry) as eval_client,
                Client(ep, limits=limits, retry=retry) as judge_client,
            ):
                shard_client.share_limiter(shard)
                judge = LLMJudge(judge_client, "Is it right?")
                rewarder = Rewarder([RewardSpec("r", workloads.cpu_reward)],
                                    judges=[JudgeSpec(judge)])  # fmt: skip

                class Policy:
                    client = eval_client

                found = driver_clients(Policy(), rewarder)
                assert {id(c) for c in found} == {id(eval_client), id(judge_client)}
                shared = share_limit(found, actor, limits, lease_requests=2, lease_ttl=0.2)
                driver = shared.limiter
                assert eval_client.limiter is driver and judge_client.limiter is driver
                t0 = time.monotonic()
                calls = [c.complete(f"q{i}") for i in range(14)
                         for c in (shard_client, eval_client, judge_client)]  # fmt: skip
                await asyncio.gather(*calls)
                elapsed = time.monotonic() - t0
                assert sim.statistics().rate_limited == 0  # one limit for all three: no 429
                # 42 requests at 9.5/s after a burst of 9: more than 3 s (each client at the
                # full limit alone would have sent its 14 at once, drawing 429s)
                assert elapsed >= 3.0
                # a 429 seen by a shard pauses the driver's evaluation and judge
                await _a_429_pauses(shard, driver, eval_client)
                own = shared._before[0][1]
                await shared.aclose()
                assert eval_client.limiter is own  # after the run: its own limiter again
        stats = await actor.statistics.remote()
        assert stats["granted"] >= 43 and stats["rate_limited"] == 1
    finally:
        ray.kill(actor, no_restart=True)


async def test_a_cluster_run_puts_its_evaluation_client_on_the_limiter_actor(
    tmp_path: Path,
) -> None:
    from engine.training.assembly import build_components, make_client

    async with SimServer(SimConfig(rpm=600, burst_seconds=1.0)) as sim:
        cfg = load_config(None, ["policy='prompt'", "optim.lr=0.2", "steps=2",
                                 "data.batch_size=2", "grpo.group_size=2", "trainer.eval_every=1",
                                 "limits.rpm=570", "limits.burst_seconds=1.0",
                                 f"endpoint.base_url='{sim.base_url}'",
                                 "endpoint.model='sim-model'",
                                 f"out={tmp_path}", "cluster.backend=ray"])  # fmt: skip
        async with make_client(cfg) as client:
            policy, rewarder, _ = build_components(cfg, client=client)
            own = client.limiter
            during: list[Any] = []
            async with ClusterTrainingManager(cfg, policy=policy, rewarder=rewarder,
                                              on_batch_complete=lambda _: during.append(
                                                  client.limiter)) as tm:  # fmt: skip
                summary = await tm.run()
            assert summary.steps_done == 2
            shared = during[0]
            assert isinstance(shared, LeasedLimiter) and all(x is shared for x in during)
            assert client.limiter is own  # given back when the run ends
            admitted = shared.statistics().requests_admitted
            assert admitted == sim.statistics().requests > 0  # every request, eval's included
            assert own.statistics().requests_admitted == 0
        assert sim.statistics().rate_limited == 0


async def _until_dead(ray: Any, actor: Any) -> None:
    """Return once calls to ``actor`` fail (ray.kill lands asynchronously)."""
    for _ in range(300):
        try:
            await actor.pid.remote()
        except ray.exceptions.RayActorError:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the killed actor still answers after 30 s")


async def test_a_dead_limiter_stops_admission_until_it_is_back() -> None:
    import ray

    limits = LimitsConfig(rpm=600, burst_seconds=1.0)
    actor = limiter_actor(limits)
    first = await actor.pid.remote()
    async with LeasedLimiter(actor, limits, lease_requests=1, lease_ttl=0.2) as limiter:
        async with limiter.permit():
            pass
        ray.kill(actor, no_restart=True)  # gone for good: nothing may be granted
        await _until_dead(ray, actor)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0), limiter.permit():
                pytest.fail("a permit was granted without the limiter actor")
        assert limiter.statistics().requests_admitted == 1

    actor = limiter_actor(limits)  # restartable: killed, it comes back and admission resumes
    try:
        async with LeasedLimiter(actor, limits, lease_requests=1, lease_ttl=0.2) as limiter:
            pid = await actor.pid.remote()
            assert pid != first
            ray.kill(actor, no_restart=False)
            async with asyncio.timeout(60):
                while True:  # Ray restarts it (calls fail meanwhile)
                    try:
                        if await actor.pid.remote() != pid:
                            break
                    except ray.exceptions.RayActorError:
                        pass
                    await asyncio.sleep(0.1)
                async with limiter.permit():  # admission resumes on the restarted actor
                    pass
            assert (await actor.statistics.remote())["granted"] >= 1
    finally:
        ray.kill(actor, no_restart=True)


# ----------------------------------------------------------------------------- bad input


async def test_an_unreachable_address_is_one_clear_error_in_bounded_time() -> None:
    t0 = time.monotonic()
    cluster = ClusterConfig(backend="ray", address="127.0.0.1:9", connect_timeout=2.0)
    with pytest.raises(ClusterError, match=r"cannot reach the Ray cluster at '127.0.0.1:9'"):
        async with RayCluster(cluster):
            pass
    assert time.monotonic() - t0 < 10
    with pytest.raises(ClusterError, match="expected empty, 'auto' or HOST:PORT"):
        async with RayCluster(ClusterConfig(backend="ray", address="nowhere")):
            pass


def test_nodes_of_another_python_or_engine_are_refused_by_name() -> None:
    infos = node_versions(timeout=60)
    assert infos and all(i["engine"] == infos[0]["engine"] for i in infos)
    check_nodes(infos)  # this cluster's nodes are ours
    odd = NodeInfo(node="gpu-box-7", address="10.0.0.7", python="3.10", engine=infos[0]["engine"])
    with pytest.raises(ClusterError, match=r"gpu-box-7 \(10\.0\.0\.7\): Python 3\.10"):
        check_nodes([*infos, odd])
    old = NodeInfo(node="cpu-9", address="10.0.0.9", python=infos[0]["python"], engine="0.0.1")
    with pytest.raises(ClusterError, match=r"cpu-9 \(10\.0\.0\.9\).*grpo-engine 0\.0\.1"):
        check_nodes([old])


# ----------------------------------------------------------------------------- last: shutdown


def _ray_processes(session: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session in cmd:
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


async def test_zz_a_run_that_started_its_cluster_leaves_no_ray_process(
    tmp_path: Path, ray_cluster: Any
) -> None:
    ray_cluster.shutdown()  # the session's cluster: this run starts (and stops) its own
    cfg = load_config(None, ["steps=2", "data.batch_size=2", "grpo.group_size=2",
                             f"out={tmp_path}", "cluster.backend=ray", "cluster.shards=1",
                             "cluster.local_cpus=1"])  # fmt: skip
    sessions: list[str] = []

    def seen(_: object) -> None:
        node = ray_cluster._private.worker._global_node
        sessions.append(Path(node.get_session_dir_path()).name)

    async with ClusterTrainingManager(cfg, on_batch_complete=seen) as tm:
        summary = await tm.run()
    assert summary.steps_done == 2
    assert not ray_cluster.is_initialized()
    session = sessions[0]
    left: list[str] = []
    for _ in range(100):
        left = _ray_processes(session)
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == []
