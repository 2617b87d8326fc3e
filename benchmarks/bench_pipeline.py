"""Benchmark (pipeline stage): the engine's GRPO pipeline against fair on-policy loops.

Two simulated servers run in their own processes (``python -m engine serve-sim``): the
generation endpoint with log-normal latency (median ``--latency`` 50 ms; one server per
``--sigmas`` spread, 0.5, 1.0, 1.5 and 2.0 by default: p99 is 3x, 10x, 33x and 105x the
median) and the judge endpoint with its own (``--judge-latency 0.03 --judge-sigma 0.5``: a
verdict is a short reply). Latencies are scaled down from a real endpoint's (seconds) so that
a run takes minutes; the spreads, not the medians, are what the arms differ on. In one run,
with the same prompts, the same policy, rewarder and learner code, the same requests per
rollout and the same limits, each arm trains the prompt policy (completions mode) with an LLM
judge reward (:class:`~engine.rewards.judges.LLMJudge`, one verdict per rollout) through
:class:`engine.endpoints.client.Client` for the same number of steps:

- ``sync``: the loop TRL's default trainer and DSPy run: generate the whole batch (all groups
  concurrently, within the same limit), then score the whole batch (concurrently), then
  update, then the next batch;
- ``chained``: **the fair on-policy peer**: every group of the batch at once, each scored as
  soon as it is generated (its verdicts overlap the other groups' generation), then the
  update; nothing runs ahead of the learner;
- ``engine s=0``: :class:`engine.training.trainer.TrainingManager` at ``max_staleness = 0``
  (on-policy: what ``chained`` does, through the engine's admission gate, group runner and
  producer);
- ``engine s=1 (default)``: the same at the engine's default ``grpo.max_staleness``, batch
  ``k + 1`` generated while batch ``k`` is trained;
- ``engine s=N``: the same at ``--max-staleness`` (3: what this benchmark ran before);
- ``continuous s=N``: ``rollout.admission = "continuous"`` at ``--max-staleness``: groups
  start as the endpoint frees up and the bound allows, the learner trains the next B groups
  to complete, stragglers cut after ``--straggler-deadline`` seconds of holding the learner
  back, or as soon as waiting for them idles the endpoint (``--arms continuous-default``
  runs it at the default staleness).

Same :class:`~engine.policies.prompt.PromptPolicy`, :class:`~engine.rewards.rewarder.Rewarder`,
:class:`~engine.learning.learner.Learner` and :class:`~engine.data.jsonl.GroupSampler` in every
arm; only the orchestration differs. ``reward`` is the mean training reward of the last 5
steps: speed bought with staleness (or cut stragglers) shows there.

Limits: by default one :class:`~engine.endpoints.limits.Limiter` of ``--concurrency`` (32) is
shared by the generation and the judge client (one account's concurrency); ``--limits
separate`` gives each endpoint its own (what ``python -m engine run`` does when ``[judge]``
names another endpoint). Utilization is the busy fraction of the allowed concurrency over the
arm's wall time, two ways:

- client side (the headline): the limiter slots held, sampled every 5 ms and weighted by
  the time each sample stands for, divided by ``allowed``: what the orchestration keeps
  busy; over the whole run, and *steady*: until the run's last group started (after it
  only the last groups' tail is left: at a fixed number of steps no schedule can fill that
  drain, and a short run weighs it heavily);
- server side: the integral of requests in flight, summed over both servers (``GET
  /sim/stats``: ``concurrency_seconds``), divided by ``wall * allowed``. The gap between the
  two is the client's own time per request while holding a slot (sending, reading, parsing,
  waiting for a busy event loop), which shrinks relative to the request as latency grows.

Arms rotate their order each of ``--repeat`` rounds, fresh clients and judge cache each (the
machine is shared: compare within a run). Each arm gets fresh servers seeded by the round, so
the arms of a round draw the same latency sequence (paired: at sigma 1.5 one request in a
thousand takes 100x the median, and which arm meets it would otherwise decide the ranking of
the on-policy arms). Run::

    python -m benchmarks.bench_pipeline                              # 4 spreads, 2 rounds
    python -m benchmarks.bench_pipeline --sigmas 1.0 --repeat 1      # quick look
    python -m benchmarks.bench_pipeline --arms chained,engine-s0 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
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
    """The run every arm shares (the loops ignore max_staleness and [rollout]); the engine
    arms set ``max_staleness`` and ``rollout.admission`` (:data:`ARMS`)."""
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


def arm_config(cfg: RunConfig, arm: str, args: argparse.Namespace) -> RunConfig:
    """``cfg`` as the engine arm ``arm`` runs it (the loops run ``cfg`` itself)."""
    staleness = {"engine-s0": 0, "engine-default": DEFAULT_STALENESS}.get(
        arm, DEFAULT_STALENESS if arm == "continuous-default" else args.max_staleness
    )
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, max_staleness=staleness))
    if arm.startswith("continuous"):
        rollout = dataclasses.replace(
            cfg.rollout, admission="continuous", straggler_deadline=args.straggler_deadline
        )
        cfg = dataclasses.replace(cfg, rollout=rollout)
    return cfg


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


# ----------------------------------------------------------------------------- the arms


async def engine_arm(cfg: RunConfig, p: Parts, examples: list[Example]) -> dict[str, Any]:
    """The engine's pipeline: TrainingManager.run()."""
    async with TrainingManager(
        cfg, policy=p.policy, rewarder=p.rewarder, train=examples, out=None, events=p.events
    ) as tm:
        await tm.run()
        rewards = [m.get("reward", float("nan")) for m in tm.history]
        cut = sum(m.get("groups/cut", 0) for m in tm.history)
        dropped = sum(m.get("groups/dropped", 0) for m in tm.history)
        lag = max((m.get("groups/max_lag", 0) for m in tm.history), default=0)
    return {
        "reward_last": float(np.nanmean(rewards[-5:])),
        "stale_dropped": tm.learner.stale_dropped,
        "cut": cut,
        "dropped": dropped,
        "max_lag": lag if cfg.rollout.admission == "continuous" else cfg.grpo.max_staleness,
    }


def _loop_parts(cfg: RunConfig, p: Parts, examples: list[Example]) -> tuple[Learner, GroupSampler]:
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, max_staleness=0))
    learner = Learner(p.policy, cfg, total_steps=cfg.steps)
    sampler = GroupSampler(
        as_source(examples),
        batch_size=cfg.data.batch_size,
        group_size=cfg.grpo.group_size,
        seed=cfg.seed,
        shuffle=cfg.data.shuffle,
    )
    return learner, sampler


async def _score(p: Parts, g: Group) -> None:
    texts = [r.sample.text if r.sample.error is None else None for r in g.rollouts]
    scores = await p.rewarder.score_group(g.example, texts, group_id=g.group_id)
    for r, sc in zip(g.rollouts, scores, strict=True):
        r.reward, r.reward_parts, r.feedback = sc.reward, sc.parts, sc.feedback
        r.error = r.sample.error or sc.error


async def _loop(
    cfg: RunConfig, p: Parts, examples: list[Example], *, chained: bool
) -> dict[str, Any]:
    """The on-policy loops: per batch, generate and score every group, then update."""
    learner, sampler = _loop_parts(cfg, p, examples)
    G = cfg.grpo.group_size
    rewards: list[float] = []

    async def generate(snap: PolicySnapshot, g: Group, rng: np.random.Generator) -> None:
        samples = await p.policy.generate(snap, g.example, G, rng)
        g.rollouts = [Rollout(g.group_id, i, snap.version, s) for i, s in enumerate(samples)]

    async def both(snap: PolicySnapshot, g: Group, rng: np.random.Generator) -> None:
        await generate(snap, g, rng)
        await _score(p, g)

    for batch in sampler.batches(0):
        if batch.step >= cfg.steps:
            break
        snap = await learner.snapshot_at(batch.step)
        groups = [
            Group(batch.group_id(j), batch.step, ex, snap.version)
            for j, ex in enumerate(batch.examples)
        ]
        if chained:  # each group scored as soon as it is generated, all groups at once
            async with anyio.create_task_group() as tg:
                for j, g in enumerate(groups):
                    tg.start_soon(both, snap, g, batch.rng(j))
        else:
            async with anyio.create_task_group() as tg:  # 1. the whole batch's generation
                for j, g in enumerate(groups):
                    tg.start_soon(generate, snap, g, batch.rng(j))
            async with anyio.create_task_group() as tg:  # 2. the whole batch's scoring
                for g in groups:
                    tg.start_soon(_score, p, g)
        m = await learner.update(ScoredBatch(batch.step, groups))  # 3. the update
        rewards.append(m.get("reward", float("nan")))
    return {"reward_last": float(np.nanmean(rewards[-5:])), "stale_dropped": 0, "cut": 0,
            "dropped": 0, "max_lag": 0}  # fmt: skip


async def sync_arm(cfg: RunConfig, p: Parts, examples: list[Example]) -> dict[str, Any]:
    """Generate the whole batch, then score the whole batch, then update; repeat."""
    return await _loop(cfg, p, examples, chained=False)


async def chained_arm(cfg: RunConfig, p: Parts, examples: list[Example]) -> dict[str, Any]:
    """Every group of the batch at once, each scored as soon as it is generated; update."""
    return await _loop(cfg, p, examples, chained=True)


DEFAULT_STALENESS = GRPOConfig().max_staleness
"""The engine's default ``grpo.max_staleness``."""

ARMS: dict[str, str] = {
    "sync": "sync",
    "chained": "chained (fair peer)",
    "engine-s0": "engine s=0",
    "engine-default": f"engine s={DEFAULT_STALENESS} (default)",
    "engine": "engine s={s}",
    "continuous-default": f"continuous s={DEFAULT_STALENESS}",
    "continuous": "continuous s={s}",
}
"""The arms, by ``--arms`` name: their label in the tables."""


# ----------------------------------------------------------------------------- measuring


class SlotSampler:
    """Client-side view, sampled every 5 ms (a busy loop samples less often, so every sample
    is weighted by the time until the next): the limiter slots in use, the load offered to
    them (slots in use plus requests queued for one, at most the limit), and the generation
    client's calls started so far (to find when the run's last group started)."""

    def __init__(self, limiters: list[Any], gen: Client, allowed: int) -> None:
        self.limiters = limiters  # one shared limiter, or one per client
        self.gen = gen
        self.allowed = allowed
        self.samples: list[tuple[float, int, int, int]] = []  # (time, used, offered, calls)

    async def run(self) -> None:
        while True:
            stats = [lim.statistics() for lim in self.limiters]
            used = sum(st.in_flight for st in stats)
            offered = sum(min(st.in_flight + st.waiting, st.concurrency_limit) for st in stats)
            self.samples.append((time.perf_counter(), used, offered, self.gen.statistics().calls))
            await anyio.sleep(0.005)

    def _steady(self) -> list[tuple[float, int, int, int]]:
        """The samples until the last generation call started (the run's last group): after
        it only the last groups' tail is left, which no schedule can fill at a fixed number
        of steps."""
        last = self.samples[-1][3]
        end = next(i for i, sample in enumerate(self.samples) if sample[3] == last)
        return self.samples[: end + 2]

    def mean(self, field: int, *, steady: bool = False) -> float:
        """The time-weighted mean of ``field`` (1: used, 2: offered) over the run (or its
        steady part), as a fraction of the allowed concurrency."""
        samples = self._steady() if steady and self.samples else self.samples
        if len(samples) < 2:
            return 0.0
        area = sum(a[field] * (b[0] - a[0]) for a, b in itertools.pairwise(samples))
        return area / (samples[-1][0] - samples[0][0]) / self.allowed


async def measure(
    name: str, cfg: RunConfig, examples: list[Example], urls: tuple[str, str], *, shared: bool
) -> dict[str, Any]:
    """One arm: wall time, requests per endpoint, and the busy fraction of the allowed
    concurrency (``concurrency`` once when the limit is shared, per endpoint otherwise)."""
    arm = {"sync": sync_arm, "chained": chained_arm}.get(name, engine_arm)
    async with aiohttp.ClientSession() as s:
        before = [await sim_stats(s, u) for u in urls]
        async with parts(cfg, examples, shared=shared) as p, anyio.create_task_group() as tg:
            limiters = [p.gen.limiter] if shared else [p.gen.limiter, p.judge.limiter]
            slots = SlotSampler(limiters, p.gen, cfg.limits.max_concurrency * len(limiters))
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
    out["slots"] = slots.mean(1)  # client side: limiter slots held / allowed
    out["steady"] = slots.mean(1, steady=True)  # the same until the last group started
    out["offered"] = slots.mean(2, steady=True)  # held or asked for, until then
    out["wall"] = wall
    return out


def _print_row(label: str, r: dict[str, Any]) -> None:
    extra = "".join(
        f"   {k.replace('_', ' ')} {r[k]}" for k in ("stale_dropped", "cut", "dropped") if r[k]
    )
    print(
        f"  {label:<22} wall {r['wall']:7.2f} s   offered {r['offered']:6.1%}   slots held "
        f"{r['slots']:6.1%} (steady {r['steady']:6.1%})   server {r['util']:6.1%}   requests: "
        f"generation {r['gen_requests']}, judge {r['judge_requests']}   CPU {r['cpu']:5.2f} s   "
        f"reward {r['reward_last']:.3f}   max lag {r['max_lag']}{extra}",
        flush=True,
    )


def _span(xs: list[float], fmt: str) -> str:
    """Median, and the range when there is more than one value."""
    med = format(statistics.median(xs), fmt)
    return med if len(xs) == 1 else f"{med} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


def _table(rows: dict[tuple[float, str], list[dict[str, Any]]], arms: list[str], s: int) -> None:
    """The markdown table of the run: per spread and arm, medians (ranges) over rounds."""
    print(
        "\n| sigma | arm | wall s | x chained | offered (steady) | slots held: run (steady) "
        "| server busy | reward (last 5 steps) | max lag | cut / dropped |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for sigma in sorted({k[0] for k in rows}):
        peer = [r["wall"] for r in rows.get((sigma, "chained"), [])]
        for arm in arms:
            rs = rows[(sigma, arm)]
            walls = [r["wall"] for r in rs]
            speed = (
                _span([statistics.median(peer) / w for w in walls], ".2f") + "x" if peer else "-"
            )
            print(
                f"| {sigma} | {ARMS[arm].format(s=s)} | {_span(walls, '.2f')} | {speed} | "
                f"{_span([r['offered'] for r in rs], '.1%')} | "
                f"{_span([r['slots'] for r in rs], '.1%')} "
                f"({_span([r['steady'] for r in rs], '.1%')}) | "
                f"{_span([r['util'] for r in rs], '.1%')}"
                f" | {_span([r['reward_last'] for r in rs], '.3f')} | "
                f"{max(r['max_lag'] for r in rs)} | {sum(r['cut'] for r in rs)} / "
                f"{sum(r['dropped'] for r in rs)} |",
                flush=True,
            )


async def bench(args: argparse.Namespace) -> None:
    examples = datasets.load("sentiment")
    shared = args.limits == "shared"
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"unknown arm {a!r}; arms: {', '.join(ARMS)}")
    sigmas = [float(x) for x in args.sigmas.split(",")]
    where = "shared by generation and judge" if shared else "per endpoint"
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, Python "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}\n"
        f"generation sim: latency {args.latency} s, sigma {args.sigmas}; judge sim: "
        f"latency {args.judge_latency} s, sigma {args.judge_sigma}\n"
        f"{args.steps} steps x {args.batch_size} prompts x G={args.group_size}; "
        f"max_concurrency {args.concurrency} {where}; engine: max_staleness "
        f"{args.max_staleness}, max_groups_in_flight {args.groups_in_flight}, "
        f"oversample {args.oversample}; continuous: straggler_deadline "
        f"{args.straggler_deadline} s",
        flush=True,
    )
    rows: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for sigma in sigmas:
        for rep in range(args.repeat):
            print(f"sigma {sigma}, round {rep + 1}/{args.repeat}", flush=True)
            k = rep % len(arms)
            for arm in arms[k:] + arms[:k]:  # rotate the order each round
                # fresh servers seeded by the round: every arm of a round draws the same
                # latency sequence (in arrival order), so a rare 100x straggler is not one
                # arm's bad luck
                with (
                    sim_process(args.judge_latency, args.judge_sigma, seed=2 + 2 * rep) as j_url,
                    sim_process(args.latency, sigma, seed=1 + 2 * rep) as gen_url,
                ):
                    cfg = arm_config(run_config(args, gen_url, j_url), arm, args)
                    r = await measure(arm, cfg, examples, (gen_url, j_url), shared=shared)
                rows.setdefault((sigma, arm), []).append(r)
                _print_row(ARMS[arm].format(s=args.max_staleness), r)
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f}")
    _table(rows, arms, args.max_staleness)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--sigmas", default="0.5,1.0,1.5,2.0", help="generation latency spreads")
    ap.add_argument("--judge-latency", type=float, default=0.03)
    ap.add_argument("--judge-sigma", type=float, default=0.5)
    ap.add_argument("--max-staleness", type=int, default=3)
    ap.add_argument("--straggler-deadline", type=float, default=1.0)
    ap.add_argument("--groups-in-flight", type=int, default=0)
    ap.add_argument("--oversample", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--arms",
        default="sync,chained,engine-s0,engine-default,engine,continuous",
        help=f"among {', '.join(ARMS)}",
    )
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
