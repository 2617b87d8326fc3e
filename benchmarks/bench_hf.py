"""Benchmark (GRPO on real weights): this engine's ``policy = "hf"`` vs TRL's ``GRPOTrainer``.

Issue 12, item 10. The same GRPO steps run by both, side by side in one run, each side in its
own child process so its peak RSS is its own (``os.wait4``'s ``ru_maxrss`` of the child, and
``VmHWM`` where the child reports it):

- model: Gemma 3 270M dequantized from the q4_k_m GGUF to fp32 (the converted copy cached by
  :func:`benchmarks.bench_mismatch.load_torch_gemma`, a plain HF model directory both sides
  load), on CPU, LoRA on the same target modules with the same rank, alpha and dropout;
- data: ``--prompts`` sentiment reviews behind the same fixed 2-shot prompt as
  ``bench_mismatch``; every step samples G completions of each (one group per prompt) of at
  most ``--max-tokens`` new tokens at ``--temperature`` (no top-k/top-p), rewarded by the
  engine's ``exact_match`` against the label (TRL's reward function calls the same code);
- algorithm: one optimizer step per step over all the step's groups (TRL:
  ``per_device_train_batch_size = prompts x G``, ``gradient_accumulation_steps = 1``; the
  engine: ``data.batch_size = grpo.mini_batch_size = prompts``, ``epochs = 1``), the
  clipped surrogate with ``epsilon``, k3 KL to the adapter-disabled base with ``beta``, the
  ``--loss-type`` aggregation (``grpo`` by default: TRL's default is ``dapo``), group-scaled
  advantages, AdamW at a constant ``--lr``, gradient norm clipped at 1, no gradient
  checkpointing (TRL's GRPOConfig turns it on by default), fp32 (TRL's defaults to bf16),
  and strictly on-policy on the engine side (``max_staleness = 0``; ``--max-staleness``).

Per side: seconds per step (mean over all steps and over steps after the first), generated
tokens per second (completion tokens sampled / step time), trained tokens per second
(completion tokens in the loss / step time), peak RSS, and where the time goes (TRL: its own
profiling timers, collected by patching ``trl.extras.profiling.ProfilingContext``; the
engine: ``gen_time`` and the other timings in ``metrics.jsonl``). Then the ratios engine/TRL.

The engine side runs ``python -m engine run`` with a generated TOML (``policy = "hf"`` and an
``[hf]`` section: ``model, lora_rank, lora_alpha, lora_dropout, target_modules,
max_new_tokens, temperature, device, dtype``) and reads ``metrics.jsonl`` (``step_time``,
``tokens/completion``). Where ``python -m engine run --print-config`` has no ``[hf]`` section
the engine side is skipped ("engine side needs policy 'hf' (issue 12)") and only TRL is
measured. Run (torch, transformers, peft and trl installed)::

    /work/torchvenv/bin/python benchmarks/bench_hf.py                      # both sides
    /work/torchvenv/bin/python benchmarks/bench_hf.py --sides trl --steps 3 --prompts 4 \\
        --group 4 --max-tokens 8 --json /tmp/bench_hf.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_mismatch import DEFAULT_CACHE, machine, two_shot_prompts  # noqa: E402

SKIP_ENGINE = "engine side needs policy 'hf' (issue 12)"


# ---------------------------------------------------------------------------------- shared


def write_data(path: Path, n: int) -> list[dict[str, str]]:
    """The ``n`` prompts as engine training JSONL; returns ``[{prompt, target}]`` rows."""
    rows = [{"prompt": p, "target": e.target or ""} for e, p in two_shot_prompts(n)]
    with path.open("w") as f:
        for i, r in enumerate(rows):
            doc = {"id": f"bench-{i}", "input": {"text": r["prompt"]},
                   "output": {"generated": r["target"]}}  # fmt: skip
            f.write(json.dumps(doc) + "\n")
    return rows


def engine_toml(spec: dict[str, Any], data: Path, out: Path) -> str:
    """The engine run's config: the same steps, prompts, G, LoRA and algorithm as TRL's."""
    targets = ", ".join(json.dumps(t) for t in spec["targets"])
    return f"""policy = "hf"
steps = {spec["steps"]}
seed = {spec["seed"]}
out = {json.dumps(str(out))}

[hf]
model = {json.dumps(spec["model"])}
lora_rank = {spec["lora_rank"]}
lora_alpha = {spec["lora_alpha"]}
lora_dropout = {spec["lora_dropout"]}
target_modules = [{targets}]
max_new_tokens = {spec["max_tokens"]}
temperature = {spec["temperature"]}
device = "cpu"
dtype = "float32"

[reward]
functions = ["exact_match"]

# Never contacted (generation is in-process, the reward a function); some versions of the CLI
# open an endpoint client for every policy but tinylm.
[endpoint]
provider = "local"
base_url = "http://127.0.0.1:9/v1"
model = "unused"

[grpo]
group_size = {spec["group"]}
epsilon = {spec["epsilon"]}
beta = {spec["beta"]}
loss_type = {json.dumps(spec["loss_type"])}
scale_rewards = "group"
mini_batch_size = {spec["prompts"]}
epochs = 1
max_staleness = {spec["max_staleness"]}

[optim]
lr = {spec["lr"]}
weight_decay = 0.0
schedule = "constant"
max_grad_norm = 1.0

[data]
train = {json.dumps(str(data))}
eval_fraction = 0.0
batch_size = {spec["prompts"]}
shuffle = false

[trainer]
eval_every = 0
checkpoint_every = 0
"""


def vm_hwm_mib() -> float | None:
    """This process's peak RSS from /proc (VmHWM), MiB; None where there is no /proc."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def step_figures(step_s: list[float], gen: list[float], trained: list[float]) -> dict[str, Any]:
    """Seconds per step and tokens per second, over all steps and over steps after the first."""
    out: dict[str, Any] = {"steps": len(step_s), "step_s": step_s,
                           "gen_tokens": gen, "trained_tokens": trained}  # fmt: skip
    for label, sl in (("all", slice(None)), ("after_first", slice(1, None))):
        s = step_s[sl]
        if not s:
            continue
        total = sum(s)
        out[f"s_per_step_{label}"] = total / len(s)
        out[f"gen_tok_per_s_{label}"] = sum(gen[sl]) / total
        out[f"trained_tok_per_s_{label}"] = sum(trained[sl]) / total
    return out


# ------------------------------------------------------------------------------- TRL side


def trl_child(spec: dict[str, Any], rows: list[dict[str, str]]) -> dict[str, Any]:
    """Run TRL's GRPOTrainer in this process; the figures as a dict."""
    import torch
    import trl.extras.profiling as profiling
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from engine.rewards.functions import exact_match
    from engine.types import Example

    timers: dict[str, float] = {}

    def collect(self: Any, duration: float) -> None:
        name = self.name.removeprefix("GRPOTrainer.")
        timers[name] = timers.get(name, 0.0) + duration

    profiling.ProfilingContext._log_metrics = collect  # its own timers, kept here

    def reward(prompts: list[str], completions: list[str], target: list[str],
               **_: Any) -> list[float]:  # fmt: skip
        return [exact_match(Example(id="", text=p, target=t), c)
                for p, c, t in zip(prompts, completions, target, strict=True)]  # fmt: skip

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.step_s = 0.0, []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step_s.append(time.perf_counter() - self.t0)

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    load_s = time.perf_counter() - t0
    batch = spec["prompts"] * spec["group"]
    config = GRPOConfig(
        output_dir=spec["workdir"] + "/trl", max_steps=spec["steps"], seed=spec["seed"],
        use_cpu=True, bf16=False, fp16=False, report_to=[], logging_steps=1,
        save_strategy="no", gradient_checkpointing=False, dataloader_num_workers=0,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=spec["group"], max_completion_length=spec["max_tokens"],
        temperature=spec["temperature"], top_k=0, top_p=1.0,
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, beta=spec["beta"], epsilon=spec["epsilon"],
        loss_type=spec["loss_type"], scale_rewards="group", num_iterations=1,
        disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_alpha"],
                      lora_dropout=spec["lora_dropout"], target_modules=spec["targets"],
                      task_type="CAUSAL_LM")  # fmt: skip
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=lora, callbacks=[clock])  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    gen = [h["completions/mean_length"] * batch for h in logs]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    out = step_figures(clock.step_s, gen, list(gen))  # every sampled token is in the loss
    out.update(load_s=load_s, timers=timers, trainable_params=trainable,
               rewards=[h.get("reward") for h in logs], kl=[h.get("kl") for h in logs],
               torch_threads=torch.get_num_threads(), vm_hwm_mib=vm_hwm_mib())  # fmt: skip
    return out


# ---------------------------------------------------------------------------- engine side


def engine_env(env: dict[str, str], root: Path) -> dict[str, str]:
    """``env`` with ``root`` (the checkout whose ``engine`` runs the engine side) first on
    PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path}


def engine_has_hf(env: dict[str, str], root: Path) -> bool:
    """Whether ``python -m engine run --print-config`` documents an ``[hf]`` section."""
    done = subprocess.run([sys.executable, "-m", "engine", "run", "--print-config"],
                          capture_output=True, text=True, env=env, cwd=root)  # fmt: skip
    return done.returncode == 0 and "[hf]" in done.stdout


def engine_figures(metrics: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The engine run's figures from its ``metrics.jsonl``."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step_time" in r]
    step_s = [float(r["step_time"]) for r in rows]
    gen = [float(r.get("tokens/completion", 0.0)) for r in rows]
    # the policy's own count of the tokens in the loss (``tokens``) where it reports one
    trained = [float(r.get("tokens", r.get("tokens/completion", 0.0))) for r in rows]
    out = step_figures(step_s, gen, trained)
    keys = sorted({k for r in rows for k in r if "time" in k and k != "step_time"})
    out["timers"] = {k: sum(float(r.get(k) or 0.0) for r in rows) for k in keys}
    out["rewards"] = [r.get("reward") for r in rows]
    out["kl"] = [r.get("kl") for r in rows]
    if not any(gen):
        out["warning"] = "metrics.jsonl has no tokens/completion: token rates are 0"
    return out


# ---------------------------------------------------------------------------------- parent


def run_child(cmd: list[str], env: dict[str, str], log: Path,
              cwd: Path) -> tuple[int, float, float]:  # fmt: skip
    """(exit status, wall seconds, peak RSS MiB) of ``cmd`` run as a child process."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def run_side(side: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One side in its own process; its figures with ``peak_rss_mib`` and ``wall_s``."""
    work = Path(spec["workdir"])
    log = work / f"{side}.log"
    cwd = ROOT
    if side == "engine":
        cwd = Path(spec["engine_root"])
        env = engine_env(env, cwd)
        if not engine_has_hf(env, cwd):
            return {"status": "skipped", "reason": SKIP_ENGINE}
        cfg = work / "engine.toml"
        cfg.write_text(engine_toml(spec, work / "data.jsonl", work / "engine-run"))
        cmd = [sys.executable, "-m", "engine", "run", "--config", str(cfg)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(work / "spec.json")]
    rc, wall, rss = run_child(cmd, env, log, cwd)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return {"status": "failed", "reason": f"exit {rc}; log {log}:\n{tail}"}
    if side == "engine":
        out = engine_figures(work / "engine-run" / "metrics.jsonl", spec)
    else:
        out = json.loads((work / "trl.json").read_text())
    return {"status": "ok", **out, "peak_rss_mib": rss, "wall_s": wall}


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_report(spec: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    sides = [s for s in ("engine", "trl") if s in results]
    print(f"\nGemma 3 270M (fp32, CPU), {spec['steps']} steps x {spec['prompts']} prompts x "
          f"G={spec['group']}, max_tokens {spec['max_tokens']}, LoRA r={spec['lora_rank']} "
          f"alpha={spec['lora_alpha']} on {','.join(spec['targets'])}, lr {spec['lr']}, "
          f"beta {spec['beta']}, loss {spec['loss_type']}; {machine()}\n")  # fmt: skip
    rows = [
        ("s/step (all)", "s_per_step_all", ".1f"),
        ("s/step (after first)", "s_per_step_after_first", ".1f"),
        ("generated tok/s (all)", "gen_tok_per_s_all", ".2f"),
        ("trained tok/s (all)", "trained_tok_per_s_all", ".2f"),
        ("peak RSS MiB", "peak_rss_mib", ".0f"),
        ("model load s", "load_s", ".1f"),
        ("child wall s", "wall_s", ".1f"),
    ]
    ok = all(results[s].get("status") == "ok" for s in ("engine", "trl") if s in results)
    head = (
        "| figure | " + " | ".join(sides) + (" | engine/TRL |" if ok and len(sides) == 2 else " |")
    )
    print(head + "\n|---|" + "---|" * (head.count("|") - 2))
    for label, key, f in rows:
        vals = [results[s].get(key) for s in sides]
        line = f"| {label} | " + " | ".join(fmt(v, f) for v in vals) + " |"
        if ok and len(sides) == 2:
            line += f" {vals[0] / vals[1]:.2f} |" if vals[0] and vals[1] else " - |"
        print(line)
    for s in sides:
        r = results[s]
        if r.get("status") != "ok":
            print(f"\n{s}: {r['status']}: {r.get('reason')}")
            continue
        timers = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.get("timers", {}).items()))
        print(f"\n{s}: step s {[round(x, 1) for x in r['step_s']]}, generated tokens "
              f"{r['gen_tokens']}, rewards {r.get('rewards')}, kl {r.get('kl')}; "
              f"time (s, summed over steps): {timers}")  # fmt: skip
        if r.get("warning"):
            print(f"  warning: {r['warning']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", default="engine,trl", help="comma-separated: engine, trl")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, default=4, help="prompts (groups) per step")
    p.add_argument("--group", type=int, default=4, help="G")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--loss-type", default="grpo", choices=("grpo", "dapo", "dr_grpo"))
    p.add_argument("--max-staleness", type=int, default=0, help="engine side only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None,
                   help=f"HF model directory for both sides (default {DEFAULT_CACHE})")  # fmt: skip
    p.add_argument("--engine-root", type=Path, default=ROOT,
                   help="checkout whose engine runs the engine side (default this)")  # fmt: skip
    p.add_argument("--workdir", type=Path, help="keep configs, logs and runs here")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:  # the TRL side, in its own process
        spec = json.loads(args.child.read_text())
        rows = json.loads((Path(spec["workdir"]) / "rows.json").read_text())
        out = trl_child(spec, rows)
        (Path(spec["workdir"]) / "trl.json").write_text(json.dumps(out))
        return 0
    if args.model is None:  # both sides load the same converted copy
        from benchmarks.bench_mismatch import load_torch_gemma

        load_torch_gemma(DEFAULT_CACHE)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_hf-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "steps": args.steps, "prompts": args.prompts, "group": args.group,
        "max_tokens": args.max_tokens, "temperature": args.temperature,
        "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout, "targets": args.targets.split(","),
        "lr": args.lr, "beta": args.beta, "epsilon": args.epsilon, "loss_type": args.loss_type,
        "max_staleness": args.max_staleness, "seed": args.seed,
        "model": str(args.model or DEFAULT_CACHE), "workdir": str(work),
        "engine_root": str(args.engine_root.resolve()),
    }  # fmt: skip
    rows = write_data(work / "data.jsonl", args.prompts)
    (work / "rows.json").write_text(json.dumps(rows))
    (work / "spec.json").write_text(json.dumps(spec))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    results: dict[str, dict[str, Any]] = {}
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        print(f"running the {side} side ...", flush=True)
        results[side] = run_side(side, spec, env)
    print_report(spec, results)
    if args.json:
        args.json.write_text(json.dumps({"spec": spec, "results": results}, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] in ("ok", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
