"""Benchmark (pipeline stage): the engine's overlapped GRPO pipeline against a synchronous loop.

Two simulated servers run in their own processes (``python -m engine serve-sim``): the
generation endpoint with log-normal latency (``--latency 0.05 --latency-sigma 0.99``: median
50 ms, p99 about 10x the median) and the judge endpoint with its own (``--judge-latency 0.03
--judge-sigma 0.5``: a verdict is a short reply). In one run, with the same prompts, the same
policy, rewarder and learner code, the same requests per rollout and the same limits, it
trains the prompt policy (completions mode) with an LLM judge reward
(:class:`~engine.rewards.judges.LLMJudge`, one verdict per rollout) through
:class:`engine.endpoints.client.Client`:

- ``engine``: :class:`engine.training.trainer.TrainingManager`: groups admitted whole
  (:mod:`engine.rollout.groups`), each group scored as soon as it is generated, batch ``k + 1``
  generated while batch ``k`` is scored and learned from, up to ``--max-staleness`` policy
  versions ahead;
- ``sync``: the loop TRL's default trainer and DSPy run: generate the whole batch (all groups
  concurrently, within the same limit), then score the whole batch (concurrently), then
  update, then the next batch. Same :class:`~engine.policies.prompt.PromptPolicy`,
  :class:`~engine.rewards.rewarder.Rewarder`, :class:`~engine.learning.learner.Learner` and
  :class:`~engine.data.jsonl.GroupSampler`; only the orchestration differs.

Limits: by default one :class:`~engine.endpoints.limits.Limiter` of ``--concurrency`` (32) is
shared by
the generation and the judge client (one account's concurrency); ``--limits separate`` gives
each endpoint its own (what ``python -m engine run`` does when ``[judge]`` names another
endpoint). Utilization is the busy fraction of the allowed concurrency over the arm's wall time,
two ways:

- server side (the headline): the integral of requests in flight, summed over both servers
  (``GET /sim/stats``: ``concurrency_seconds``), divided by ``wall * allowed``;
- client side: the limiter slots held, sampled every 5 ms, divided by ``allowed``. The gap
  between the two is the client's own time per request while holding a slot (sending,
  reading, parsing, waiting for a busy event loop).

Arms alternate ``--repeat`` times, fresh clients and judge cache each (the machine is shared:
compare within a run). Run::

    python -m benchmarks.bench_pipeline                          # 40 steps, 3 rounds
    python -m benchmarks.bench_pipeline --steps 10 --repeat 1    # quick look
    python -m benchmarks.bench_pipeline --latency 0.2 --judge-latency 0.12 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    OptimConfig,
    PromptPolicyConfig,
    RolloutConfig,
    RunConfig,
    TrainerConfig,
)
from engine.data import datasets
from engine.data.sampler import GroupSampler, as_source
from engine.endpoints.client import Client
from engine.endpoints.limits import Limiter
from engine.learning.learner import Learner, ScoredBatch
from engine.policies.base import PolicySnapshot
from engine.policies.prompt import PromptPolicy
from engine.rewards.judge_cache import JudgeCache
from engine.rewards.judges import LLMJudge
from engine.rewards.rewarder import JudgeSpec, Rewarder
from engine.telemetry.events import EventLog
from engine.training.trainer import TrainingManager
from engine.types import Example, Group, Rollout

INSTRUCTIONS = (
    "Classify the sentiment of this review.",
    "Give a clear, concise and accurate answer: is this review positive or negative?",
)
RUBRIC = "Grade the answer: is it a clear, concise, accurate and relevant sentiment label?"


# ----------------------------------------------------------------------------- servers


def sim_process(latency: float, sigma: float, seed: int) -> contextlib.AbstractContextManager[str]:
    """The simulated server in a child process; yields its base URL."""
    from engine.testing.sim import sim_subprocess

    return sim_subprocess(
        "--seed", str(seed), "--latency", str(latency), "--latency-sigma", str(sigma)
    )


async def sim_stats(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """The server's counters (``GET /sim/stats``, not counted by the server itself)."""
    async with session.get(base_url.removesuffix("/v1") + "/sim/stats") as resp:
        return await resp.json()


# ----------------------------------------------------------------------------- setup


def run_config(args: argparse.Namespace, gen_url: str, judge_url: str) -> RunConfig:
    """The run both arms share (the sync arm ignores max_staleness and [rollout])."""
    return RunConfig(
        policy="prompt",
        steps=args.steps,
        seed=0,
        endpoint=EndpointConfig(base_url=gen_url, model="sim", mode="completions", max_tokens=16),
        judge=EndpointConfig(base_url=judge_url, model="sim-judge", mode="chat"),
        limits=LimitsConfig(max_concurrency=args.concurrency),
        prompt=PromptPolicyConfig(instructions=INSTRUCTIONS, max_demos=2, max_candidates=8),
        grpo=GRPOConfig(
            group_size=args.group_size,
            mini_batch_size=args.batch_size,
            max_staleness=args.max_staleness,
        ),
        optim=OptimConfig(lr=0.1),
        data=DataConfig(batch_size=args.batch_size, eval_fraction=0.0),
        trainer=TrainerConfig(eval_every=0, checkpoint_every=0),
        rollout=RolloutConfig(
            max_groups_in_flight=args.groups_in_flight, oversample=args.oversample
        ),
    )


@dataclass
class Parts:
    """What one arm trains with: fresh clients, policy, rewarder (fresh judge cache)."""

    gen: Client
    judge: Client
    policy: PromptPolicy
    rewarder: Rewarder
    events: EventLog


@contextlib.asynccontextmanager
async def parts(cfg: RunConfig, examples: list[Example], *, shared: bool) -> Any:
    """Fresh clients (one shared :class:`Limiter`, or one each), policy and judge."""
    events = EventLog(None)  # statistics only, as both arms
    assert cfg.judge is not None
    async with contextlib.AsyncExitStack() as stack:
        limits: Limiter | LimitsConfig = cfg.limits
        if shared:
            limits = await stack.enter_async_context(Limiter(cfg.limits))
        gen = await stack.enter_async_context(
            Client(cfg.endpoint, limits=limits, retry=cfg.retry, events=events)
        )
        judge = await stack.enter_async_context(
            Client(cfg.judge, limits=limits, retry=cfg.retry, events=events)
        )
        policy = PromptPolicy.from_config(cfg, gen, examples=examples)
        llm = LLMJudge(judge, RUBRIC, cache=JudgeCache())
        yield Parts(gen, judge, policy, Rewarder(judges=[JudgeSpec(llm)]), events)


# ----------------------------------------------------------------------------- the two arms


async def engine_arm(cfg: RunConfig, p: Parts, examples: list[Example]) -> dict[str, Any]:
    """The engine's pipeline: TrainingManager.run()."""
    async with TrainingManager(
        cfg, policy=p.policy, rewarder=p.rewarder, train=examples, out=None, events=p.events
    ) as tm:
        await tm.run()
        rewards = [m.get("reward", float("nan")) for m in tm.history]
        dropped = tm.learner.stale_dropped
    return {"reward_last": float(np.nanmean(rewards[-5:])), "stale_dropped": dropped}


async def sync_arm(cfg: RunConfig, p: Parts, examples: list[Example]) -> dict[str, Any]:
    """Generate the whole batch, then score the whole batch, then update; repeat."""
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, max_staleness=0))
    learner = Learner(p.policy, cfg, total_steps=cfg.steps)
    sampler = GroupSampler(
        as_source(examples),
        batch_size=cfg.data.batch_size,
        group_size=cfg.grpo.group_size,
        seed=cfg.seed,
        shuffle=cfg.data.shuffle,
    )
    G = cfg.grpo.group_size
    rewards: list[float] = []

    async def generate(snap: PolicySnapshot, g: Group, rng: np.random.Generator) -> None:
        samples = await p.policy.generate(snap, g.example, G, rng)
        g.rollouts = [Rollout(g.group_id, i, snap.version, s) for i, s in enumerate(samples)]

    async def score(g: Group) -> None:
        texts = [r.sample.text if r.sample.error is None else None for r in g.rollouts]
        scores = await p.rewarder.score_group(g.example, texts, group_id=g.group_id)
        for r, sc in zip(g.rollouts, scores, strict=True):
            r.reward, r.reward_parts, r.feedback = sc.reward, sc.parts, sc.feedback
            r.error = r.sample.error or sc.error

    for batch in sampler.batches(0):
        if batch.step >= cfg.steps:
            break
        snap = await learner.snapshot_at(batch.step)
        groups = [
            Group(batch.group_id(j), batch.step, ex, snap.version)
            for j, ex in enumerate(batch.examples)
        ]
        async with anyio.create_task_group() as tg:  # 1. the whole batch's generation
            for j, g in enumerate(groups):
                tg.start_soon(generate, snap, g, batch.rng(j))
        async with anyio.create_task_group() as tg:  # 2. the whole batch's scoring
            for g in groups:
                tg.start_soon(score, g)
        m = await learner.update(ScoredBatch(batch.step, groups))  # 3. the update
        rewards.append(m.get("reward", float("nan")))
    return {"reward_last": float(np.nanmean(rewards[-5:])), "stale_dropped": 0}


# ----------------------------------------------------------------------------- measuring


class SlotSampler:
    """Client-side view: the mean number of limiter slots in use, sampled every 5 ms."""

    def __init__(self, limiters: list[Any]) -> None:
        self.limiters = limiters  # one shared limiter, or one per client
        self.sum = 0  # slots in use, summed over samples and limiters
        self.n = 0  # samples taken

    async def run(self) -> None:
        while True:
            self.sum += sum(lim.statistics().in_flight for lim in self.limiters)
            self.n += 1
            await anyio.sleep(0.005)

    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0


async def measure(
    name: str, cfg: RunConfig, examples: list[Example], urls: tuple[str, str], *, shared: bool
) -> dict[str, Any]:
    """One arm: wall time, requests per endpoint, and the busy fraction of the allowed
    concurrency (``concurrency`` once when the limit is shared, per endpoint otherwise)."""
    arm = engine_arm if name == "engine" else sync_arm
    async with aiohttp.ClientSession() as s:
        before = [await sim_stats(s, u) for u in urls]
        async with parts(cfg, examples, shared=shared) as p, anyio.create_task_group() as tg:
            limiters = [p.gen.limiter] if shared else [p.gen.limiter, p.judge.limiter]
            slots = SlotSampler(limiters)
            tg.start_soon(slots.run)
            t0, c0 = time.perf_counter(), time.process_time()
            out = await arm(cfg, p, examples)
            wall = time.perf_counter() - t0
            out["cpu"] = time.process_time() - c0
            tg.cancel_scope.cancel()
        after = [await sim_stats(s, u) for u in urls]
    allowed = cfg.limits.max_concurrency * len(limiters)
    busy = 0.0
    for key, b, a in zip(("gen", "judge"), before, after, strict=True):
        out[f"{key}_requests"] = a["requests"] - b["requests"]
        out[f"{key}_busy"] = (a["concurrency_seconds"] - b["concurrency_seconds"]) / wall
        busy += out[f"{key}_busy"]
    out["util"] = busy / allowed  # server side: requests being served / allowed
    out["slots"] = slots.mean() / allowed  # client side: limiter slots held / allowed
    out["wall"] = wall
    return out


def _print_row(name: str, r: dict[str, Any]) -> None:
    print(
        f"  {name:<7} wall {r['wall']:7.2f} s   utilization {r['util']:6.1%} (client slots "
        f"{r['slots']:6.1%})   in flight: generation {r['gen_busy']:5.1f}, judge "
        f"{r['judge_busy']:5.1f}   requests: generation {r['gen_requests']}, judge "
        f"{r['judge_requests']}   client CPU {r['cpu']:5.2f} s   reward(last 5) "
        f"{r['reward_last']:.3f}" + (f"   stale dropped {r['stale_dropped']}" if r["stale_dropped"]
                                     else ""),
        flush=True,
    )  # fmt: skip


async def bench(args: argparse.Namespace) -> None:
    examples = datasets.load("sentiment")
    shared = args.limits == "shared"
    with (
        sim_process(args.latency, args.latency_sigma, seed=1) as gen_url,
        sim_process(args.judge_latency, args.judge_sigma, seed=2) as judge_url,
    ):
        cfg = run_config(args, gen_url, judge_url)
        where = "shared by generation and judge" if shared else "per endpoint"
        print(
            f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}\n"
            f"generation sim: latency {args.latency} s, sigma {args.latency_sigma}; judge sim: "
            f"latency {args.judge_latency} s, sigma {args.judge_sigma}\n"
            f"{args.steps} steps x {args.batch_size} prompts x G={args.group_size}; "
            f"max_concurrency {args.concurrency} {where}; engine: max_staleness "
            f"{args.max_staleness}, max_groups_in_flight {args.groups_in_flight}, "
            f"oversample {args.oversample}",
            flush=True,
        )
        ratios: list[float] = []
        utils: list[float] = []
        for rep in range(args.repeat):
            print(f"round {rep + 1}/{args.repeat}", flush=True)
            order = ("engine", "sync") if rep % 2 == 0 else ("sync", "engine")
            res = {}
            for name in order:
                res[name] = await measure(name, cfg, examples, (gen_url, judge_url), shared=shared)
                _print_row(name, res[name])
            ratios.append(res["sync"]["wall"] / res["engine"]["wall"])
            utils.append(res["engine"]["util"])
            print(f"  ratio sync/engine wall time: {ratios[-1]:.2f}x", flush=True)
        print(
            f"median over {args.repeat}: engine {statistics.median(ratios):.2f}x faster than the "
            f"synchronous loop; engine utilization of the allowed concurrency "
            f"{statistics.median(utils):.1%}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--latency-sigma", type=float, default=0.99)
    ap.add_argument("--judge-latency", type=float, default=0.03)
    ap.add_argument("--judge-sigma", type=float, default=0.5)
    ap.add_argument("--max-staleness", type=int, default=3)
    ap.add_argument("--groups-in-flight", type=int, default=0)
    ap.add_argument("--oversample", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--limits",
        choices=("shared", "separate"),
        default="shared",
        help="one concurrency limit for generation and judge (one account), or one each",
    )
    args = ap.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
