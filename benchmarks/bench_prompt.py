"""Benchmark: the engine's prompt policy against GEPA, the base prompt and exhaustive selection,
side by side on held-out data, at equal task-model calls.

Each shipped task (``benchmarks/data/prompt/*.jsonl``: sentiment classification, past tense of a
verb as short generation, capitals as a knowledge question) is split once, the same way for
every method and seed, into train / validation / test. Every method sees the same task model,
the same decoding (greedy: temperature 0, the same stop sequences and max tokens), the same
reward (``exact_match``: the first line of the answer equals the reference) and, where it
reflects, the same reflection model:

* **base**: the base instruction, zero-shot (candidate 0).
* **exhaustive**: every seed candidate of the engine (2 instructions x zero-shot + 2 demo
  sets from train) scored on the training split; the best one is kept. Its calls are
  ``candidates x train``, and that number is the budget everyone else gets.
* **engine**: :class:`~engine.training.trainer.TrainingManager` with the prompt policy (the
  same seed candidates), GRPO at temperature 0 (the evaluation cache makes a repeated draw
  free), growth every 2 steps (with merge proposals of up to ``--merge-demos`` demos, one
  more candidate slot for them), the validation split as its held-out set (acceptance, Pareto
  retention, the served prompt) and ``limits.max_requests`` set to the budget: the run stops
  when the calls budget is spent and serves :meth:`~engine.policies.prompt.PromptPolicy.served`.
* **gepa**: ``gepa.optimize`` (``pip install gepa``) from the base instruction, with an
  adapter (below) that calls the same endpoint through the engine's client, the validation
  split as its valset and ``max_metric_calls`` equal to the calls the engine used.
* **gepa_demos**: the same, seeded with two text components GEPA's proposer can rewrite, the
  base ``instruction`` and ``demos`` (the engine's first seed demo set written out as
  ``Input:``/``Output:`` blocks): the seed renders exactly as the engine's base-instruction
  few-shot candidate, so GEPA starts from the demos the engine has instead of zero-shot.

The served prompt of each method is scored on the test split (calls not counted; a shared
cache, since the answers are greedy). Reported: the test accuracy, its 95% Wilson interval
over the pooled test answers of every seed, and the task-model calls each method used (the
task client's admitted requests, so retries count; cached answers do not).

Usage::

    python -m benchmarks.bench_prompt --sim                                # simulated server
    python -m benchmarks.bench_prompt --base-url "$LLAMA_BASE_URL" --model gemma \\
        --mode completions --seeds 0 1 2
    python -m benchmarks.bench_prompt --base-url https://openrouter.ai/api/v1 \\
        --model openai/gpt-4o-mini --api-key-env OPENROUTER_API_KEY --mode chat

``--reflection-*`` options name another reflection endpoint (default: the task endpoint, in
chat mode). ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    OptimConfig,
    PromptPolicyConfig,
    RetryConfig,
    RewardConfig,
    RunConfig,
    TrainerConfig,
)
from engine.data.jsonl import read_jsonl
from engine.endpoints.client import Client
from engine.endpoints.spend import SpendMeter
from engine.errors import EngineError
from engine.policies.prompt import (
    Candidate,
    PromptFormat,
    PromptPolicy,
    render_completion,
    render_messages,
)
from engine.policies.prompt.selection import wilson
from engine.rewards.functions import exact_match
from engine.telemetry.events import EventLog
from engine.testing.sim import SimConfig, SimRequest, SimServer
from engine.training.assembly import build_rewarder
from engine.training.trainer import TrainingManager
from engine.types import Example

METHODS = ("base", "exhaustive", "engine", "gepa", "gepa_demos")
"""The arms, in table order."""

DATA = Path(__file__).resolve().parent / "data" / "prompt"

TASKS: dict[str, tuple[str, str]] = {
    "sentiment": (
        "Classify the sentiment of the review.",
        "Answer with one word, positive or negative.",
    ),
    "past_tense": (
        "Give the past tense of the verb.",
        "Reply with only the past tense form of the verb, one word.",
    ),
    "capitals": (
        "What is the capital of this country?",
        "Name the capital city of the country. Reply with the city name only.",
    ),
}
"""Task: (base instruction, second seed instruction)."""


@dataclasses.dataclass
class Split:
    train: list[Example]
    val: list[Example]
    test: list[Example]


def load_split(task: str, sizes: tuple[int, int, int]) -> Split:
    """The task's examples shuffled once (a fixed seed, the same for every method and seed)."""
    exs = list(read_jsonl(DATA / f"{task}.jsonl"))
    order = np.random.default_rng(20260).permutation(len(exs))
    exs = [exs[i] for i in order]
    a, b, c = sizes
    if a + b + c > len(exs):
        raise SystemExit(f"error: {task} has {len(exs)} examples, the split asks {a + b + c}")
    return Split(exs[:a], exs[a : a + b], exs[a + b : a + b + c])


# ---------------------------------------------------------------------- the simulated server


def sim_model(truth: dict[str, str]) -> Any:
    """A fake task model with a prompt-dependent accuracy: deterministic at temperature 0.

    The answer is right with a probability that grows with the prompt's demos and with an
    instruction asking for a short answer; else a verbose wrong one. Reflection requests get an
    improved instruction (in the tags the engine asks for, or in GEPA's code fences)."""

    def model(req: SimRequest) -> str:
        p = req.prompt
        if "<instruction>" in p or "improved instruction" in p.lower():
            return "<instruction>Reply with one word only: the answer.</instruction>"
        if "```" in p or "new instruction" in p.lower() or "assistant" in p.lower()[:400]:
            return "```\nReply with one word only: the answer.\n```"
        x = p.rsplit("Input:", 1)[-1].split("\n", 1)[0].strip()
        if x not in truth:
            x = p.rsplit("user:", 1)[-1].strip().splitlines()[0] if "user:" in p else x
        answer = truth.get(x, "unknown")
        demos = p.count("Output:") - 1
        q = 0.25 + 0.15 * min(demos, 3) + (0.25 if "one word" in p else 0.0)
        h = int(
            hashlib.sha256(f"{p}|{req.seed if req.temperature else 0}".encode()).hexdigest(), 16
        )
        return answer if (h % 1000) / 1000 < q else f"I think it is {answer.lower()}ish maybe"

    return model


# ---------------------------------------------------------------------- evaluation


class Answers:
    """Greedy answers of the task model through one client, cached by rendered prompt."""

    def __init__(self, client: Client, endpoint: EndpointConfig) -> None:
        self.client = client
        self.endpoint = endpoint
        self._cache: dict[str, str] = {}

    def render(self, cand: Candidate, ex: Example) -> str | list[dict[str, str]]:
        if self.endpoint.mode == "chat":
            return render_messages(cand, ex)
        return render_completion(cand, ex)

    async def answer(self, cand: Candidate, ex: Example) -> str:
        prompt = self.render(cand, ex)
        key = json.dumps(prompt)
        if key not in self._cache:
            stop = None if self.endpoint.mode == "chat" else list(PromptFormat().stop)
            try:
                comp = await self.client.complete(
                    prompt, n=1, mode=self.endpoint.mode, temperature=0.0, stop=stop
                )
                self._cache[key] = comp.choices[0].text
            except EngineError:
                return ""
        return self._cache[key]

    async def scores(self, cand: Candidate, exs: Sequence[Example]) -> np.ndarray:
        out = np.zeros(len(exs))

        async def one(i: int, ex: Example) -> None:
            out[i] = exact_match(ex, await self.answer(cand, ex))

        async with anyio.create_task_group() as tg:
            for i, ex in enumerate(exs):
                tg.start_soon(one, i, ex)
        return out


def task_client(args: argparse.Namespace, endpoint: EndpointConfig, **kw: Any) -> Client:
    return Client(
        endpoint,
        limits=LimitsConfig(max_concurrency=args.concurrency),
        retry=RetryConfig(max_attempts=3, backoff_base=0.5, backoff_cap=5.0),
        **kw,
    )


def run_config(args: argparse.Namespace, endpoint: EndpointConfig, task: str, seed: int,
               budget: int) -> RunConfig:  # fmt: skip
    base, second = TASKS[task]
    return RunConfig(
        policy="prompt",
        steps=args.max_steps,
        seed=seed,
        endpoint=endpoint,
        prompt=PromptPolicyConfig(
            instructions=(base, second),
            max_demos=args.demos,
            propose_every=2,
            max_candidates=8 + (args.merge_demos > 0),  # a slot for the merge proposal
            minibatch=4,
            merge_demos=args.merge_demos,
            select_served=True,
        ),
        grpo=GRPOConfig(group_size=4, mini_batch_size=4),
        optim=OptimConfig(lr=0.5),
        data=DataConfig(batch_size=4, eval_fraction=0.0),
        trainer=TrainerConfig(eval_every=0, checkpoint_every=0),
        reward=RewardConfig(functions=("exact_match",)),
        limits=LimitsConfig(max_concurrency=args.concurrency, max_requests=budget),
        retry=RetryConfig(max_attempts=3, backoff_base=0.5, backoff_cap=5.0),
    )


DEMO_SETS = [2]
"""Seed demo sets besides zero-shot (``--demo-sets``)."""


def seed_policy(cfg: RunConfig, client: Client | None, split: Split, **kw: Any) -> PromptPolicy:
    return PromptPolicy.from_config(
        cfg, client, examples=split.train, separate_heldout=True, n_demo_sets=DEMO_SETS[0], **kw
    )


async def run_engine(
    args: argparse.Namespace,
    endpoint: EndpointConfig,
    refl: EndpointConfig,
    task: str,
    seed: int,
    split: Split,
    budget: int,
) -> dict[str, Any]:
    cfg = run_config(args, endpoint, task, seed, budget)
    spend = SpendMeter(max_requests=budget)
    events = EventLog(None)
    kinds: dict[str, int] = {}  # where the task-model calls went (generation, selection)

    def count(ev: Any) -> None:
        if ev.get("kind") not in (None, "phase"):  # every attempt, as the budget counts
            kinds[str(ev["kind"])] = kinds.get(str(ev["kind"]), 0) + 1

    events.subscribe(count)
    async with (
        task_client(args, endpoint, spend=spend, events=events) as client,
        task_client(args, refl) as proposer,
    ):
        policy = seed_policy(cfg, client, split, proposer=proposer, proposer_mode=refl.mode)
        rewarder = build_rewarder(cfg)
        async with TrainingManager(
            cfg, policy=policy, rewarder=rewarder, train=split.train, heldout=split.val,
            out=None, events=events, spend=spend,
        ) as tm:  # fmt: skip
            summary = await tm.run()
        choice = policy.served_choice()
        out = {"diagnosis": diagnosis(policy)} if args.diagnose else {}
        return out | {
            "candidate": policy.served(),
            "calls": spend.admitted,
            "stop_reason": summary.stop_reason,
            "stop_detail": summary.extra.get("stop_detail"),
            "steps": summary.steps_done,
            "cache": policy.cache.statistics(),
            "served": None if choice is None else choice.to_json(),
            "candidates_made": policy.table.next_id,
            "calls_by_kind": kinds,
            "selection": None if policy.selection is None else policy.selection.statistics(),
            "served_prompt": {
                "instruction": policy.served().instruction,
                "demos": [d.input for d in policy.served().demos],
                "origin": policy.served().origin,
            },
        }


def diagnosis(policy: PromptPolicy) -> dict[str, Any]:
    """What the served choice was made from (``--diagnose``): the score matrix and every
    candidate's origin, demos and the inputs it was made from; the bench adds each one's test
    scores, so served-choice rules can be compared after the fact."""
    assert policy.selection is not None
    return {
        "matrix": policy.selection.matrix.to_json(),
        "validation": [ex.text for ex in policy.selection.validation],
        "base_id": policy.base_id,
        "candidates": {str(c.id): candidate_info(c) for c in policy.table.registry.values()},
    }


def candidate_info(c: Candidate) -> dict[str, Any]:
    """One candidate in ``--diagnose``'s output (``object`` is scored on test, then dropped)."""
    return {"origin": c.origin, "demos": len(c.demos), "shown": sorted(c.shown),
            "instruction": c.instruction[:60], "object": c}  # fmt: skip


async def run_exhaustive(args: argparse.Namespace, endpoint: EndpointConfig, task: str,
                         seed: int, split: Split) -> dict[str, Any]:  # fmt: skip
    cfg = run_config(args, endpoint, task, seed, 1)
    spend = SpendMeter()
    async with task_client(args, endpoint, spend=spend) as client:
        policy = seed_policy(cfg, None, split)
        answers = Answers(client, endpoint)
        cands = [c for c, _ in policy.probabilities()]
        cands.sort(key=lambda c: c.id)
        means = [float((await answers.scores(c, split.train)).mean()) for c in cands]
        best = cands[int(np.argmax(means))]  # the first (the base prompt) on ties
        return {"candidate": best, "calls": spend.admitted, "candidates": len(cands)}


GEPA_COMPONENTS = ("instruction", "demos")
"""GEPA's text components, in prompt order: each one GEPA's proposer can rewrite."""


def demos_text(cand: Candidate) -> str:
    """A candidate's demos as one text, in the blocks :func:`render_completion` writes."""
    fmt = PromptFormat()
    return fmt.separator.join(
        f"{fmt.input_prefix} {d.input}\n{fmt.output_prefix} {d.output}" for d in cand.demos
    )


def gepa_candidate(components: dict[str, str]) -> Candidate:
    """GEPA's candidate (component name -> text) as a zero-shot engine candidate: the texts
    joined in :data:`GEPA_COMPONENTS` order. With the seed's instruction and
    :func:`demos_text` it renders exactly as the engine renders that few-shot candidate."""
    texts = [components[k].strip() for k in GEPA_COMPONENTS if components.get(k, "").strip()]
    return Candidate(-1, PromptFormat().separator.join(texts))


class GEPAPromptAdapter:
    """GEPA's adapter (``evaluate`` / ``make_reflective_dataset``; GEPA's own proposer writes the
    new texts) for the components ``instruction`` and (arm ``gepa_demos``) ``demos``, rendered
    by :func:`gepa_candidate` and answered through the engine's client on the event loop.

    GEPA runs in a worker thread; every call goes back to the loop with
    :func:`anyio.from_thread.run`.
    """

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.propose_new_texts = None

    def evaluate(self, batch: list[Example], candidate: dict[str, str],
                 capture_traces: bool = False) -> Any:  # fmt: skip
        from gepa.core.adapter import EvaluationBatch

        cand = gepa_candidate(candidate)

        async def run() -> list[str]:
            out = [""] * len(batch)

            async def one(i: int, ex: Example) -> None:
                out[i] = await self.answers.answer(cand, ex)

            async with anyio.create_task_group() as tg:
                for i, ex in enumerate(batch):
                    tg.start_soon(one, i, ex)
            return out

        outputs = anyio.from_thread.run(run)
        scores = [exact_match(ex, o) for ex, o in zip(batch, outputs, strict=True)]
        traces = None
        if capture_traces:
            traces = [
                {"input": ex.text, "output": o, "expected": ex.target, "score": s}
                for ex, o, s in zip(batch, outputs, scores, strict=True)
            ]
        return EvaluationBatch(outputs=outputs, scores=scores, trajectories=traces)

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        rows = []
        for t in eval_batch.trajectories or []:
            verdict = "correct" if t["score"] >= 1 else f"wrong: the answer is {t['expected']!r}"
            rows.append(
                {
                    "Inputs": {"text": t["input"]},
                    "Generated Outputs": t["output"],
                    "Feedback": f"The output is {verdict}.",
                }
            )
        return {name: rows for name in components_to_update}


async def run_gepa(args: argparse.Namespace, endpoint: EndpointConfig, refl: EndpointConfig,
                   task: str, seed: int, split: Split, budget: int,
                   seed_candidate: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    try:
        import gepa
    except ImportError:
        raise SystemExit("error: the gepa arm needs the gepa package: pip install gepa") from None
    spend = SpendMeter()
    async with task_client(args, endpoint, spend=spend) as client, task_client(args, refl) as rc:
        answers = Answers(client, endpoint)
        adapter = GEPAPromptAdapter(answers)
        reflection_calls = [0]

        def reflection_lm(prompt: str | list[dict[str, Any]]) -> str:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt

            async def ask() -> str:
                reflection_calls[0] += 1
                text = msgs if refl.mode == "chat" else "\n\n".join(m["content"] for m in msgs)
                comp = await rc.complete(text, n=1, kind="proposal", mode=refl.mode,
                                         max_tokens=256, temperature=1.0)  # fmt: skip
                return comp.choices[0].text

            return anyio.from_thread.run(ask)

        def optimize() -> Any:
            return gepa.optimize(
                seed_candidate=seed_candidate,
                trainset=split.train,
                valset=split.val,
                adapter=adapter,
                reflection_lm=reflection_lm,
                max_metric_calls=budget,
                reflection_minibatch_size=3,
                seed=seed,
                raise_on_exception=False,
                display_progress_bar=False,
            )

        result = await anyio.to_thread.run_sync(optimize)
        return {
            "candidate": gepa_candidate(result.best_candidate),
            "calls": spend.admitted,
            "reflection_calls": reflection_calls[0],
            "gepa_metric_calls": getattr(result, "total_metric_calls", None),
            "gepa_candidates": len(result.candidates),
        }


# ---------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = tuple(int(x) for x in args.split.split(","))
    assert len(sizes) == 3
    async with AsyncExitStack() as stack:
        base_url = args.base_url
        if args.sim:
            truth = {}
            for task in args.tasks:
                for ex in read_jsonl(DATA / f"{task}.jsonl"):
                    truth[ex.text] = str(ex.target)
            sim = await stack.enter_async_context(SimServer(SimConfig(model=sim_model(truth))))
            base_url = sim.base_url
        endpoint = EndpointConfig(
            base_url=base_url, model=args.model, api_key_env=args.api_key_env,
            mode=args.mode, max_tokens=args.max_tokens, temperature=0.0,
            timeout=args.timeout, deadline=args.timeout * 4,
        )  # fmt: skip
        refl = dataclasses.replace(
            endpoint,
            base_url=args.reflection_base_url or base_url,
            model=args.reflection_model or args.model,
            api_key_env=args.reflection_api_key_env or args.api_key_env,
            mode=args.reflection_mode,
            max_tokens=256,
            temperature=1.0,
        )
        test_client = await stack.enter_async_context(task_client(args, endpoint))
        test = Answers(test_client, endpoint)
        runs: list[dict[str, Any]] = []
        for task in args.tasks:
            split = load_split(task, sizes)  # type: ignore[arg-type]
            for seed in args.seeds:
                t0 = time.perf_counter()
                row: dict[str, Any] = {"task": task, "seed": seed}
                cfg = run_config(args, endpoint, task, seed, 1)
                base = seed_policy(cfg, None, split).table.registry[0]
                row["base"] = {"candidate": base, "calls": 0}
                row["exhaustive"] = await run_exhaustive(args, endpoint, task, seed, split)
                budget = row["exhaustive"]["calls"] if args.budget is None else args.budget
                budget = max(budget, 1)
                row["engine"] = await run_engine(args, endpoint, refl, task, seed, split, budget)
                used = max(1, row["engine"]["calls"])
                if "gepa" in args.methods:
                    seed_cand = {"instruction": base.instruction}
                    row["gepa"] = await run_gepa(args, endpoint, refl, task, seed, split, used,
                                                 seed_cand)  # fmt: skip
                if "gepa_demos" in args.methods:  # the engine's first seed demo set as text
                    few = min((c for c in seed_policy(cfg, None, split).table.registry.values()
                               if c.demos), key=lambda c: c.id)  # fmt: skip
                    seed_cand = {"instruction": base.instruction, "demos": demos_text(few)}
                    row["gepa_demos"] = await run_gepa(args, endpoint, refl, task, seed, split,
                                                       used, seed_cand)  # fmt: skip
                diag = row["engine"].get("diagnosis")
                for info in (diag or {}).get("candidates", {}).values():  # not counted
                    info["test"] = [
                        float(x) for x in await test.scores(info.pop("object"), split.test)
                    ]
                for m in METHODS:
                    if m in row:
                        s = await test.scores(row[m]["candidate"], split.test)
                        row[m]["test"] = [float(x) for x in s]
                        row[m]["accuracy"] = float(s.mean())
                        c = row[m]["candidate"]
                        row[m]["candidate"] = {"instruction": c.instruction, "demos": len(c.demos)}
                row["seconds"] = time.perf_counter() - t0
                runs.append(row)
                if args.json:  # every finished run, so a cut-short benchmark keeps its rows
                    text = json.dumps({"runs": runs}, indent=2, default=str)
                    await anyio.Path(args.json).write_text(text)
                accs = {m: row[m]["accuracy"] for m in METHODS if m in row}
                calls = {m: row[m]["calls"] for m in accs}
                print(f"# {task} seed {seed}: accuracy {accs} calls {calls} "
                      f"engine stop: {row['engine']['stop_detail']} "
                      f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    return {"runs": runs, "split": sizes, "endpoint": endpoint.base_url, "model": args.model}


def table(result: dict[str, Any], methods: Sequence[str]) -> str:
    """The markdown table: per task and method, mean test accuracy over seeds, the 95% Wilson
    interval over the pooled test answers, and the mean task-model calls."""
    lines = [
        "| task | method | test accuracy (mean over seeds) | 95% CI (pooled) | task-model calls |",
        "|---|---|---|---|---|",
    ]
    tasks = list(dict.fromkeys(r["task"] for r in result["runs"]))
    overall: dict[str, list[float]] = {m: [] for m in methods}
    for task in tasks:
        rows = [r for r in result["runs"] if r["task"] == task]
        for m in methods:
            if not all(m in r for r in rows):
                continue
            accs = [r[m]["accuracy"] for r in rows]
            pooled = [x for r in rows for x in r[m]["test"]]
            lo, hi = wilson(float(np.mean(pooled)), len(pooled))
            calls = float(np.mean([r[m]["calls"] for r in rows]))
            overall[m].extend(accs)
            lines.append(f"| {task} | {m} | {np.mean(accs):.3f} | [{lo:.2f}, {hi:.2f}] | "
                         f"{calls:.0f} |")  # fmt: skip
    for m in methods:
        if overall[m]:
            lines.append(f"| **all** | {m} | {np.mean(overall[m]):.3f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table (and write ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", action="store_true", help="serve a simulated task model")
    ap.add_argument("--base-url", default=os.environ.get("LLAMA_BASE_URL", ""))
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--api-key-env", default="")
    ap.add_argument("--mode", choices=["chat", "completions"], default="completions")
    ap.add_argument("--reflection-base-url", default="")
    ap.add_argument("--reflection-model", default="")
    ap.add_argument("--reflection-api-key-env", default="")
    ap.add_argument("--reflection-mode", choices=["chat", "completions"], default="chat")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--split", default="20,12,16", help="train,val,test sizes")
    ap.add_argument("--budget", type=int, default=None,
                    help="task-model calls for the engine (default: exhaustive's)")  # fmt: skip
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--demos", type=int, default=3, help="demos per demo set")
    ap.add_argument("--demo-sets", type=int, default=2, help="seed demo sets besides zero-shot")
    ap.add_argument("--merge-demos", type=int, default=6,
                    help="the engine's merge proposals: demos at most (0: no merge)")  # fmt: skip
    ap.add_argument("--max-steps", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--json", default="")
    ap.add_argument("--diagnose", action="store_true",
                    help="also write the engine's score matrix and every candidate's test "
                         "scores (extra calls, not counted)")  # fmt: skip
    args = ap.parse_args(argv)
    if not args.sim and not args.base_url:
        ap.error("give --base-url (or --sim)")
    DEMO_SETS[0] = args.demo_sets
    t0 = time.perf_counter()
    result = anyio.run(bench, args)
    result["seconds"] = time.perf_counter() - t0
    result["python"] = platform.python_version()
    methods = [m for m in METHODS if m in args.methods]
    print(table(result, methods))
    print(f"# {len(result['runs'])} runs in {result['seconds']:.0f} s; split {args.split}; "
          f"endpoint {result['endpoint']} model {args.model}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
