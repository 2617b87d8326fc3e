"""Which prompt each served-choice rule would have served, and its test accuracy, from the
score matrices ``bench_prompt --diagnose`` writes.

The engine's served choice (:func:`engine.policies.prompt.selection.choose_served`) is made
on the per-example score matrix a run gathered. ``--diagnose`` saves that matrix with every
candidate's test answers, so the rules of ``prompt.served_evidence`` can be compared after the
fact on the same runs: ``validation_first`` (the default), ``validation`` and ``pooled``, and
``best`` (the best test accuracy among the candidates any rule could pick: scored on all of
validation), the ceiling of any rule. The engine's own pick is reported beside them.

    python -m benchmarks.bench_prompt --base-url URL --diagnose --json run.json ...
    python -m benchmarks.served_rules run.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.policies.prompt.selection import ScoreMatrix, choose_served

RULES = ("validation_first", "validation", "pooled")


def picks(diagnosis: Mapping[str, Any]) -> dict[str, int]:
    """The candidate id each rule serves on one run's ``diagnosis`` (``bench_prompt``)."""
    matrix = ScoreMatrix()
    matrix.load(diagnosis["matrix"])
    keys: Sequence[str] = diagnosis["validation"]
    cands = diagnosis["candidates"]
    cids = [int(c) for c in cands]
    shown = {int(c): set(v["shown"]) for c, v in cands.items()}
    out: dict[str, int] = {}
    for rule in RULES:
        choice = choose_served(
            matrix,
            cids,
            keys,
            int(diagnosis["base_id"]),
            None if rule == "validation" else shown,
            validation_first=rule == "validation_first",
        )
        if choice is not None:
            out[rule] = choice.candidate
    return out


def compare(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run with a diagnosis: each rule's test accuracy, ``best`` and ``engine``."""
    rows = []
    for run in runs:
        diag = run.get("engine", {}).get("diagnosis")
        if not diag:
            continue
        test = {int(c): float(np.mean(v["test"])) for c, v in diag["candidates"].items()}
        matrix = ScoreMatrix()
        matrix.load(diag["matrix"])
        scored = matrix.complete(diag["validation"])
        row: dict[str, Any] = {"task": run["task"], "seed": run["seed"]}
        row |= {rule: test[c] for rule, c in picks(diag).items()}
        row["best"] = max((test[c] for c in scored if c in test), default=float("nan"))
        row["engine"] = float(run["engine"]["accuracy"])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print each run's row and the mean of each column."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="bench_prompt --diagnose JSON files")
    args = ap.parse_args(argv)
    runs = [r for f in args.files for r in json.loads(f.read_text())["runs"]]
    rows = compare(runs)
    if not rows:
        ap.error("no run with a diagnosis: run bench_prompt with --diagnose")
    cols = [*RULES, "best", "engine"]
    print("| task | seed | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['task']} | {r['seed']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    means = " | ".join(f"**{np.mean([r[c] for r in rows]):.3f}**" for c in cols)
    print(f"| **mean** | {len(rows)} runs | {means} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
